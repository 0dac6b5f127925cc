r"""The five published models of gpgeom, each a thin composition of the engine."""
