import numpy as np
import pytest
import torch

from gpgeom._validation import check_increasing, check_option, check_positive, check_tensor


def test_check_tensor_accepts_good_input():
    x = torch.randn(4, 3, dtype=torch.float64)
    assert check_tensor("x", x, ndim=2, shape=(None, 3), floating=True) is x


@pytest.mark.parametrize(
    "value, kwargs, error, match",
    [
        ([1.0, 2.0], {}, TypeError, r"`x` must be a torch.Tensor, got list"),
        (torch.zeros(3), {"ndim": 2}, ValueError, r"`x` must have 2 dimensions, got shape \(3,\)"),
        (torch.zeros(3, 2), {"shape": (None, 3)}, ValueError, r"trailing shape \(\*, 3\), got shape \(3, 2\)"),
        (torch.tensor([1.0, float("nan")]), {}, ValueError, r"`x` contains 1 NaN or infinite"),
        (torch.tensor([1, 2]), {"floating": True}, TypeError, r"floating-point tensor, got dtype torch.int64"),
    ],
)
def test_check_tensor_errors_name_argument_and_form(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_tensor("x", value, **kwargs)


def test_check_option():
    assert check_option("kind", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"Unknown `kind`='c'; expected one of 'a', 'b'"):
        check_option("kind", "c", ("a", "b"))


def test_check_increasing():
    t = torch.sort(torch.rand(10, dtype=torch.float64)).values
    check_increasing("t", t)
    t[5] = t[4]
    with pytest.raises(ValueError, match=r"`t` must be strictly increasing.*entry 5"):
        check_increasing("t", t)
    check_increasing("t", t, strict=False)


def test_check_positive():
    check_positive("n", 3, integer=True)
    with pytest.raises(TypeError, match="`n` must be an int"):
        check_positive("n", 3.0, integer=True)
    with pytest.raises(ValueError, match=r"`n` must be > 0, got 0"):
        check_positive("n", 0)
    check_positive("n", 0, allow_zero=True)
    check_positive("radius", np.float32(0.5))  # numpy scalars are numbers
    check_positive("n", np.int64(3), integer=True)
    for allow_zero in (False, True):  # NaN compares false with everything: it used to pass both tests
        with pytest.raises(ValueError, match=r"`radius` must be >=? 0, got nan"):
            check_positive("radius", float("nan"), allow_zero=allow_zero)
    with pytest.raises(TypeError, match="`n` must be an int"):
        check_positive("n", np.float64(3.0), integer=True)


def test_nan_options_are_refused_where_they_used_to_give_nan_results():
    from gpgeom.geometry.connection import graph_laplacian
    from gpgeom.geometry.morphing import RBFMorphing

    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="`radius` must be > 0, got nan"):
        RBFMorphing(src, src + 0.1, radius=float("nan"))
    points = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="`eps` must be > 0, got nan"):
        graph_laplacian(points, 5, weights="gaussian", eps=float("nan"))
