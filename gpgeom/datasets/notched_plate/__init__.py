r"""NotchedPlate2d: a seeded family of 2D plates with two random free-form notches, solved by P1 FEM.

This is the offline substitute for the Tensile2d benchmark of MMGP (Casenave et al., NeurIPS 2023, Sec. 4). Each
sample is a plate :math:`\Omega \subset [0, 1] \times [0, 2]` whose left and right edges carry one smooth random
notch each on :math:`y \in [0.4, 1.6]`. The notches indent the outer boundary, so every mesh is one connected
triangulated region with exactly **one boundary loop** (disk-like), which is what a Floater morphing onto the unit
disk needs. Node counts and connectivity differ from sample to sample.

Geometry (per sample, all drawn from one ``numpy.random.Generator`` seeded by ``(seed, index)``):

* boundary spacing :math:`h \sim U(h_{lo}, h_{hi})` (``mesh_size``; default ``(0.028, 0.036)``);
* for each side independently, with :math:`t = (y - 0.4)/1.2 \in [0, 1]`, the inward depth

  .. math::

      \delta(t) = \max\Bigl(0,\; d \sin(\pi t)\,\bigl(1 + a \textstyle\sum_{k=2}^{5} b_k \sin(k\pi t)/k\bigr)\Bigr),
      \quad d \sim U(0.05, 0.30),\; b_k \sim N(0, 1),\; a = 0.35;

  a draw whose maximal depth exceeds ``max_depth`` (0.45, so the ligament is at least 0.1 wide) is redrawn;
* other notch families (``notch_family``; test sets of geometry the smooth family never produces, e.g. to measure
  how a model's uncertainty behaves out of distribution): ``"half_ellipse"``,
  :math:`\delta(t) = d \sqrt{1 - (2t - 1)^2}` (vertical tangents at the notch ends, where every smooth notch
  starts with slope :math:`\pi d`), and ``"wedge"``, :math:`\delta(t) = d \min(t / c, (1 - t) / (1 - c))` (a
  V with a kink at the apex :math:`c \sim U(0.35, 0.65)`), both with :math:`d \sim U` (``depth_range``);
* mesh: the boundary polygon is discretised with spacing :math:`\approx h` (arc length on the notches), then
  meshed by ``triangle`` with switches ``pq30a{h^2/2}`` (min angle 30 degrees). The default sizes give about
  2.0k-3.7k nodes.

Physics: plane-strain linear elasticity, P1 triangles (scikit-fem, ``ElementVector(ElementTriP1())``), Young's
modulus ``young`` (1), Poisson ratio :math:`\nu \sim U(0.2, 0.45)`, a uniform traction :math:`P \sim U(0.5, 1.5)`
in :math:`+y` on the top edge, :math:`u_2 = 0` on the bottom edge (roller) and :math:`u_1 = 0` at the bottom-left
corner (removes the rigid translation).

Outputs per sample:

* input scalars ``P`` (traction) and ``nu`` (Poisson ratio), in that order (:data:`IN_SCALAR_NAMES`);
* nodal fields ``U1``, ``U2`` (displacements), ``von_mises`` and ``sigma22`` (:data:`FIELD_NAMES`). The stresses are
  constant per element for P1; they are recovered to the nodes by the **L2 projection** onto P1 (consistent mass
  matrix; ``recovery="l2"``, the default and the spec's choice) or by area-weighted averaging of the adjacent
  elements (``recovery="average"``). The von Mises stress uses the plane-strain out-of-plane stress
  :math:`\sigma_{33} = \nu(\sigma_{11} + \sigma_{22})`;
* output scalars ``max_vm`` (maximum of the nodal von Mises field), ``mean_U2_top`` (:math:`\int_{top} u_2\,ds` divided
  by the top edge length) and ``compliance`` (:math:`f \cdot u`, the work of the traction) (:data:`OUT_SCALAR_NAMES`).

Boundary start node: **node 0 is the bottom-left corner** :math:`(0, 0)` in every mesh. It is also the node that
the MMGP reference renumbering picks (smallest :math:`x`, ties broken by smallest :math:`y`), and the reference's
first step (to the neighbour with the smaller :math:`y`) walks along the bottom edge, i.e. counter-clockwise, which
is the orientation of :attr:`NotchedPlateSample.boundary_loop`. Eight geometric landmarks (the four corners and the
four notch ends, all genuine kinks of the boundary) are exposed as :attr:`NotchedPlateSample.landmarks`.

One concept per module (all names are importable from this package):

- :mod:`gpgeom.datasets.notched_plate.shapes`: the shape family, :class:`NotchShape` (a notch profile
  :math:`\delta(t)` of one of :data:`NOTCH_FAMILIES`) and :class:`PlateShape` (the plate with its two notches);
- :mod:`gpgeom.datasets.notched_plate.meshing`: the boundary polygon with its landmarks (:func:`plate_boundary`),
  the ``triangle`` mesh (:func:`mesh_plate`) and the boundary loop of a mesh
  (:func:`~gpgeom.datasets.notched_plate.meshing.boundary_loop`);
- :mod:`gpgeom.datasets.notched_plate.elasticity`: the plane-strain FE solve and the nodal stress recovery
  (:func:`solve_plane_strain`, :class:`PlaneStrainSolution`);
- :mod:`gpgeom.datasets.notched_plate.samples`: :class:`NotchedPlateSample`, the names of its scalars and fields,
  and :func:`make_notched_plate` (mesh and solve one given shape);
- :mod:`gpgeom.datasets.notched_plate.generate`: the options (:data:`DEFAULT_OPTIONS`), the random draws of a
  sample (:func:`sample_plate_shape`) and :func:`generate_notched_plates` (seeding, disk cache, progress,
  executors);
- :mod:`gpgeom.datasets.notched_plate.storage`: one ``.npz`` file per dataset (:func:`save_notched_plates`,
  :func:`load_notched_plates`, :data:`DATASET_VERSION`).

``triangle`` and ``scikit-fem`` are optional dependencies (``pip install gpgeom[fem]``), imported lazily.
"""

from __future__ import annotations

from gpgeom.datasets.notched_plate.elasticity import PlaneStrainSolution, solve_plane_strain
from gpgeom.datasets.notched_plate.generate import DEFAULT_OPTIONS as DEFAULT_OPTIONS
from gpgeom.datasets.notched_plate.generate import WEDGE_APEX_RANGE as WEDGE_APEX_RANGE
from gpgeom.datasets.notched_plate.generate import generate_notched_plates, sample_plate_shape
from gpgeom.datasets.notched_plate.meshing import LANDMARK_NAMES as LANDMARK_NAMES
from gpgeom.datasets.notched_plate.meshing import boundary_loop, mesh_plate, plate_boundary
from gpgeom.datasets.notched_plate.samples import FIELD_NAMES as FIELD_NAMES
from gpgeom.datasets.notched_plate.samples import IN_SCALAR_NAMES as IN_SCALAR_NAMES
from gpgeom.datasets.notched_plate.samples import OUT_SCALAR_NAMES as OUT_SCALAR_NAMES
from gpgeom.datasets.notched_plate.samples import NotchedPlateSample, make_notched_plate, stack_scalars
from gpgeom.datasets.notched_plate.shapes import HEIGHT as HEIGHT
from gpgeom.datasets.notched_plate.shapes import NOTCH_FAMILIES as NOTCH_FAMILIES
from gpgeom.datasets.notched_plate.shapes import NOTCH_SPAN as NOTCH_SPAN
from gpgeom.datasets.notched_plate.shapes import WIDTH as WIDTH
from gpgeom.datasets.notched_plate.shapes import NotchShape, PlateShape
from gpgeom.datasets.notched_plate.storage import DATASET_VERSION as DATASET_VERSION
from gpgeom.datasets.notched_plate.storage import load_notched_plates, save_notched_plates

# The module data (DATASET_VERSION, DEFAULT_OPTIONS, FIELD_NAMES, IN_SCALAR_NAMES, LANDMARK_NAMES, NOTCH_FAMILIES,
# OUT_SCALAR_NAMES) is re-exported above and documented in the module that defines it.
__all__ = [
    "NotchShape",
    "NotchedPlateSample",
    "PlaneStrainSolution",
    "PlateShape",
    "boundary_loop",
    "generate_notched_plates",
    "load_notched_plates",
    "make_notched_plate",
    "mesh_plate",
    "plate_boundary",
    "sample_plate_shape",
    "save_notched_plates",
    "solve_plane_strain",
    "stack_scalars",
]
