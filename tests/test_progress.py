"""Progress bars (issue 15): drawn on a terminal, silent in logs, one rule for every solver."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medrecon import solvers
from medrecon.progress import progress_bar, shows_progress

NAMES = ("CG", "FISTA", "PDHG", "SIRT", "CGLS")


class _Terminal(io.StringIO):
    """A standard-error stand-in that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _run_every_solver() -> None:
    """Three iterations of each solver with ``progress=True`` on a small least-squares problem."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 4, generator=g, dtype=torch.float64)  # nonnegative, as SIRT wants
    y = torch.rand(6, generator=g, dtype=torch.float64)
    x0 = torch.zeros(4, dtype=torch.float64)

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return a @ x

    def adj(r: torch.Tensor) -> torch.Tensor:
        return a.T @ r

    solvers.conjugate_gradient(lambda x: adj(fwd(x)), adj(y), max_iter=3, tol=0.0,
                               progress=True)
    solvers.fista(lambda x: adj(fwd(x) - y), lambda v, s: v, x0, step=0.05, max_iter=3,
                  tol=0.0, progress=True)
    # f(Kx) = ||Kx - y||^2 / 2: prox of sigma f* is (v - sigma y) / (1 + sigma)
    solvers.pdhg(fwd, adj, lambda v, s: (v - s * y) / (1 + s), lambda v, s: v, x0, tau=0.1,
                 sigma=0.1, max_iter=3, tol=0.0, progress=True)
    solvers.sirt(fwd, adj, y, x0, max_iter=3, progress=True)
    solvers.cgls(fwd, adj, y, x0, max_iter=3, tol=0.0, progress=True)


def test_solver_bars_are_drawn_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    _run_every_solver()
    for name in NAMES:
        assert f"{name}:" in err.getvalue(), name


def test_solver_bars_are_silent_in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()  # a log file or a pipe: not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    _run_every_solver()
    assert err.getvalue() == ""


def test_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert shows_progress(True) and not shows_progress(False)
    with progress_bar(3, "x") as shown, progress_bar(3, "x", requested=False) as unasked:
        assert not shown.disable and unasked.disable
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not shows_progress(True)
    with progress_bar(3, "x") as in_log:
        assert in_log.disable
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, daemons: no stream at all
    assert not shows_progress(True)


def test_reconstruct_cli_writes_no_solver_bar_into_a_log(tmp_path: Path) -> None:
    """``medrecon reconstruct`` asks for bars by default; in a log (CliRunner's stderr is not a
    terminal) CG-SENSE, FISTA (L1-wavelet) and PDHG (TV) draw none."""
    from medrecon.cli.main import app
    from medrecon.io import Volume
    from medrecon.io.measurement import write_measurement
    from medrecon.phantoms import shepp_logan_3d
    from medrecon.simulate import MRISettings, SimulationConfig, simulate

    vol = Volume(shepp_logan_3d((12, 10, 6)), np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    m = simulate(vol, SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0,
                                                        calibration=4)))
    write_measurement(m, tmp_path / "m.h5")
    runner = CliRunner()
    for method in ("cg-sense", "l1-wavelet", "tv"):
        r = runner.invoke(app, ["reconstruct", str(tmp_path / "m.h5"),
                                str(tmp_path / f"{method}.nii.gz"), "--method", method,
                                "--iterations", "3", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert "it/s" not in r.stderr and "\r" not in r.stderr, r.stderr
        assert (tmp_path / f"{method}.nii.gz").exists()
