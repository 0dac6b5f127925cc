r"""Tangent vector fields on point clouds: analytic fields with known singularities, rough random fields, meshes.

* Samplers: :func:`sample_sphere` (Fibonacci lattice, optionally randomly rotated; uniform; latitude-longitude,
  i.e. denser at the poles) and :func:`sample_torus` (area-uniform by rejection, or uniform in the angles, i.e.
  denser on the inner side), at any number of points ``n`` (the density).
* Analytic fields, tangent by construction (:func:`sphere_field`, :func:`torus_field`), each with the list of its
  zeros (singularities). On the unit sphere (Poincaré–Hopf: indices sum to 2):

  - ``"rotation"``: :math:`v = a \times x`, centres at :math:`\pm a`;
  - ``"source_sink"``: :math:`v = P_x a = a - (a \cdot x)\,x` (surface gradient of :math:`a \cdot x`), source at
    :math:`-a`, sink at :math:`+a`;
  - ``"saddles"``: surface gradient of :math:`f = xy`, :math:`v = (y, x, 0) - 2xy\,x`: maxima
    :math:`\pm(1,1,0)/\sqrt2`, minima :math:`\pm(1,-1,0)/\sqrt2`, saddles :math:`\pm e_z`;
  - ``"mixed"``: :math:`e_z \times x + P_x \nabla(xy + z/2) + x \times P_x \nabla(xz)` (the benchmark field of the
    research notes); its zeros are not known in closed form (empty list).

  On the torus :math:`x(u, v) = ((R + r\cos v)\cos u, (R + r\cos v)\sin u, r \sin v)` (indices sum to 0):

  - ``"toroidal"``: unit :math:`e_u = \partial_u x / |\partial_u x|`; ``"poloidal"``: unit
    :math:`e_v = \partial_v x / r`; ``"rotation"``: :math:`\partial_u x = e_z \times x` (no zeros);
  - ``"height_gradient"``: surface gradient of the height :math:`x_1`, :math:`P e_1 = e_1 - (n \cdot e_1) n`:
    zeros at :math:`(\pm(R + r), 0, 0)` (max/min) and :math:`(\pm(R - r), 0, 0)` (saddles);
  - ``"mixed"``: :math:`a\,e_u + b\,e_v`, :math:`a = 1 + \tfrac12 \sin 2v \cos u`,
    :math:`b = 0.7\cos(u + v) + 0.3 \sin 3u` (zeros not known in closed form).

* :func:`ellipsoid_vector_field`: a smooth (quadratic) or rough (random trigonometric) ambient field projected onto
  an ellipsoid's tangent planes (:func:`sample_ellipsoid`: area-uniform by rejection);
  :func:`swiss_roll_vector_field`: a field defined in the intrinsic (arclength, height) coordinates of a Swiss roll,
  whose turns are close in space and far along the surface, where intrinsic geometry matters.
* :func:`rough_field`: the reference's random field — uniform random vectors projected to the tangent frames,
  unit-normalised, vector-diffused :math:`c(t) = e^{-tL}c(0)` with the connection Laplacian (sparse
  ``expm_multiply``, not a dense matrix exponential), and renormalised.
* :func:`read_mesh_cloud`: a surface mesh read with meshio; the vertices are the point cloud.

Arrays are numpy ``float64``.

Seeds (every ``seed`` here, :mod:`gpgeom._seeds`): an int ``>= 0`` gives the same draw whatever the global random
states, which it leaves untouched; a ``numpy.random.Generator`` is drawn from in place (the samplers of a field
draw from its generator, so one generator gives one stream); ``None`` seeds a generator with one draw of torch's
global random stream (``torch.manual_seed`` before the call repeats it). Only the Fibonacci lattice is not random:
with ``seed=None`` it is not rotated. A bool, float, string or negative int raises an error naming ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import expm_multiply

from gpgeom._seeds import check_seed, numpy_rng
from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.connection import ConnectionLaplacian, as_points, connection_laplacian

__all__ = [
    "MeshCloud",
    "VectorFieldSample",
    "ellipsoid_vector_field",
    "random_rotation",
    "read_mesh_cloud",
    "rough_field",
    "sample_ellipsoid",
    "sample_sphere",
    "sample_torus",
    "sphere_field",
    "sphere_normals",
    "sphere_vector_field",
    "swiss_roll_vector_field",
    "torus_angles",
    "torus_field",
    "torus_normals",
    "torus_vector_field",
]

SPHERE_FIELDS = ("rotation", "source_sink", "saddles", "mixed")
TORUS_FIELDS = ("toroidal", "poloidal", "rotation", "height_gradient", "mixed")


@dataclass(eq=False)
class VectorFieldSample:
    r"""A sampled tangent vector field.

    Attributes:
        points: ``(n, 3)`` observed positions (``clean_points`` plus positional noise).
        vectors: ``(n, 3)`` observed vectors (``clean_vectors`` plus tangent noise).
        clean_points: ``(n, 3)`` points on the surface.
        clean_vectors: ``(n, 3)`` the exact field at ``clean_points``, tangent there.
        normals: ``(n, 3)`` unit normals at ``clean_points``.
        singularities: ``(m, 3)`` zeros of the field (``(0, 3)`` when not known in closed form or none).
        name: ``"<surface>/<field>"``.
        coords: ``(n, 2)`` intrinsic coordinates of the clean points where the surface has them (the Swiss roll's
            arclength and height), else ``None``.
    """

    points: np.ndarray
    vectors: np.ndarray
    clean_points: np.ndarray
    clean_vectors: np.ndarray
    normals: np.ndarray
    singularities: np.ndarray
    name: str
    coords: np.ndarray | None = None


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return numpy_rng("seed", seed)


def random_rotation(seed: int | np.random.Generator | None = None) -> np.ndarray:
    r"""A Haar-random rotation matrix ``(3, 3)`` (QR of a Gaussian matrix with the sign fix, det = +1), drawn from
    ``seed`` (an int >= 0, a numpy generator, or ``None``: one draw of torch's global stream; module doc)."""
    q, r = np.linalg.qr(_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ----------------------------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------------------------


def sample_sphere(
    n: int,
    *,
    method: str = "fibonacci",
    radius: float = 1.0,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    r"""``n`` points ``(n, 3)`` on the sphere of the given radius.

    Methods: ``"fibonacci"`` (the golden-angle spiral lattice, quasi-uniform; with a ``seed`` it is randomly
    rotated, with ``seed=None`` it is not), ``"uniform"`` (i.i.d. uniform: normalised Gaussians), ``"latlon"``
    (i.i.d. uniform in polar angle and azimuth: the density grows as :math:`1/\sin\theta` towards the poles).
    """
    check_positive("n", n, integer=True)
    check_positive("radius", radius)
    check_option("method", method, ("fibonacci", "uniform", "latlon"))
    check_seed("seed", seed, numpy_generator=True)
    if method == "fibonacci":
        i = np.arange(n) + 0.5
        z = 1.0 - 2.0 * i / n
        phi = np.pi * (1.0 + np.sqrt(5.0)) * i
        s = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
        X = np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)
        if seed is not None:
            X = X @ random_rotation(seed).T
    elif method == "uniform":
        X = _rng(seed).standard_normal((n, 3))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    else:
        g = _rng(seed)
        theta, phi = g.uniform(0, np.pi, n), g.uniform(0, 2 * np.pi, n)
        X = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)
    return radius * X


def sample_torus(
    n: int,
    *,
    R: float = 1.0,
    r: float = 0.4,
    method: str = "uniform",
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""``n`` points on the torus :math:`((R + r\cos v)\cos u, (R + r\cos v)\sin u, r\sin v)`, ``0 < r < R``.

    Methods: ``"uniform"`` (area-uniform: :math:`(u, v)` uniform, accepted with probability
    :math:`(R + r\cos v)/(R + r)`, the area element's ratio to its maximum), ``"angles"`` (uniform in
    :math:`(u, v)`: denser on the inner side).

    Returns:
        ``points`` ``(n, 3)`` and ``angles`` ``(n, 2)`` = :math:`(u, v)`.
    """
    check_positive("n", n, integer=True)
    check_positive("R", R)
    check_positive("r", r)
    if r >= R:
        raise ValueError(f"The torus needs r < R (no self-intersection), got R={R}, r={r}.")
    check_option("method", method, ("uniform", "angles"))
    g = _rng(seed)
    if method == "angles":
        u, v = g.uniform(0, 2 * np.pi, n), g.uniform(0, 2 * np.pi, n)
    else:
        us, vs, have = [], [], 0
        while have < n:
            m = int(1.3 * (n - have) * (R + r) / R) + 16  # acceptance rate is R/(R + r)
            u, v = g.uniform(0, 2 * np.pi, m), g.uniform(0, 2 * np.pi, m)
            ok = g.uniform(0, 1, m) < (R + r * np.cos(v)) / (R + r)
            us.append(u[ok])
            vs.append(v[ok])
            have += int(ok.sum())
        u, v = np.concatenate(us)[:n], np.concatenate(vs)[:n]
    ring = R + r * np.cos(v)
    X = np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], axis=1)
    return X, np.stack([u, v], axis=1)


def sphere_normals(points: object) -> np.ndarray:
    r"""Unit outward normals ``(n, 3)`` of the sphere centred at 0 at the radial projections of ``points`` ``(n, 3)``.

    Raises:
        ValueError: For a point at the origin (no radial projection).
    """
    X = as_points("points", points, min_points=0)
    _check3("points", X)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    zero = np.nonzero(norm[:, 0] == 0)[0]
    if len(zero):
        raise ValueError(
            f"`points` must not contain the origin (it has no radial projection onto the sphere); rows "
            f"{zero[:5].tolist()}{' ...' if len(zero) > 5 else ''} are (0, 0, 0)."
        )
    return X / norm


def torus_angles(points: object, R: float = 1.0) -> np.ndarray:
    r"""Angles ``(n, 2)`` :math:`(u, v)` of points on (or near) the torus with major radius ``R`` about the z-axis."""
    X = as_points("points", points, min_points=0)
    _check3("points", X)
    u = np.arctan2(X[:, 1], X[:, 0])
    v = np.arctan2(X[:, 2], np.hypot(X[:, 0], X[:, 1]) - R)
    return np.stack([u, v], axis=1)


def torus_normals(angles: np.ndarray) -> np.ndarray:
    r"""Unit outward normals :math:`(\cos v\cos u, \cos v \sin u, \sin v)`, ``(n, 3)``, from angles ``(n, 2)``."""
    u, v = np.asarray(angles, dtype=np.float64).T
    return np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)


def _check3(name: str, X: np.ndarray) -> None:
    if X.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape (n, 3), got {X.shape}.")


# ----------------------------------------------------------------------------------------------------------------
# analytic fields
# ----------------------------------------------------------------------------------------------------------------


def _tangent(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """P_x g = g - (x.g) x for unit x (rows)."""
    return g - np.einsum("ij,ij->i", x, g)[:, None] * x


def sphere_field(points: object, kind: str = "rotation", *, axis: object = (0.0, 0.0, 1.0)) -> tuple:
    r"""An analytic tangent field on the unit sphere, evaluated at the radial projections of ``points``.

    Args:
        points: ``(n, 3)``, none at the origin (``ValueError``).
        kind: One of ``"rotation"``, ``"source_sink"``, ``"saddles"``, ``"mixed"`` (see the module docstring).
        axis: Axis :math:`a` of ``"rotation"`` and ``"source_sink"`` (normalised).

    Returns:
        ``vectors`` ``(n, 3)`` tangent at :math:`x/|x|`, and ``singularities`` ``(m, 3)``.
    """
    check_option("kind", kind, SPHERE_FIELDS)
    x = sphere_normals(points)
    a = np.asarray(axis, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) == 0:
        raise ValueError(f"`axis` must be a non-zero finite 3-vector, got {axis!r}.")
    a = a / np.linalg.norm(a)
    if kind == "rotation":
        return np.cross(a[None, :], x), np.stack([a, -a])
    if kind == "source_sink":
        return _tangent(x, np.broadcast_to(a, x.shape)), np.stack([a, -a])
    if kind == "saddles":
        g = np.stack([x[:, 1], x[:, 0], np.zeros(len(x))], axis=1)
        h = 1.0 / np.sqrt(2.0)
        sing = np.array([[h, h, 0], [-h, -h, 0], [h, -h, 0], [-h, h, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
        return _tangent(x, g), sing
    # mixed: e_z x X + P grad(xy + z/2) + X x P grad(xz)
    ez = np.broadcast_to(np.array([0.0, 0.0, 1.0]), x.shape)
    g1 = np.stack([x[:, 1], x[:, 0], np.full(len(x), 0.5)], axis=1)
    g2 = np.stack([x[:, 2], np.zeros(len(x)), x[:, 0]], axis=1)
    v = np.cross(ez, x) + _tangent(x, g1) + np.cross(x, _tangent(x, g2))
    return _tangent(x, v), np.zeros((0, 3))


def torus_field(points: object, kind: str = "toroidal", *, R: float = 1.0, r: float = 0.4) -> tuple:
    r"""An analytic tangent field on the torus, evaluated at the torus point with the same angles as ``points``.

    Returns:
        ``vectors`` ``(n, 3)`` and ``singularities`` ``(m, 3)`` (see the module docstring).
    """
    check_option("kind", kind, TORUS_FIELDS)
    ang = torus_angles(points, R)
    u, v = ang.T
    nrm = torus_normals(ang)
    e_u = np.stack([-np.sin(u), np.cos(u), np.zeros_like(u)], axis=1)
    e_v = np.stack([-np.sin(v) * np.cos(u), -np.sin(v) * np.sin(u), np.cos(v)], axis=1)
    none = np.zeros((0, 3))
    if kind == "toroidal":
        return e_u, none
    if kind == "poloidal":
        return e_v, none
    if kind == "rotation":
        return (R + r * np.cos(v))[:, None] * e_u, none
    if kind == "height_gradient":
        g = np.broadcast_to(np.array([1.0, 0.0, 0.0]), nrm.shape)
        sing = np.array([[R + r, 0, 0], [-(R + r), 0, 0], [R - r, 0, 0], [-(R - r), 0, 0]], dtype=np.float64)
        return _tangent(nrm, g), sing
    a = 1.0 + 0.5 * np.sin(2 * v) * np.cos(u)
    b = 0.7 * np.cos(u + v) + 0.3 * np.sin(3 * u)
    return a[:, None] * e_u + b[:, None] * e_v, none


def _noisy(
    X: np.ndarray, V: np.ndarray, N: np.ndarray, noise: float, vector_noise: float, g: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    check_positive("noise", noise, allow_zero=True)
    check_positive("vector_noise", vector_noise, allow_zero=True)
    P = X + noise * g.standard_normal(X.shape) if noise > 0 else X.copy()
    W = V + vector_noise * _tangent(N, g.standard_normal(V.shape)) if vector_noise > 0 else V.copy()
    return P, W


def sphere_vector_field(
    n: int,
    kind: str = "rotation",
    *,
    method: str = "fibonacci",
    noise: float = 0.0,
    vector_noise: float = 0.0,
    axis: object = (0.0, 0.0, 1.0),
    seed: int | np.random.Generator | None = None,
) -> VectorFieldSample:
    r"""Sample the unit sphere (:func:`sample_sphere`) and an analytic field (:func:`sphere_field`).

    ``noise``: standard deviation of isotropic Gaussian noise added to the positions; ``vector_noise``: of Gaussian
    noise added to the vectors within the tangent plane (the observed vectors stay tangent).
    """
    g = _rng(seed)
    X = sample_sphere(n, method=method, seed=g)
    V, sing = sphere_field(X, kind, axis=axis)
    N = sphere_normals(X)
    P, W = _noisy(X, V, N, noise, vector_noise, g)
    return VectorFieldSample(P, W, X, V, N, sing, f"sphere/{kind}")


def torus_vector_field(
    n: int,
    kind: str = "toroidal",
    *,
    R: float = 1.0,
    r: float = 0.4,
    method: str = "uniform",
    noise: float = 0.0,
    vector_noise: float = 0.0,
    seed: int | np.random.Generator | None = None,
) -> VectorFieldSample:
    r"""Sample the torus (:func:`sample_torus`) and an analytic field (:func:`torus_field`); noise as in
    :func:`sphere_vector_field`."""
    g = _rng(seed)
    X, ang = sample_torus(n, R=R, r=r, method=method, seed=g)
    V, sing = torus_field(X, kind, R=R, r=r)
    N = torus_normals(ang)
    P, W = _noisy(X, V, N, noise, vector_noise, g)
    return VectorFieldSample(P, W, X, V, N, sing, f"torus/{kind}")


# ----------------------------------------------------------------------------------------------------------------
# an ellipsoid, and a surface whose intrinsic geometry differs from the ambient one (the Swiss roll)
# ----------------------------------------------------------------------------------------------------------------


def sample_ellipsoid(
    n: int, axes: object = (1.0, 0.75, 0.5), *, seed: int | np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""``n`` area-uniform i.i.d. points on the ellipsoid :math:`\sum_a x_a^2 / c_a^2 = 1` and their unit normals.

    The map :math:`u \mapsto C u` (:math:`C = \mathrm{diag}(c)`) from the unit sphere stretches area by
    :math:`c_1 c_2 c_3 |C^{-1} u|`, so uniform sphere points are accepted with probability
    :math:`|C^{-1}u| \min_a c_a \le 1` (rejection sampling). Normals :math:`\propto C^{-2} x`.

    Returns:
        ``points`` ``(n, 3)`` and ``normals`` ``(n, 3)``.
    """
    check_positive("n", n, integer=True)
    c = np.asarray(axes, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"`axes` must be three positive semi-axes, got {axes!r}.")
    g = _rng(seed)
    kept, have = [], 0
    while have < n:
        u = g.standard_normal((2 * n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        ok = g.uniform(size=len(u)) < np.linalg.norm(u / c, axis=1) * c.min()
        kept.append(u[ok])
        have += int(ok.sum())
    X = np.concatenate(kept)[:n] * c
    N = X / c**2
    return X, N / np.linalg.norm(N, axis=1, keepdims=True)


def ellipsoid_vector_field(
    n: int,
    kind: str = "smooth",
    *,
    axes: object = (1.0, 0.75, 0.5),
    frequency: float = 8.0,
    terms: int = 80,
    noise: float = 0.0,
    vector_noise: float = 0.0,
    seed: int | np.random.Generator | None = None,
) -> VectorFieldSample:
    r"""A tangent field on an ellipsoid (:func:`sample_ellipsoid`): the projection :math:`P_x g(x)` of an ambient
    field onto the tangent plane, :math:`P_x = I - n_x n_x^\top`.

    * ``"smooth"``: :math:`g(x) = (y + z/2,\ xz - 0.3,\ 1 - xy) + (0.3, 0.2, 1) \times x`, quadratic;
    * ``"rough"``: a random trigonometric field :math:`g(x) = \sum_{j=1}^{m} a_j \cos(\omega_j \cdot x + b_j)`,
      :math:`\omega_j \sim \mathcal N(0, f^2 I_3)`, :math:`a_j \sim \mathcal N(0, I_3/m)`,
      :math:`b_j \sim U[0, 2\pi)` (``frequency`` :math:`f`, ``terms`` :math:`m`; drawn from ``seed`` after the
      points): wavelengths around :math:`2\pi/(f\sqrt 3) \approx 0.45` on an ellipsoid of half-axes
      (1, 0.75, 0.5) at the default.

    Noise as in :func:`sphere_vector_field`.
    """
    check_option("kind", kind, ("smooth", "rough"))
    check_positive("frequency", frequency)
    check_positive("terms", terms, integer=True)
    g = _rng(seed)
    X, N = sample_ellipsoid(n, axes, seed=g)
    x, y, z = X.T
    if kind == "smooth":
        G = np.stack([y + 0.5 * z, x * z - 0.3, 1.0 - x * y], axis=1) + np.cross(np.array([0.3, 0.2, 1.0]), X)
    else:
        W = g.standard_normal((terms, 3)) * frequency
        A = g.standard_normal((terms, 3)) / np.sqrt(terms)
        G = np.cos(X @ W.T + g.uniform(0.0, 2 * np.pi, terms)) @ A
    V = _tangent(N, G)
    P, Wv = _noisy(X, V, N, noise, vector_noise, g)
    return VectorFieldSample(P, Wv, X, V, N, np.zeros((0, 3)), f"ellipsoid/{kind}")


def swiss_roll_vector_field(
    n: int,
    *,
    turns: float = 2.5,
    gap: float = 0.4,
    r0: float = 0.5,
    height: float = 1.0,
    waves: float = 3.0,
    noise: float = 0.0,
    vector_noise: float = 0.0,
    seed: int | np.random.Generator | None = None,
) -> VectorFieldSample:
    r"""A tangent field defined intrinsically on a Swiss roll, whose turns lie ``gap`` apart in space but a whole
    turn apart along the surface.

    The surface: the Archimedean spiral :math:`r(\theta) = r_0 + b\theta`, :math:`b = \text{gap}/2\pi`,
    :math:`\theta \in [0, 2\pi\,\text{turns}]`, swept along :math:`y \in [0, \text{height}]`:
    :math:`x(\theta, h) = (r\cos\theta,\ h,\ r\sin\theta)`. It is flat: in the arclength
    :math:`s(\theta) = \tfrac{1}{2b}\left[r\rho + b^2 \log(r + \rho)\right]_{r_0}^{r(\theta)}`,
    :math:`\rho = \sqrt{r^2 + b^2}`, and the height :math:`h` its metric is Euclidean, so points uniform in
    :math:`(s, h)` are area-uniform (:math:`\theta(s)` by interpolating :math:`s` on a fine grid, and the exact
    :math:`s(\theta)` recomputed).

    The field, in the unit tangents :math:`e_s = \partial_s x` and :math:`e_h = (0, 1, 0)`, with
    :math:`u = s/S` (:math:`S` the length of the spiral) and :math:`t = h/\text{height}`:

    .. math:: v = \left(\cos(2\pi w u) + \tfrac12 \cos(\pi t)\right) e_s + 0.8 \cos(\pi w u) \cos(\pi t)\, e_h,

    :math:`w` = ``waves`` periods along the roll. It is smooth along the surface, and at the same ambient place on
    neighbouring turns (``gap`` apart, a turn of length :math:`2\pi r` apart along the surface) its values differ:
    a kernel of the ambient distance has to resolve the gap, one of the distance along the surface does not. Its
    components in the parallel frame :math:`(e_s, e_h)` have zero normal derivative on the edges (the natural,
    Neumann, condition of the graph Laplacians' eigenvectors): with a field that violates it (e.g.
    :math:`\cos(2\pi w u + \pi t)\, e_s`), 23 % of it in L2 lies outside the first 100 connection-Laplacian
    eigenfields of a 3000-point roll, whatever the graph's weights, a boundary effect that is not the subject here.

    Returns:
        A :class:`VectorFieldSample` with ``coords`` = :math:`(s, h)`; noise as in :func:`sphere_vector_field`.
    """
    check_positive("n", n, integer=True)
    for name, value in (("turns", turns), ("gap", gap), ("r0", r0), ("height", height), ("waves", waves)):
        check_positive(name, value)
    g = _rng(seed)
    b = gap / (2 * np.pi)

    def arclength(r: np.ndarray) -> np.ndarray:
        F = lambda q: q * np.sqrt(q * q + b * b) + b * b * np.log(q + np.sqrt(q * q + b * b))  # noqa: E731
        return (F(r) - F(np.asarray(r0))) / (2 * b)

    grid = np.linspace(0.0, 2 * np.pi * turns, 200_001)
    s_grid = arclength(r0 + b * grid)
    S = float(s_grid[-1])
    th = np.interp(g.uniform(0.0, S, n), s_grid, grid)
    h = g.uniform(0.0, height, n)
    r = r0 + b * th
    s = arclength(r)
    X = np.stack([r * np.cos(th), h, r * np.sin(th)], axis=1)
    e_s = np.stack([b * np.cos(th) - r * np.sin(th), np.zeros(n), b * np.sin(th) + r * np.cos(th)], axis=1)
    e_s /= np.linalg.norm(e_s, axis=1, keepdims=True)
    e_h = np.broadcast_to(np.array([0.0, 1.0, 0.0]), X.shape)
    u, t = s / S, h / height
    V = (np.cos(2 * np.pi * waves * u) + 0.5 * np.cos(np.pi * t))[:, None] * e_s
    V = V + (0.8 * np.cos(np.pi * waves * u) * np.cos(np.pi * t))[:, None] * e_h
    N = np.cross(e_s, e_h)
    P, W = _noisy(X, V, N, noise, vector_noise, g)
    return VectorFieldSample(P, W, X, V, N, np.zeros((0, 3)), "swiss_roll", np.stack([s, h], axis=1))


# ----------------------------------------------------------------------------------------------------------------
# rough random field (the reference's test field)
# ----------------------------------------------------------------------------------------------------------------


def rough_field(
    points: object | None = None,
    *,
    t: float = 100.0,
    seed: int | np.random.Generator | None = None,
    laplacian: ConnectionLaplacian | None = None,
    normalize: bool = True,
    **laplacian_kwargs,
) -> np.ndarray:
    r"""The reference's random test field: vector diffusion of random tangent noise.

    Steps: :math:`g_i \sim U[-1, 1]^D`; :math:`c_i(0) = T_i^\top g_i / |T_i^\top g_i|` (unit tangent noise);
    :math:`c(t) = e^{-tL} c(0)` by ``scipy.sparse.linalg.expm_multiply``; :math:`v_i = T_i c_i(t)`, and with
    ``normalize`` :math:`v_i \leftarrow m_i v_i / |v_i|` where :math:`m = e^{-tL_0}|c(0)|` is the scalar diffusion of
    the initial magnitudes. Since :math:`|c_i(0)| = 1` and the reference's (unnormalised) scalar Laplacian
    annihilates constants, :math:`m \equiv 1`: the field is unit length (directions jump near its zeros, hence
    "rough"). ``t`` is in the units of ``L``: the reference uses ``t = 100`` with the default
    (unnormalised kNN, ``k = 10``) Laplacian.

    Args:
        points: ``(n, D)`` cloud; ignored when ``laplacian`` is given.
        t: Diffusion time, in the units of ``L`` (0: the unit tangent noise itself).
        seed: Seed of the noise: an int >= 0, a numpy generator (drawn from in place) or ``None`` (one draw of
            torch's global random stream; module doc).
        laplacian: A :class:`ConnectionLaplacian` to diffuse with (default: built by
            :func:`connection_laplacian` with ``laplacian_kwargs``, e.g. ``dim=2``, ``frames=...``).
        normalize: Rescale every vector to the scalar diffusion of the initial magnitudes (above; unit length).

    Returns:
        ``(n, D)`` ambient vectors, tangent to the frames of the Laplacian (:math:`v_i \in \mathrm{span}\,T_i`).
    """
    check_positive("t", t, allow_zero=True)
    check_seed("seed", seed, numpy_generator=True)
    if laplacian is None:
        if points is None:
            raise ValueError("Give `points` or a `laplacian`.")
        laplacian = connection_laplacian(points, **laplacian_kwargs)
    cl = laplacian
    g = _rng(seed)
    raw = g.uniform(-1.0, 1.0, cl.points.shape)
    c = cl.project(raw).reshape(cl.n, cl.dim)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), np.finfo(float).tiny)
    ct = expm_multiply(-t * cl.L, c.ravel()) if t > 0 else c.ravel()
    ct = ct.reshape(cl.n, cl.dim)
    if normalize:
        ct = ct / np.maximum(np.linalg.norm(ct, axis=1, keepdims=True), np.finfo(float).tiny)
    return cl.lift(ct.ravel())


# ----------------------------------------------------------------------------------------------------------------
# meshes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class MeshCloud:
    r"""A surface mesh as a point cloud.

    Attributes:
        points: ``(n, D)`` vertices (unreferenced vertices dropped when the mesh has triangles).
        triangles: ``(m, 3)`` int64 vertex indices into ``points`` (``(0, 3)`` if the file has none).
        normals: ``(n, 3)`` unit area-weighted vertex normals (``None`` unless 3-D with triangles).
        index: ``(n,)`` row of each vertex in the file.
    """

    points: np.ndarray
    triangles: np.ndarray
    normals: np.ndarray | None
    index: np.ndarray


def read_mesh_cloud(path: str, *, drop_unreferenced: bool = True) -> MeshCloud:
    r"""Read a mesh with meshio (any format it knows: .obj, .ply, .off, .stl, .vtk, .msh, ...).

    Vertex normals: :math:`n_i \propto \sum_{f \ni i} (p_1 - p_0) \times (p_2 - p_0)` (twice the area times the
    face normal), normalised; they follow the faces' orientation. Coinciding vertices (seams) are kept; pass
    ``duplicates="drop"`` to :func:`connection_laplacian`.
    """
    import meshio

    mesh = meshio.read(path)
    pts = np.asarray(mesh.points, dtype=np.float64)
    tris = [np.asarray(c.data, dtype=np.int64) for c in mesh.cells if c.type == "triangle"]
    tri = np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)
    index = np.arange(len(pts))
    if drop_unreferenced and len(tri):
        used = np.unique(tri)
        remap = np.full(len(pts), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        pts, tri, index = pts[used], remap[tri], used
    normals = None
    if pts.shape[1] == 3 and len(tri):
        p0, p1, p2 = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
        fn = np.cross(p1 - p0, p2 - p0)
        acc = np.zeros_like(pts)
        for c in range(3):
            np.add.at(acc, tri[:, c], fn)
        nrm = np.linalg.norm(acc, axis=1, keepdims=True)
        normals = acc / np.where(nrm > 0, nrm, 1.0)
    return MeshCloud(pts, tri, normals, index)
