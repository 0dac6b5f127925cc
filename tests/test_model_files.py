r"""The one model-file format (gpgeom._io): what a file that is not a model file gives on load."""

from __future__ import annotations

import pytest
import torch

import gpgeom
from gpgeom.errors import ModelFileError
from gpgeom.models.trajectory import SO3xR3Trajectory


def _model(tmp_path):
    r"""A small model file (a trajectory with set knots: no fit needed) and its model."""
    traj = SO3xR3Trajectory(torch.linspace(0.0, 1.0, 4, dtype=torch.float64))
    traj.set_knots(p=torch.arange(12, dtype=torch.float64).reshape(4, 3))
    path = tmp_path / "traj.pt"
    traj.save(path)
    return path, traj


@pytest.mark.parametrize(
    "blob",
    [
        {"gpgeom_model": "SO3xR3Trajectory", "state": {}},  # a header that is not a dict
        {"gpgeom_model": {"format_version": 1}, "state": {}},  # no class
        {"gpgeom_model": {"class": 3, "format_version": 1}, "state": {}},  # a class that is not a name
        {"gpgeom_model": {"class": "SO3xR3Trajectory", "format_version": 1}},  # no state
    ],
)
def test_a_malformed_header_is_not_a_model_file(tmp_path, blob):
    r"""A file with the header key but a malformed header raised ``AttributeError: 'str' object has no attribute
    'get'``, ``TypeError: attribute name must be string, not 'NoneType'`` (no class) or ``KeyError: 'state'``; it
    is a ModelFileError naming the file and what it holds, from the class's ``load`` and from :func:`gpgeom.load`
    alike."""
    path = tmp_path / "bad.pt"
    torch.save(blob, path)
    for load in (SO3xR3Trajectory.load, gpgeom.load):
        with pytest.raises(ModelFileError, match=r"bad\.pt' is not a gpgeom model file: its 'gpgeom_model' header"):
            load(path)


def test_truncated_and_foreign_files_are_not_model_files(tmp_path):
    r"""A file cut short (an interrupted copy) or of another format raises ModelFileError, not an unpickling error;
    the intact file loads with the saved predictions, bitwise."""
    path, traj = _model(tmp_path)
    data = path.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 2]), ("text.pt", b"not a model")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=rf"{name}' is not a gpgeom model file"):
            gpgeom.load(tmp_path / name)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    back = gpgeom.load(path, map_location="cpu")
    assert type(back) is SO3xR3Trajectory and back.dtype == torch.float64
    assert torch.equal(back.predict(t).p, traj.predict(t).p) and torch.equal(back.predict(t).R, traj.predict(t).R)
