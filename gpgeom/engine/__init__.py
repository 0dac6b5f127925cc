r"""The shared inference engine: fitting, exact GPs, state-space GPs, Gauss-Newton on chains, BoTorch glue."""
