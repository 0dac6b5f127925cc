#!/usr/bin/env python3
r"""Forward-mode AD of the Lie maps on unbatched float32 arguments.

torch's forward AD gives the tangent of a 0-dim tensor times a Python float in float64 (pytorch/pytorch#90065): the
scalars of an unbatched argument (``|theta|^2``, a quaternion's ``w``) are 0-dim, so ``torch.func.jacfwd`` of
``so3_exp`` at a float32 3-vector returned a float64 Jacobian, and the SE(3) maps (whose float64 tangent met a float32
matrix in a matmul) raised "expected m1 and m2 to have the same dtype". The truth: the float64 Jacobian.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd

import gpgeom.geometry.lie as L


def _args(name: str):
    g = torch.Generator().manual_seed(7)
    x3, v, w, z = (0.4 * torch.randn(3, dtype=torch.float64, generator=g) for _ in range(4))
    x6 = 0.4 * torch.randn(6, dtype=torch.float64, generator=g)
    table = {
        "so3_exp": (x3,),
        "so3_jr": (x3,),
        "so3_jl": (x3,),
        "so3_jr_inv": (x3,),
        "so3_jl_inv": (x3,),
        "so3_jr_dtheta": (x3, v),
        "so3_jr_inv_dtheta": (x3, v),
        "so3_jr_dtheta2": (x3, v, w),
        "so3_jr_dtheta_dv": (x3, v, w),
        "so3_jr_inv_dtheta2": (x3, v, w),
        "so3_jr_inv_dtheta_dv": (x3, v, w),
        "so3_jr_dtheta3": (x3, v, w, z),
        "so3_jr_dtheta2_dv": (x3, v, w, z),
        "so3_log": (L.so3_exp(x3),),
        "rotmat_to_quat": (L.so3_exp(x3),),
        "se3_exp": (x6,),
        "se3_log": (L.se3_exp(x6),),
        "se3_jl": (x6,),
        "se3_jr": (x6,),
        "se3_jl_inv": (x6,),
        "se3_jr_inv": (x6,),
        "se3_jr_dxi": (x6, x6.flip(0)),
    }
    return table[name]


@pytest.mark.parametrize(
    "name",
    [
        "so3_exp", "so3_jr", "so3_jl", "so3_jr_inv", "so3_jl_inv", "so3_jr_dtheta", "so3_jr_inv_dtheta",
        "so3_jr_dtheta2", "so3_jr_dtheta_dv", "so3_jr_inv_dtheta2", "so3_jr_inv_dtheta_dv", "so3_jr_dtheta3",
        "so3_jr_dtheta2_dv", "so3_log", "rotmat_to_quat", "se3_exp", "se3_log", "se3_jl", "se3_jr", "se3_jl_inv",
        "se3_jr_inv", "se3_jr_dxi",
    ],
)  # fmt: skip
def test_jacfwd_of_unbatched_float32_is_float32_and_matches_float64(name):
    fn = getattr(L, name)
    kw = {"validate": False} if name in ("so3_log", "rotmat_to_quat", "se3_log") else {}
    a64 = _args(name)
    a32 = tuple(a.float() for a in a64)

    def f(x, args):
        return fn(x, *args[1:], **kw)

    J32 = jacfwd(f)(a32[0], a32)
    J64 = jacfwd(f)(a64[0], a64)
    assert J32.dtype == torch.float32
    assert float((J32.double() - J64).abs().max()) < 1e-4 * max(1.0, float(J64.abs().max()))
    # the value too, and the batched map at one row (unchanged path) agrees with the unbatched one
    y32 = fn(*a32, **kw)
    assert y32.dtype == torch.float32 and y32.shape == fn(*a64, **kw).shape
    yb = fn(*(a.unsqueeze(0) for a in a32), **kw)[0]
    assert torch.equal(y32, yb)


def test_jacfwd_of_a_matrix_product_with_an_unbatched_float32_rotation():
    # the pattern of a user factor: a float32 state times so3_exp of one perturbation
    R = L.so3_exp(torch.tensor([[0.3, -0.2, 0.5]]))
    J = jacfwd(lambda d: R @ L.so3_exp(d))(torch.zeros(3))
    J64 = jacfwd(lambda d: R.double() @ L.so3_exp(d))(torch.zeros(3, dtype=torch.float64))
    assert J.dtype == torch.float32 and float((J.double() - J64).abs().max()) < 1e-6


def test_mixed_unbatched_and_batched_arguments_keep_the_batch():
    theta = torch.tensor([0.3, -0.2, 0.5])
    v = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    out = L.so3_jr_dtheta(theta, v)
    ref = L.so3_jr_dtheta(theta.double().expand(4, 3), v.double())
    assert out.shape == ref.shape and float((out.double() - ref).abs().max()) < 1e-6
    J = jacfwd(lambda t: L.so3_jr_dtheta(t, v))(theta)
    assert J.dtype == torch.float32
