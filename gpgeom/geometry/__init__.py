r"""Geometry independent of any GP: meshes, morphing, POD, connection Laplacians, Lie groups.

Submodules: :mod:`~gpgeom.geometry.mesh`, :mod:`~gpgeom.geometry.boundary`, :mod:`~gpgeom.geometry.fem`,
:mod:`~gpgeom.geometry.transfer`, :mod:`~gpgeom.geometry.morphing`, :mod:`~gpgeom.geometry.pod`,
:mod:`~gpgeom.geometry.connection`, :mod:`~gpgeom.geometry.lie` (SO(3)/SE(3) functions, used by name from there).
"""

from gpgeom.geometry import lie
from gpgeom.geometry.boundary import boundary_loops
from gpgeom.geometry.connection import ConnectionLaplacian, connection_laplacian, graph_laplacian
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh, as_mesh
from gpgeom.geometry.morphing import RBFMorphing, floater_disk, rbf_morph
from gpgeom.geometry.pod import SnapshotPOD
from gpgeom.geometry.transfer import interpolate, p1_transfer

__all__ = [
    "ConnectionLaplacian",
    "Mesh",
    "RBFMorphing",
    "SnapshotPOD",
    "as_mesh",
    "boundary_loops",
    "connection_laplacian",
    "floater_disk",
    "graph_laplacian",
    "interpolate",
    "lie",
    "mass_matrix",
    "p1_transfer",
    "rbf_morph",
]
