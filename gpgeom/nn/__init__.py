r"""Neural-network building blocks (set encoders on random point clouds) used by the physics-driven models."""
