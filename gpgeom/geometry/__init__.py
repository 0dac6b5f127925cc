r"""Geometry independent of any GP: meshes, morphing, POD, connection Laplacians, Lie groups."""
