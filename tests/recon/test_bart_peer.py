"""Peer check against BART ``pics`` (Uecker et al.) on the same simulated multi-coil k-space.

Conventions, and why the comparison is like for like:

* Data and maps are handed to BART unchanged, as ``.cfl`` arrays with BART's dimension order
  (x, y, z, coil) = our (I, J, K, C). BART's centred FFT puts the k-space origin at N // 2 like
  ours for even sizes (for odd sizes BART centres with a (-1)^n modulation, a different
  convention), so the grid here is even.
* ``pics`` normally rescales the data by an estimate of its intensity and reports the image in
  that scale; ``-w 1`` switches the scaling off, so its unitary SENSE model and its objective
  ``1/2 ||A x - y||^2 + lam R(x)`` match ours and the regularisation weights mean the same thing.
* ``-n`` turns off BART's random wavelet cycle spinning and ``cycle_spin=False`` ours (the two
  draw different random shifts); BART's default wavelet is Daubechies-2, like our l1-wavelet
  default.
* Regularisation is tuned for each tool separately on the same small lam grid; the best PSNR
  of each is compared.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.cfl import read_cfl, write_cfl
from medrecon.methods import get_method
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.base import ReconOptions
from medrecon.simulate import MRISettings, SimulationConfig, simulate

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bart") is None, reason="needs BART (bart pics)")]

SHAPE = (24, 24, 20)
GRIDS = {"cg-sense": (1e-3, 1e-2), "l1-wavelet": (1e-4, 3e-4, 1e-3)}
FLAGS = {"cg-sense": "-l2", "l1-wavelet": "-l1"}
ITERATIONS = {"cg-sense": 30, "l1-wavelet": 60}


def _psnr(img: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((img - ref) ** 2)))


def _bart_pics(tmp: Path, flag: str, lam: float, iterations: int) -> np.ndarray:
    subprocess.run(["bart", "pics", flag, "-r", str(lam), "-i", str(iterations), "-w", "1",
                    "-n", "-d", "0", str(tmp / "ksp"), str(tmp / "maps"), str(tmp / "out")],
                   check=True, capture_output=True, timeout=120)
    return np.abs(read_cfl(tmp / "out")).reshape(SHAPE)


@pytest.mark.parametrize("method", ["cg-sense", "l1-wavelet"])
def test_within_half_a_db_of_bart_pics(tmp_path: Path, method: str) -> None:
    ref = shepp_logan_3d(SHAPE)
    cfg = SimulationConfig(mri=MRISettings(coils=6, acceleration=4.0, calibration=8, snr=30.0))
    m = simulate(Volume(ref, np.eye(4), modality="MR"), cfg)
    write_cfl(tmp_path / "ksp", np.moveaxis(m.data, 0, -1))
    write_cfl(tmp_path / "maps", np.moveaxis(m.coil_maps, 0, -1))
    fn = get_method("MR", method)
    ours, theirs = {}, {}
    for lam in GRIDS[method]:
        extra = {"cycle_spin": False} if method == "l1-wavelet" else {}
        out = fn(m, ReconOptions(lam=lam, iterations=ITERATIONS[method], tol=0.0, extra=extra),
                 torch.device("cpu"))
        ours[lam] = _psnr(out.image, ref)
        theirs[lam] = _psnr(_bart_pics(tmp_path, FLAGS[method], lam, ITERATIONS[method]), ref)
    zero_filled = _psnr(get_method("MR", "zero-filled")(m, ReconOptions(), torch.device("cpu"))
                        .image, ref)
    best_ours, best_bart = max(ours.values()), max(theirs.values())
    assert best_bart > zero_filled + 3.0  # the comparison is not between two failures
    assert abs(best_ours - best_bart) < 0.5, (ours, theirs)
