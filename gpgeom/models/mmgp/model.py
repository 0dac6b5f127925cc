r"""The MMGP model: morphing, transfer, POD and GP stages put together (Casenave et al., NeurIPS 2023,
arXiv:2305.12871, Algorithm 1); the method is described in :mod:`gpgeom.models.mmgp`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch
from gpytorch.kernels import Kernel
from torch import Tensor

from gpgeom._progress import resolve_progress
from gpgeom._validation import as_tensor, check_device, check_option, check_positive
from gpgeom.base import ModelContract
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.botorch.model_list import SurrogateList
from gpgeom.engine.parallel import check_executor
from gpgeom.geometry.mesh import Mesh, as_float_array
from gpgeom.models.mmgp import scalars
from gpgeom.models.mmgp.fanout import fit_gps, transport_new, transport_training
from gpgeom.models.mmgp.inputs import (
    as_mesh,
    as_meshes,
    check_family,
    check_output_fields,
    clock,
    mapping_field_names,
    mode_option,
    output_names,
    scalar_table,
    split_clock,
    warn_zero_scalars,
)
from gpgeom.models.mmgp.latent_gp import (
    HYPERPARAMETERS,
    KERNELS,
    gp_groups,
    loo_residuals,
    make_gp,
    noise_variances,
    own_modes,
    single_output_gp,
)
from gpgeom.models.mmgp.prediction import MMGPFitResult, MMGPPrediction
from gpgeom.models.mmgp.reduction import FieldPOD, GeometryPOD, check_field_spread, decode_fields, truncation_noise
from gpgeom.models.mmgp.roundtrip import roundtrip_variance, transfer_intensity
from gpgeom.models.mmgp.scalars import check_scalar_transform, resolve_transforms, scalar_prediction, to_gp_units
from gpgeom.models.mmgp.state import model_config, model_state, restore_model
from gpgeom.models.mmgp.transfer import MORPHINGS, CommonMeshTransfer, TransferOperators, sparse_to_torch
from gpgeom.models.mmgp.unexplained import GeometryResidual, geometry_share, variance_factor

__all__ = ["MMGP"]


class MMGP(ModelContract):
    r"""Mesh-morphing GP regression of nodal fields and scalars (Casenave et al., NeurIPS 2023).

    What the predictive uncertainty assumes (:mod:`gpgeom.models.mmgp`, :mod:`~gpgeom.models.mmgp.unexplained`):
    the outputs are smooth functions of the latent inputs :math:`z = (\xi, \mu)` (independent GPs) plus a variation
    that :math:`z` does not explain (the GPs' learned noise, the POD truncation residual), caused mostly by the part
    of the geometry that the :math:`n_g` modes do not represent; its variance is affine in the boundary energy of
    that geometry residual, so it grows on shapes unlike the training ones (``ood_score`` of :meth:`predict`).

    Args:
        morphing: ``"floater"`` (default; Tutte map onto the unit disk: 2D triangle meshes and triangle surfaces
            in 3D of disk topology, with exactly one boundary loop), ``"rbf"`` (Wendland-C2 RBF map of each mesh
            onto the common mesh's shape: 2D triangle meshes, boundary nodes matched by normalised arc length from
            their lowest-leftmost node, the same number of boundary loops in every mesh; tetrahedral meshes,
            :func:`~gpgeom.geometry.morphing3d.morph_volume`; triangle surfaces in 3D,
            :func:`~gpgeom.geometry.morphing3d.morph_surface`), ``"physical"`` (no morphing: the P1 transfers
            between each mesh and the common mesh in physical space, common nodes outside a mesh clamped to its
            boundary; a baseline for the morphings, any kind of mesh) or ``"none"`` (every mesh has the common
            mesh's node count and node order, as for a fixed topology; the transfers are identities). All meshes of a
            family are of one kind (a mix of 2D and 3D meshes is refused). In 3D the transported coordinates
            :math:`X_i` are ``N_c x 3`` and the geometry residual is measured on the boundary surface.
        common_mesh: ``"middle"`` (training mesh ``n // 2``, the reference's choice), an ``int`` index of a
            training mesh, or a user mesh (anything :func:`~gpgeom.models.mmgp.as_mesh` accepts) in physical
            coordinates, morphed like the others. For volumes a template is advisable, e.g. the reference block
            of Bracket3d (:func:`gpgeom.datasets.bracket3d.reference_mesh`), with more geometry modes than in 2D
            (about 24 for Bracket3d, whose shapes need 16-24 coordinates; ``benchmarks/results/mmgp_bracket3d.md``).
        n_modes_geometry: Geometry POD modes :math:`n_g`: an ``int``, or a float in (0, 1] = the energy fraction to
            keep. Default 24 (was 16, and 8 in the reference): on NotchedPlate2d the stress coefficients depend on
            shape detail beyond 8 modes (von Mises Q2 0.968 with 8 geometry and 8 field modes, 0.980 with 16 and 8,
            0.988 with 16 and 16: ``benchmarks/results/mmgp_before8.md``, ``mmgp_g16.md``, ``mmgp_f16.md``), and
            the peak stress ``max_vm`` on detail beyond 16 (Q2 0.9692 with 16 geometry modes, ``mmgp.md`` as
            committed in 1fbdf35; 0.9702 with 24, ``benchmarks/results/mmgp.md``; on a rougher plate family every
            field and scalar gains, ``mmgp_rough.md``).
        n_modes_fields: Modes per output field :math:`n_f` (``int`` or energy fraction), or a sequence with one
            entry per field. Default 24 (was 8): on NotchedPlate2d with 16 geometry modes the von Mises Q2 is 0.9797
            with 8 field modes and 0.9876 with 16 (``mmgp_g16.md``, ``mmgp_f16.md``; the docs' "How many modes").
        tail_energy: With ``hyperparameters="per_output"``: the modes of a field whose share of the field's snapshot
            energy :math:`\lambda_k / \sum_j \lambda_j` is below ``tail_energy`` (beyond the first) share one set of
            hyperparameters (one GP per field tail; :func:`~gpgeom.models.mmgp.latent_gp.own_modes`), so that more
            field modes cost about one GP per field instead of one per mode. ``0`` gives every mode its own. The
            counts kept separate are ``n_modes_own_``.
        kernel: ``"matern52"`` (ARD, default), ``"matern32"``, ``"matern12"``, ``"rbf"``, or a callable
            ``(d, batch_shape) -> gpytorch Kernel`` with that batch shape (then :meth:`load` asks for it again:
            ``MMGP.load(path, kernel=...)``).
        hyperparameters: How the GP hyperparameters (kernel and noise) are tied across outputs: ``"per_output"``
            (default; separate hyperparameters for every coefficient and scalar, one batched GP whose members get
            their own L-BFGS-B runs and keep their own best restart), ``"per_field"`` (one GP with shared
            hyperparameters over the POD coefficients of each field, as the reference, and one GP per output
            scalar) or ``"shared"`` (one set for all outputs). Each output is an independent GP with its own
            constant mean in every case, and the predictive variance is exact. Measured on NotchedPlate2d with 8
            geometry and 8 field modes (``benchmarks/results/mmgp_before8.md`` against ``mmgp_per_field.md``: von
            Mises Q2 0.968 against 0.965): ``"per_output"`` is the more accurate (the leading modes are smooth,
            the trailing ones noise-like, and one shared noise level fits neither); ``"per_field"`` factorises one
            kernel matrix per field instead of one per output, so it is cheaper to train (not in a committed
            table).
        truncation_variance: Add the POD truncation variance (:mod:`gpgeom.models.mmgp`) to the predicted field
            variance.
        transfer_variance: Add the variance of the round-trip transfer error :math:`U_i - Q_i P_i U_i` (what the
            P1 space of the common mesh cannot represent of a mesh's field; zero at nodes on common nodes, largest
            inside coarse common elements near steep gradients; :mod:`~gpgeom.models.mmgp.roundtrip`) to the
            predicted field variance and draws. Off by default: on held-out meshes it raises coverage a little but
            costs NLPD (U2 on coarse plates: -1.70 -> -1.27, ``benchmarks/results/mmgp_transfer.md``); it serves
            predictions at the training meshes of coarse meshes, where the round trip is most of the error. The
            intensity is estimated at every fit, so the attribute can be switched on after it.
        geometry_variance: Scale the unexplained variance terms (the GPs' learned noise, with
            ``predict(observation_noise=True)``, and the truncation variance) per mesh by
            :math:`\lambda = 1 - s + s \rho / \bar\rho`, with :math:`\rho` the boundary energy of the mesh's
            geometry POD residual, :math:`\bar\rho` its training reference and :math:`s` the geometric share fitted
            per term (:mod:`~gpgeom.models.mmgp.unexplained`). ``False`` keeps them at their training size whatever
            the shape.
        scalar_transform: ``"log"`` (default): the GP of every output scalar whose training values are all
            positive regresses :math:`\log w` and predicts the log-normal mean and variance
            (:mod:`~gpgeom.models.mmgp.scalars`); ``"none"`` regresses :math:`w`; or one of them per scalar. The
            choice per scalar is ``scalar_transforms_``. On NotchedPlate2d with 16 geometry modes the log raises the
            max von Mises Q2 from 0.960 (``benchmarks/results/mmgp_f16.md``) to 0.969 (``mmgp.md`` as committed in
            1fbdf35; its errors grow with its size) and leaves the other two scalars unchanged.
        restarts: Random restarts of the hyperparameter fit (on top of the first attempt). Default 4 (was 10): on
            NotchedPlate2d five attempts give the held-out accuracy of ten at half the GP training time
            (``benchmarks/results/mmgp.md`` as committed in 1fbdf35, 129 CPU s, against 40cc5a8, 247 CPU s).
        max_iter: L-BFGS-B iterations per attempt.
        center: Centre the POD snapshots (``False`` decomposes the raw snapshots, as the reference code does).
        ref_compat: Reproduce the reference code: Floater boundary angles and orientation of Muscat, no centring,
            and the geometry inner product ``kron(I_2, M)`` applied to interleaved coordinates.
        floater_start: Where the Floater boundary walk starts (the node that lands at angle 0):
            ``"min_x"`` (the reference rule: lowest-leftmost boundary node, ties within round-off) or a point
            ``(2,)``, the boundary node nearest to it. A geometric anchor (e.g. a corner every shape shares) is
            the robust choice: it also holds for decoded shapes (:meth:`decode_geometry`), whose straight edges
            are straight only up to the POD truncation, which can move the "min_x" node along the edge.
        seed: Seed of the restarts and of the Monte Carlo draws.
        repair_meshes: What to do with a degenerate mesh (coincident nodes or duplicate points, zero-area or folded
            triangles; :meth:`gpgeom.geometry.mesh.Mesh.check`), whose P1 transfer is undetermined at the nodes
            involved: ``False`` (default) raises ``ValueError`` naming the mesh and the nodes or cell; ``True``
            merges coincident nodes and removes zero-area triangles (:meth:`~gpgeom.geometry.mesh.Mesh.repair`,
            with a :class:`~gpgeom.errors.MeshRepairWarning`), reading and predicting fields on the original nodes
            all the same. Folded meshes are refused either way.
        dtype: The floating dtype of the GP stage and the decode (the geometry preprocessing is float64 numpy).
        device: The device of the GP stage and the decode (``"cuda"`` runs both there; morphing and P1 transfer
            stay on the CPU).

    Attributes:
        gp: A BoTorch model from the latent inputs :math:`z = (\xi, \mu)` (``d = n_g + p`` columns, original units,
            normalised inside by a fixed ``Normalize`` transform) to the ``n_outputs = sum(n_f) + q`` outputs (the
            field POD coefficients, field by field, then the scalars): the single
            :class:`~gpgeom.botorch.ExactGPModel` for ``"per_output"`` / ``"shared"``, a
            :class:`~gpgeom.botorch.SurrogateList` of the group GPs for ``"per_field"``.
        gps_: The fitted :class:`~gpgeom.botorch.ExactGPModel` of every output group (``"per_field"``: one per
            field, then one per output scalar; ``"per_output"`` with field tails: per field its leading modes and
            its tail, then the scalars); ``output_groups_`` their ``(start, stop)`` output columns.
        fit_result_: An :class:`~gpgeom.models.mmgp.MMGPFitResult` (the GPs' fit results and the stage timings).
        common_mesh_: The common mesh in physical coordinates (``N_c`` nodes).
        common_morphed_: Its morphed node positions ``(N_c, 2)`` (Floater) or ``(N_c, d)`` (the others, ``d`` the
            space dimension).
        n_modes_geometry_, n_modes_fields_: The numbers of modes kept. ``n_modes_own_``: per field, how many leading
            modes have their own hyperparameters (``"per_output"`` with ``tail_energy``; all of them otherwise).
        train_latent_: ``n x d`` training inputs; ``train_targets_``: ``n x n_outputs`` (tensors; the GP's targets,
            :math:`\log w` for the scalars of ``scalar_transforms_`` ``"log"``; float64 whatever the dtype).
        scalar_transforms_: ``"log"`` or ``"none"`` for every output scalar (``scalar_transform``).
        truncation_share_: The geometric shares :math:`s` of the fields' truncation variances, ``(m,)``.
        noise_share_: The geometric shares of the learned noise, of every field (its coefficients pooled) then every
            output scalar, ``(m + q,)``.
        train_ood_score_: The out-of-sample scores :math:`g_i` of the training shapes, ``(n,)`` (mean 1; a
            reference for thresholds on :meth:`ood_score`).
        timings_: Wall seconds per stage of the fit (``morph``, ``transfer``, ``pod``, ``gp``); ``cpu_timings_`` the
            same in CPU seconds of this process.
    """

    #: 2: the geometry residual (OOD score), the geometric shares and ``geometry_variance``.
    _format_version = 2

    def __init__(
        self,
        *,
        morphing: str = "floater",
        common_mesh: str | int | object = "middle",
        n_modes_geometry: int | float = 24,
        n_modes_fields: int | float | Sequence[int | float] = 24,
        tail_energy: float = 5e-3,
        scalar_transform: str | Sequence[str] = "log",
        kernel: str | Callable[[int, torch.Size], Kernel] = "matern52",
        hyperparameters: str = "per_output",
        truncation_variance: bool = True,
        transfer_variance: bool = False,
        geometry_variance: bool = True,
        restarts: int = 4,
        max_iter: int = 500,
        center: bool = True,
        ref_compat: bool = False,
        floater_start: str | Sequence[float] = "min_x",
        seed: int = 0,
        repair_meshes: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        device = check_device("device", "cpu" if device is None else device)
        check_option("morphing", morphing, MORPHINGS)
        if isinstance(common_mesh, str):
            check_option("common_mesh", common_mesh, ("middle",))
        elif isinstance(common_mesh, int) and not isinstance(common_mesh, bool):
            if common_mesh < 0:
                raise ValueError(f"`common_mesh` as an index must be >= 0, got {common_mesh}.")
        else:
            common_mesh = as_mesh(common_mesh, "common_mesh")
        mode_option("n_modes_geometry", n_modes_geometry)
        if isinstance(n_modes_fields, Sequence):
            for v in n_modes_fields:
                mode_option("n_modes_fields", v)
        else:
            mode_option("n_modes_fields", n_modes_fields)
        if isinstance(kernel, str):
            check_option("kernel", kernel, KERNELS)
        elif not callable(kernel):
            raise TypeError(f"`kernel` must be one of {KERNELS} or a callable (d, batch_shape) -> Kernel.")
        check_positive("restarts", restarts, integer=True, allow_zero=True)
        check_option("hyperparameters", hyperparameters, HYPERPARAMETERS)
        if isinstance(tail_energy, bool) or not isinstance(tail_energy, int | float):
            raise TypeError(f"`tail_energy` must be a float in [0, 1), got {tail_energy!r}.")
        if not 0.0 <= tail_energy < 1.0:
            raise ValueError(f"`tail_energy` must be in [0, 1), got {tail_energy!r}.")
        check_positive("max_iter", max_iter, integer=True)
        check_positive("seed", seed, integer=True, allow_zero=True)
        self.morphing = morphing
        self.common_mesh = common_mesh
        self.n_modes_geometry = n_modes_geometry
        self.n_modes_fields = list(n_modes_fields) if isinstance(n_modes_fields, Sequence) else n_modes_fields
        self.kernel = kernel
        self.hyperparameters = hyperparameters
        self.tail_energy = float(tail_energy)
        self.scalar_transform = check_scalar_transform(scalar_transform)
        self.truncation_variance = bool(truncation_variance)
        self.transfer_variance = bool(transfer_variance)
        self.geometry_variance = bool(geometry_variance)
        self.restarts = restarts
        self.max_iter = max_iter
        self.center = bool(center)
        self.ref_compat = bool(ref_compat)
        if isinstance(floater_start, str):
            check_option("floater_start", floater_start, ("min_x",))
        else:
            floater_start = [float(v) for v in as_float_array("floater_start", floater_start, ndim=1, shape=(2,))]
        self.floater_start = floater_start
        self.seed = seed
        self.repair_meshes = bool(repair_meshes)
        self.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------------------------
    @property
    def common_mesh_(self) -> Mesh:
        r"""The common mesh :math:`\mathcal{M}_c` in physical coordinates."""
        self._check_fitted()
        return self._transfer.common_mesh

    @property
    def common_morphed_(self) -> np.ndarray:
        r"""The morphed node positions of the common mesh, ``(N_c, 2)`` (Floater) or ``(N_c, d)`` (the others)."""
        self._check_fitted()
        return self._transfer.common_morphed

    @property
    def _mass(self) -> Any:
        r"""The P1 mass matrix of the common mesh (the POD inner product), scipy CSR ``(N_c, N_c)``."""
        return self._transfer.mass

    def _operators(self, mesh: Mesh, index: str) -> TransferOperators:
        r"""Morphing and P1 transfers of ``mesh`` (:class:`~gpgeom.models.mmgp.transfer.TransferOperators`)."""
        return self._transfer.operators(mesh, index)

    @property
    def gp(self) -> ExactGPModel | SurrogateList:
        r"""The BoTorch model of all ``sum(n_f) + q`` outputs (see the class docstring)."""
        self._check_fitted()
        if len(self.gps_) == 1:
            return self.gps_[0]
        if getattr(self, "_gp_list", None) is None:
            self._gp_list = SurrogateList(*self.gps_)
        return self._gp_list

    def _build_gps(self, Z: Tensor, Y: Tensor) -> list[ExactGPModel]:
        return [
            make_gp(Z, Y[:, a:b], self._bounds, self.kernel, sh)
            for (a, b), sh in zip(self.output_groups_, self._group_shared, strict=True)
        ]

    # ------------------------------------------------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------------------------------------------------
    def fit(
        self,
        meshes: Sequence[object],
        input_scalars: object,
        output_fields: object,
        output_scalars: object = None,
        *,
        field_names: Sequence[str] | None = None,
        scalar_names: Sequence[str] | None = None,
        progress: bool | None = None,
        executor: Executor | None = None,
    ) -> MMGP:
        r"""Morph, transfer, reduce and fit the GPs.

        Args:
            meshes: ``n`` meshes of one kind (2D triangle meshes, 3D triangle surfaces or tetrahedral meshes; see
                :func:`~gpgeom.models.mmgp.as_mesh`), :math:`N_i` nodes each.
            input_scalars: ``n x p`` (or ``None`` for ``p = 0``), numpy or torch.
            output_fields: ``n`` arrays ``N_i x m`` (or ``(N_i,)`` for one field, or dicts name -> ``(N_i,)``).
                The variances are squares in each field's units: a field's spread over the meshes must lie in
                about [2e-153, 8e152] (float64; float32: [2e-18, 1e18]; ValueError beyond, naming the field).
            output_scalars: ``n x q`` (or ``None``); the spread of each (of its log for a ``"log"`` scalar) over the
                meshes must lie in the range of the fields' (ValueError beyond, naming the scalar).
            field_names, scalar_names: Optional names (default: the keys of the first dict of ``output_fields``,
                or ``field0``, ... / ``scalar0``, ...); dicts of fields are read by name.
            progress: Progress bars of the GP fits (``None``: when a person is watching, :mod:`gpgeom._progress`).
            executor: A ``concurrent.futures.Executor`` (e.g. ``dask.distributed.Client(...).get_executor()`` or a
                ``ProcessPoolExecutor``; :mod:`gpgeom.engine.parallel`) for the independent stages: the morphing
                and transfers of the meshes, in chunks of consecutive meshes with the common mesh shipped once per
                worker, then the GP fits: one task per GP for ``"per_field"``, one per restart for a single GP.
                The fitted model equals the serial one (``None``); the ``morph`` and ``transfer`` timings then sum
                the workers' seconds.

        Returns:
            The model itself; the fit record is in ``fit_result_``.

        A fit that raises (bad input, a failed stage, ``KeyboardInterrupt``) leaves the model as it was before the
        call: unfitted, or the previous fit whole (not its POD bases with the new common mesh or GPs).
        """
        with self._kept_on_error():  # every attribute fit rebinds (it never changes the previous objects in place)
            return self._fit(
                meshes, input_scalars, output_fields, output_scalars, field_names, scalar_names, progress, executor
            )

    def _fit(
        self,
        meshes: Sequence[object],
        input_scalars: object,
        output_fields: object,
        output_scalars: object,
        field_names: Sequence[str] | None,
        scalar_names: Sequence[str] | None,
        progress: bool | None,
        executor: Executor | None,
    ) -> MMGP:
        check_executor(executor)
        progress = resolve_progress(progress)
        meshes = as_meshes(meshes)
        n = len(meshes)
        if n < 2:
            raise ValueError(f"MMGP needs at least 2 training meshes, got {n}.")
        check_family(meshes)
        if isinstance(self.common_mesh, Mesh):
            check_family(meshes, self.common_mesh)
        tkw = {"dtype": self.dtype, "device": self.device}
        mu = scalar_table("input_scalars", input_scalars, n, **tkw)
        field_names = mapping_field_names(output_fields) if field_names is None else field_names
        U = check_output_fields(output_fields, meshes, names=field_names)
        # the GP targets in float64 whatever the model's dtype: its GPs standardise them in float64 (ExactGPModel)
        t64 = {"dtype": torch.float32 if self.device.type == "mps" else torch.float64, "device": self.device}
        w = scalar_table("output_scalars", output_scalars, n, **t64)
        n_fields = U[0].shape[1]
        self.field_names_ = output_names("field_names", field_names, n_fields, "field")
        self.scalar_names_ = output_names("scalar_names", scalar_names, w.shape[1], "scalar")
        self.scalar_transforms_ = resolve_transforms(self.scalar_transform, w, self.scalar_names_)
        warn_zero_scalars(w, self.scalar_names_)
        scalars.check_scalar_spread(w, self.scalar_transforms_, self.scalar_names_, self.dtype)  # squares in dtype
        nmf = self.n_modes_fields if isinstance(self.n_modes_fields, list) else [self.n_modes_fields] * n_fields
        if len(nmf) != n_fields:
            raise ValueError(f"`n_modes_fields` has {len(nmf)} entries for {n_fields} fields.")
        timings = {k: np.zeros(2) for k in ("morph", "transfer", "pod", "gp")}

        if isinstance(self.common_mesh, Mesh):
            common = self.common_mesh
            self.common_index_ = None
        else:
            c = n // 2 if self.common_mesh == "middle" else int(self.common_mesh)
            if c >= n:
                raise ValueError(f"`common_mesh`={c} is not the index of a training mesh (n = {n}).")
            common = meshes[c]
            self.common_index_ = c
        t0 = clock()
        self._transfer = CommonMeshTransfer(self.morphing, self.floater_start, self.ref_compat, self.repair_meshes)
        self._transfer.set_common(common)
        common = self._transfer.common_mesh  # the repaired one, with repair_meshes=True
        timings["morph"] += clock() - t0
        Nc = common.n_points

        # transport geometry and fields to the common mesh (Eq. (2))
        X = np.empty((n, Nc, common.dim))
        F = np.empty((n, Nc, n_fields))
        num, den = np.zeros((Nc, n_fields)), np.zeros(Nc)  # the round-trip moments (roundtrip_moments)
        for i, (x, f, t_morph, t_transfer, nu, de) in enumerate(
            transport_training(self._transfer, meshes, U, executor, progress=progress)
        ):
            timings["morph"] += t_morph
            timings["transfer"] += t_transfer
            X[i], F[i] = x, f
            with np.errstate(over="ignore", invalid="ignore"):  # fields out of range: refused below
                num, den = num + nu, den + de

        # POD (Eq. (3)) of the geometry and of every field
        requests = [("n_modes_geometry", "", self.n_modes_geometry)]
        requests += [("n_modes_fields", f" (field {name!r})", k) for name, k in zip(self.field_names_, nmf)]
        for arg, what, k in requests:
            if isinstance(k, int) and k > n:  # SnapshotPOD refuses more modes than snapshots
                raise ValueError(
                    f"`{arg}`={k}{what} exceeds the number of training meshes ({n}): a POD of {n} snapshots has at "
                    f"most {n} modes ({n - 1} when centred). Pass a smaller int, or an energy fraction such as 0.999."
                )
        check_field_spread(F, self.field_names_, self.dtype)
        kappa, d0 = transfer_intensity(num, den, n)  # kappa d0 (N_c, m), the reference spread d0
        t0 = clock()
        center = self.center and not self.ref_compat
        self._geometry, xi = GeometryPOD.fit(X, common, self._mass, self.n_modes_geometry, center, self.ref_compat)

        def pod_fit(Xs: np.ndarray, k: int) -> GeometryPOD:
            return GeometryPOD.fit(Xs, common, self._mass, k, center, self.ref_compat)[0]

        # out-of-sample boundary residual energies of the training shapes (the OOD score's reference)
        self._residual, rho, rho_in = GeometryResidual.fit(X, common, self._geometry, pod_fit)
        rho_mean = float(self._residual.mean_energy[0])
        self._fields, coefs, own = [], [], []
        for k in range(n_fields):
            pod, a, ratio = FieldPOD.fit(F[:, :, k], self._mass, nmf[k], center, rho=rho, rho_mean=rho_mean, **tkw)
            pod.transfer_kappa = torch.as_tensor(np.ascontiguousarray(kappa[:, k]), **tkw)
            pod.transfer_spread = torch.tensor([d0], **tkw)
            self._fields.append(pod)
            coefs.append(torch.as_tensor(a, **t64))
            own.append(own_modes(ratio, pod.n_modes, self.tail_energy))
        self.n_modes_own_ = own if self.hyperparameters == "per_output" else [f.n_modes for f in self._fields]
        timings["pod"] = clock() - t0
        self.n_modes_geometry_ = self._geometry.n_modes
        self.n_modes_fields_ = [f.n_modes for f in self._fields]
        self.n_input_scalars_ = mu.shape[1]

        # GPs (Eq. (4))
        Z = torch.cat([torch.as_tensor(xi, **tkw), mu], dim=1)
        Y = torch.cat(coefs + [to_gp_units(w, self.scalar_transforms_)], dim=1)
        t0 = clock()
        self._set_training_data(Z, Y)
        gps = self._build_gps(Z, Y)
        options = {"restarts": self.restarts, "max_iter": self.max_iter, "seed": self.seed, "progress": progress}
        if len(gps) == 1:  # one GP: its restarts are the parallel tasks
            self.gps_ = [gps[0].fit(**options, executor=executor)]
        else:
            self.gps_ = fit_gps(gps, options, executor)
        # the GPs' noise was learned on the training shapes' own (in-sample) residuals: its reference is their mean
        self._noise_share = self._fit_noise_shares(rho_in)
        timings["gp"] = clock() - t0
        self.timings_, self.cpu_timings_ = split_clock(timings)
        self.fit_result_ = MMGPFitResult([g.fit_result_ for g in self.gps_], self.timings_, self.cpu_timings_)
        self._fitted = True
        return self

    def _fit_noise_shares(self, rho_in: np.ndarray) -> Tensor:
        r"""The geometric share of the learned noise of every field (its coefficients pooled) and output scalar:
        the leave-one-out squared residuals of its GP outputs regressed on the in-sample boundary residual energies
        ``rho_in`` ``(n,)`` of the training shapes, relative to the summed noise variances."""
        loo = torch.cat([loo_residuals(g) for g in self.gps_], 1).detach().cpu().double().numpy()
        noise = torch.cat([noise_variances(g) for g in self.gps_]).detach().cpu().double().numpy()
        owner = self._owners()
        mean = float(self._residual.noise_reference[0])
        shares = []
        for k in range(len(self._fields) + len(self.scalar_names_)):
            cols = owner == k
            shares.append(geometry_share((loo[:, cols] ** 2).sum(1), rho_in, mean, float(noise[cols].sum())))
        return torch.tensor(shares, dtype=self.dtype, device=self.device)

    def _owners(self) -> np.ndarray:
        r"""The field (``0 .. m-1``) or scalar (``m .. m+q-1``) of every GP output, ``(sum n_f + q,)``."""
        m, q = len(self._fields), len(self.scalar_names_)
        return np.concatenate([np.repeat(np.arange(m), self.n_modes_fields_), np.arange(m, m + q)])

    @property
    def truncation_share_(self) -> Tensor:
        r"""The geometric shares :math:`s` of the fields' truncation variances, ``(m,)``."""
        self._check_fitted()
        return torch.cat([f.geometry_share for f in self._fields])

    @property
    def noise_share_(self) -> Tensor:
        r"""The geometric shares of the learned noise, fields (coefficients pooled) then scalars, ``(m + q,)``."""
        self._check_fitted()
        return self._noise_share

    @property
    def train_ood_score_(self) -> Tensor:
        r"""The out-of-sample scores :math:`g_i = \rho_i / \bar\rho` of the training shapes, ``(n,)``."""
        self._check_fitted()
        return torch.as_tensor(self._residual.train_scores, dtype=self.dtype, device=self.device)

    def _set_training_data(self, Z: Tensor, Y: Tensor) -> None:
        lo, hi = Z.min(0).values, Z.max(0).values
        hi = torch.where(hi > lo, hi, lo + 1.0)
        self._bounds = torch.stack([lo, hi])
        self.train_latent_ = Z
        self.train_targets_ = Y
        self._gp_list = None
        self.output_groups_, self._group_shared = gp_groups(
            self.n_modes_fields_, len(self.scalar_names_), self.hyperparameters, self.n_modes_own_
        )

    # ------------------------------------------------------------------------------------------------------------
    # the latent space
    # ------------------------------------------------------------------------------------------------------------
    @property
    def n_latent(self) -> int:
        r"""Input dimension of :attr:`gp`: ``n_g + p``."""
        self._check_fitted()
        return self.n_modes_geometry_ + self.n_input_scalars_

    @property
    def n_outputs(self) -> int:
        r"""Number of outputs of :attr:`gp`: ``sum(n_f) + q``."""
        self._check_fitted()
        return sum(self.n_modes_fields_) + len(self.scalar_names_)

    @property
    def latent_bounds(self) -> Tensor:
        r"""``2 x d`` box of the training latent inputs (columns min / max), e.g. the bounds of ``optimize_acqf``; a
        column constant over the training set, value ``c``, gets ``[c, c + 1]`` (fix it, e.g. ``fixed_features``)."""
        self._check_fitted()
        return self._bounds.clone()

    def output_index(self, name: str) -> int:
        r"""Column of output scalar ``name`` among the ``sum(n_f) + q`` outputs of :attr:`gp`."""
        self._check_fitted()
        check_option("name", name, self.scalar_names_)
        return sum(self.n_modes_fields_) + self.scalar_names_.index(name)

    def output_gp(self, output: str | int) -> ExactGPModel:
        r"""A single-output BoTorch model of one output of :attr:`gp` (an output scalar name or a column index),
        with that output's fitted hyperparameters and the same latent inputs (``d = n_g + p``, original units).

        Use it as the surrogate of a shape optimisation (e.g. ``qLogNoisyExpectedImprovement`` on ``"max_vm"``).
        A scalar of ``scalar_transforms_`` ``"log"`` is modelled as :math:`\log w` (monotone: the same optimum).
        """
        self._check_fitted()
        m = self.n_outputs
        if isinstance(output, bool) or not isinstance(output, str | int | np.integer):
            raise TypeError(f"`output` must be an output scalar name or an int column index, got {output!r}.")
        j = (
            self.output_index(check_option("output", output, self.scalar_names_))
            if isinstance(output, str)
            else int(output)
        )
        if not 0 <= j < m:
            raise ValueError(f"`output` index must be in range({m}), got {output!r}.")
        g = next(k for k, (a, b) in enumerate(self.output_groups_) if a <= j < b)
        Y = self.train_targets_[:, j : j + 1]
        jj = j - self.output_groups_[g][0]
        return single_output_gp(self.gps_[g], jj, self.train_latent_, Y, self._bounds, self.kernel)

    def encode(
        self,
        meshes: Sequence[object],
        input_scalars: object = None,
        *,
        executor: Executor | None = None,
        progress: bool | None = None,
    ) -> Tensor:
        r"""Latent GP inputs :math:`z = (\xi, \mu)` of meshes, ``n x (n_g + p)`` (``executor``: the morphing and
        transfers of the meshes run there, as in :meth:`fit`; ``progress``: a bar over the meshes, cleared when done,
        as in :meth:`predict`)."""
        self._check_fitted()
        check_executor(executor)
        progress = resolve_progress(progress)
        meshes = as_meshes(meshes)
        check_family(meshes, self.common_mesh_)
        mu = self._input_scalars(input_scalars, len(meshes))
        geo = self._geometry
        xi = [
            geo.encoder @ (x - geo.mean) for x, *_ in transport_new(self._transfer, meshes, executor, progress=progress)
        ]
        return torch.cat([self._latent_geometry(xi), mu], dim=1)

    def encode_targets(
        self,
        meshes: Sequence[object],
        output_fields: object,
        output_scalars: object = None,
        *,
        executor: Executor | None = None,
        progress: bool | None = None,
    ) -> Tensor:
        r"""The outputs of :attr:`gp` for known fields and scalars on meshes: the field POD coefficients
        :math:`a^{(f)} = \Phi_f M (P_i U_i^{(f)} - \bar u^{(f)})`, field by field, then the output scalars
        (:math:`\log w` for those of ``scalar_transforms_`` ``"log"``), ``n x (sum(n_f) + q)`` (e.g. held-out
        targets of the GP for data that were not used in the fit; ``executor`` as in :meth:`fit`; ``progress``: a
        bar over the meshes, cleared when done, as in :meth:`predict`)."""
        self._check_fitted()
        check_executor(executor)
        progress = resolve_progress(progress)
        meshes = as_meshes(meshes)
        check_family(meshes, self.common_mesh_)
        n = len(meshes)
        U = check_output_fields(output_fields, meshes, names=self.field_names_)
        if not U:  # no mesh: no row, as encode gives
            return torch.zeros(0, self.n_outputs, dtype=self.dtype, device=self.device)
        if U[0].shape[1] != len(self._fields):
            raise ValueError(f"`output_fields` must have {len(self._fields)} field(s), got {U[0].shape[1]}.")
        w = scalar_table("output_scalars", output_scalars, n, dtype=self.dtype, device=self.device)
        if w.shape[1] != len(self.scalar_names_):
            raise ValueError(f"`output_scalars` must have {len(self.scalar_names_)} column(s), got {w.shape[1]}.")
        moved = transport_training(self._transfer, meshes, U, executor, moments=False, progress=progress)
        F = np.stack([f for _, f, *_ in moved])
        coefs = [f.project(F[:, :, k], self._mass) for k, f in enumerate(self._fields)]
        w = to_gp_units(w, self.scalar_transforms_, self.scalar_names_)
        return torch.cat([torch.as_tensor(np.concatenate(coefs, 1), dtype=self.dtype, device=self.device), w], 1)

    def project_fields(self, meshes: Sequence[object], output_fields: object) -> list[Tensor]:
        r"""The known fields of meshes as the retained POD modes represent them, on each mesh's original nodes:
        :math:`Q_i\,(\bar u^{(f)} + \Phi_f^\top a^{(f)})` with the exact coefficients :math:`a^{(f)} = \Phi_f M
        (P_i U_i^{(f)} - \bar u^{(f)})` (:meth:`encode_targets`). The best prediction any regression of the
        coefficients can give: comparing it with the fields separates the POD truncation (and transfer) error from
        the GP's (``benchmarks/results/mmgp.md``).

        Args:
            meshes: ``n`` meshes.
            output_fields: ``n`` arrays ``N_i x m``, as in :meth:`fit`.

        Returns:
            ``n`` tensors ``N_i x m`` of the model's dtype on its device.
        """
        self._check_fitted()
        meshes = as_meshes(meshes)
        check_family(meshes, self.common_mesh_)
        U = check_output_fields(output_fields, meshes, names=self.field_names_)
        if not U:
            return []
        if U[0].shape[1] != len(self._fields):
            raise ValueError(f"`output_fields` must have {len(self._fields)} field(s), got {U[0].shape[1]}.")
        tkw = {"dtype": self.dtype, "device": self.device}
        out = []
        for ops, u in zip((self._operators(m, f"meshes[{i}]") for i, m in enumerate(meshes)), U, strict=True):
            F = np.asarray(ops.proj @ u)  # N_c x m
            a = np.concatenate([f.project(F[None, :, k], self._mass)[0] for k, f in enumerate(self._fields)])
            Q = sparse_to_torch(ops.inv_proj, **tkw)
            out.append(decode_fields(Q, self._fields, torch.as_tensor(a, **tkw), None, truncation=False)[0])
        return out

    def decode_geometry(self, latent: object, *, as_mesh: bool = True) -> list[Mesh] | Tensor:
        r"""Shapes of latent geometry coordinates: the common mesh with its nodes at :math:`\bar X + \Phi_g^\top \xi`.

        Args:
            latent: ``k x n_g`` geometry coefficients, or ``k x (n_g + p)`` latent inputs of :attr:`gp` (the scalar
                columns are ignored); a single ``(n_g,)`` / ``(n_g + p,)`` vector is accepted (numpy or torch).
            as_mesh: Return meshes (common-mesh connectivity) instead of node positions.

        Returns:
            ``k`` :class:`~gpgeom.geometry.mesh.Mesh` objects, or the node positions ``k x N_c x d`` (``d`` the space
            dimension of the common mesh; a tensor of the model's dtype on its device).
        """
        self._check_fitted()
        z = as_tensor("latent", latent, dtype=torch.float64, device="cpu", ndim=(1, 2)).detach()
        z = z[None] if z.dim() == 1 else z
        ng = self.n_modes_geometry_
        if z.shape[1] not in (ng, self.n_latent):
            raise ValueError(f"`latent` must be (k, {ng}) or (k, {self.n_latent}), got shape {tuple(z.shape)}.")
        pos = self._geometry.decode(z[:, :ng].numpy(), self.common_mesh_.dim)
        if not as_mesh:
            return torch.as_tensor(pos, dtype=self.dtype, device=self.device)
        return [Mesh(p, self.common_mesh_.cells) for p in pos]

    def _input_scalars(self, input_scalars: object, n: int) -> Tensor:
        mu = scalar_table("input_scalars", input_scalars, n, dtype=self.dtype, device=self.device)
        if mu.shape[1] != self.n_input_scalars_:
            raise ValueError(f"`input_scalars` must have {self.n_input_scalars_} column(s), got {mu.shape[1]}.")
        return mu

    def _latent_geometry(self, xi: list[np.ndarray]) -> Tensor:
        arr = np.stack(xi) if xi else np.zeros((0, self.n_modes_geometry_))
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------------------------------------------------
    # predict
    # ------------------------------------------------------------------------------------------------------------
    def predict(
        self,
        meshes: Sequence[object],
        input_scalars: object = None,
        *,
        return_std: bool = False,
        n_samples: int = 0,
        observation_noise: bool = True,
        executor: Executor | None = None,
        progress: bool | None = None,
    ) -> MMGPPrediction:
        r"""Predict the fields on the original nodes of new meshes, and the output scalars.

        Args:
            meshes: ``n`` meshes (any node count / connectivity that the morphing accepts).
            input_scalars: ``n x p`` (numpy or torch).
            return_std: Also return the exact predictive standard deviations (fields: :math:`\sqrt{\sum_k A_{jk}^2
                (s_k^2 + \lambda_n \sigma_k^2) + \lambda_t (Q r)_j + w_j (Q \kappa)_j}` per node, the last term the
                round-trip transfer error's, :mod:`~gpgeom.models.mmgp.roundtrip`; see :mod:`gpgeom.models.mmgp`).
            n_samples: Number ``S`` of Monte Carlo draws of the coefficients and scalars to decode (0 = none).
            observation_noise: Include the GPs' learned noise :math:`\sigma_k^2` (scaled by the geometry factor
                :math:`\lambda_n` with ``geometry_variance``) in the coefficient and scalar variances (default): the
                variation of a new mesh's outputs that the latent inputs do not explain, which the training data show
                (the FE data have no measurement noise; the "noise" is that variation). ``False`` gives the latent
                GP variance of the coefficients and scalars, as the reference code.
            executor: A ``concurrent.futures.Executor`` for the morphing and transfers of the meshes (in chunks,
                the common mesh shipped once per worker; :meth:`fit`); the GP and the decode run here. The same
                prediction as the serial run (``None``); the ``morph`` / ``transfer`` timings sum the workers'.
            progress: A bar over the meshes' morphing and transfers, cleared when done (``None``: when a person is
                watching, :mod:`gpgeom._progress`).

        Returns:
            An :class:`~gpgeom.models.mmgp.MMGPPrediction` of tensors of the model's dtype on its device, with the
            out-of-distribution score of every mesh; with ``return_std`` the scalars' exact predictive intervals and
            distributions (:meth:`MMGPPrediction.scalar_interval <gpgeom.models.mmgp.MMGPPrediction.scalar_interval>`).
        """
        self._check_fitted()
        check_executor(executor)
        progress = resolve_progress(progress)
        check_positive("n_samples", n_samples, integer=True, allow_zero=True)
        meshes = as_meshes(meshes)
        check_family(meshes, self.common_mesh_)
        n = len(meshes)
        mu = self._input_scalars(input_scalars, n)
        tm = {k: np.zeros(2) for k in ("morph", "transfer", "gp", "decode")}
        want_std = return_std or n_samples > 0
        transfer = want_std and self.transfer_variance and all(f.transfer_spread is not None for f in self._fields)
        Qs, X, spreads = [], [], []
        for x, inv_proj, t_morph, t_transfer, w in transport_new(
            self._transfer, meshes, executor, inverse=True, spreads=transfer, progress=progress
        ):
            tm["morph"] += t_morph
            tm["transfer"] += t_transfer
            Qs.append(inv_proj)
            X.append(x)
            spreads.append(w)
        xi, score = self._encode_transported(X)
        Z = torch.cat([xi, mu], dim=1)
        t0 = clock()
        gp_std = want_std or "log" in self.scalar_transforms_  # a log-normal mean needs the variance
        out = self.gp.predict(Z, return_std=gp_std)
        mean, std = out if gp_std else (out, None)
        tkw = {"dtype": self.dtype, "device": self.device}
        nf, q, m = sum(self.n_modes_fields_), len(self.scalar_names_), len(self._fields)
        lam = None  # n x m: the geometry factors of the truncation variances
        if self.geometry_variance:
            lam = variance_factor(self.truncation_share_, score)
        if gp_std and observation_noise:
            noise = torch.cat([noise_variances(g) for g in self.gps_]).to(**tkw)
            scale = 1.0
            if self.geometry_variance:  # relative to the training shapes' in-sample residual energy
                ratio = float(self._residual.mean_energy[0] / self._residual.noise_reference[0])
                scale = variance_factor(self._noise_share, score * ratio)[:, self._owners().tolist()]
            std = (std.square() + scale * noise).sqrt()
        tm["gp"] = clock() - t0

        t0 = clock()
        gen = torch.Generator().manual_seed(int(self.seed) + 7919)
        eps = torch.randn(n_samples, n, mean.shape[1], generator=gen, dtype=torch.float64).to(**tkw)
        # the transfer noise has its own stream: the other draws stay those of a model without it
        gen_t = torch.Generator().manual_seed(int(self.seed) + 104729)
        if transfer:
            kappa = torch.stack([f.transfer_kappa for f in self._fields], -1)  # kappa d0, N_c x m
            d0 = float(self._fields[0].transfer_spread[0])
        fields, fields_std, fsamp = [], [], []
        for i, inv_proj in enumerate(Qs):
            Q = sparse_to_torch(inv_proj, **tkw)
            noise = g = tvar = tnoise = None
            if n_samples and self.truncation_variance:  # spatially correlated (truncation_draws)
                noise, g = truncation_noise(gen, n_samples, Q.shape[0], self._fields, **tkw)
            if transfer:
                rel = spreads[i] / d0  # w / d0, in float64
                tvar = roundtrip_variance(Q, kappa, torch.as_tensor(rel, **tkw))
                if n_samples:
                    shape = (n_samples, Q.shape[0], m)
                    tnoise = torch.randn(*shape, generator=gen_t, dtype=torch.float64).to(**tkw)
            U, sd, draws = decode_fields(
                Q, self._fields, mean[i, :nf], std[i, :nf] if want_std else None,
                truncation=self.truncation_variance, eps=eps[:, i, :nf] if n_samples else None, noise=noise,
                trunc_scale=lam[i, :m] if lam is not None else None, trunc_eps=g, transfer_var=tvar,
                transfer_noise=tnoise,
            )  # fmt: skip
            fields.append(U)
            fields_std.append(sd)
            fsamp.append(draws)
        tm["decode"] = clock() - t0
        sl = slice(nf, nf + q)
        var = std[:, sl].square() if gp_std else torch.zeros_like(mean[:, sl])
        wall, cpu = split_clock(tm)
        return MMGPPrediction(
            fields=fields,
            fields_std=fields_std if return_std else None,
            field_samples=fsamp if n_samples else None,
            **scalar_prediction(mean[:, sl], var, self.scalar_transforms_, eps[:, :, sl], return_std=return_std),
            latent=Z,
            ood_score=score,
            timings=wall,
            cpu_timings=cpu,
        )

    def _encode_transported(self, X: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        r"""Geometry coordinates :math:`\xi` ``n x n_g`` and OOD scores ``(n,)`` of transported coordinates."""
        if not X:
            empty = torch.zeros(0, dtype=self.dtype, device=self.device)
            return empty.reshape(0, self.n_modes_geometry_), empty
        Xa = np.stack(X)
        xi = (Xa - self._geometry.mean) @ self._geometry.encoder.T
        score = self._residual.score(self._geometry.residual(Xa).reshape(len(Xa), -1, self.common_mesh_.dim))
        return self._latent_geometry(list(xi)), torch.as_tensor(score, dtype=self.dtype, device=self.device)

    def ood_score(
        self, meshes: Sequence[object], *, executor: Executor | None = None, progress: bool | None = None
    ) -> Tensor:
        r"""The out-of-distribution score of every mesh, ``(n,)``: the boundary energy of its geometry POD residual
        relative to the mean out-of-sample value of the training shapes, :math:`g = \rho / \bar\rho`
        (:mod:`~gpgeom.models.mmgp.unexplained`). About 1 for shapes of the training family (compare with
        :attr:`train_ood_score_`); well above it for shapes the geometry modes cannot represent. Also returned by
        :meth:`predict` (``ood_score``); ``executor`` and ``progress`` as in :meth:`predict`."""
        self._check_fitted()
        check_executor(executor)
        progress = resolve_progress(progress)
        meshes = as_meshes(meshes)
        check_family(meshes, self.common_mesh_)
        X = [x for x, *_ in transport_new(self._transfer, meshes, executor, progress=progress)]
        return self._encode_transported(X)[1]

    # ------------------------------------------------------------------------------------------------------------
    # the model contract: devices, files, repr
    # ------------------------------------------------------------------------------------------------------------
    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        r"""Move the GP stage and the decode operators (field POD means, modes, truncation variances); the geometry
        preprocessing stays on the CPU in float64."""
        super()._to(device=device, dtype=dtype)
        if not hasattr(self, "gps_"):
            return
        for g in self.gps_:
            g.to(device=device, dtype=dtype)
        self._fields = [f.to(device=device, dtype=dtype) for f in self._fields]
        self._noise_share = self._noise_share.to(device=device, dtype=dtype)
        self._bounds = self._bounds.to(device=device, dtype=dtype)
        self.train_latent_ = self.train_latent_.to(device=device, dtype=dtype)
        # float64 targets stay float64 (fit: the GPs standardise them in float64)
        keep = self.train_targets_.dtype == torch.float64
        self.train_targets_ = self.train_targets_.to(device=device, dtype=torch.float64 if keep else dtype)
        self._gp_list = None

    def _config(self) -> dict[str, Any]:
        return model_config(self)

    def _get_state(self) -> dict[str, Any]:
        return model_state(self)

    @classmethod
    def _from_state(cls, state: dict[str, Any], kernel: Callable[[int, torch.Size], Kernel] | None = None) -> MMGP:
        r"""Rebuild from :meth:`_get_state` (:func:`~gpgeom.models.mmgp.state.restore_model`); a model fitted with a
        custom kernel callable needs it again (``MMGP.load(path, kernel=...)``), as no file can hold code safely."""
        return restore_model(cls, state, kernel)

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"morphing": self.morphing}
        if self.is_fitted:
            fields["n_train"] = int(self.train_latent_.shape[0])
            fields["common_nodes"] = self.common_mesh_.n_points
            fields["n_modes_geometry"] = self.n_modes_geometry_
            fields["n_modes_fields"] = list(self.n_modes_fields_)
            if self.n_modes_own_ != self.n_modes_fields_:
                fields["n_modes_own"] = list(self.n_modes_own_)
            fields["n_latent"] = self.n_latent
            fields["fields"] = list(self.field_names_)
            fields["scalars"] = list(self.scalar_names_)
            if "log" in self.scalar_transforms_:
                fields["scalar_transforms"] = list(self.scalar_transforms_)
        else:
            fields["n_modes_geometry"] = self.n_modes_geometry
            fields["n_modes_fields"] = self.n_modes_fields
        fields["kernel"] = "custom" if callable(self.kernel) else self.kernel
        fields["hyperparameters"] = self.hyperparameters
        if self.is_fitted:
            fields["n_gps"] = len(self.gps_)
            noise = [g.likelihood.noise.detach().reshape(-1) for g in self.gps_]
            fields["noise_range"] = [float(min(t.min() for t in noise)), float(max(t.max() for t in noise))]
            fields["truncation_share"] = [round(float(v), 3) for v in self.truncation_share_]
            fields["noise_share"] = [round(float(v), 3) for v in self.noise_share_]
        fields["dtype"] = self.dtype
        if self.device.type != "cpu":
            fields["device"] = str(self.device)
        return fields
