"""Fixtures of the CLI error-path tests (test_user_errors.py, test_hostile_input.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import Volume, save_volume
from medrecon.phantoms import shepp_logan_3d
from tests.cli_assert import SIM


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of inputs: ref.nii.gz (MR, 12 x 12 x 8 at 2 mm), ct.nii.gz (the same as CT in
    HU), m.h5 (ref's MR measurement, simulated with :data:`SIM`) and notes.txt (a file where
    a folder may be expected)."""
    d = tmp_path_factory.mktemp("study")
    data = shepp_logan_3d((12, 12, 8)).astype(np.float32)
    save_volume(Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), d / "ref.nii.gz")
    save_volume(Volume(1000 * data - 1000, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT",
                       units="HU"), d / "ct.nii.gz")
    r = CliRunner().invoke(app, ["simulate", str(d / "ref.nii.gz"), str(d / "m.h5"), *SIM])
    assert r.exit_code == 0, r.output
    (d / "notes.txt").write_text("not a folder")
    return d
