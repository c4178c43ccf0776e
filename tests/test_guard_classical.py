"""The guard's classical stage (medrecon.guard.classical_runs) without repeated work: each
method's training-part solve at its chosen weight is the self-tuning's own, and each operator's
Lipschitz constant is estimated once per method call; the errors and picks stay those of the
former extra solve, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from volume_factory import blob_head

from medrecon import guard, solvers
from medrecon.holdout import holdout_split
from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.recon import ct, mri
from medrecon.recon.base import ReconOptions
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny tensors: one torch thread is faster on a shared runner."""


def _mr(maps_in_file: bool) -> Measurement:
    """A tiny MR measurement with its noise level (SURE on); without maps like a fastMRI
    file (the guard then estimates two ESPIRiT map sets, cropped to a support; no noise
    level either: the held-out samples alone)."""
    vol = Volume(blob_head((16, 14, 12)) * 100.0, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    sim = simulate(vol, SimulationConfig(modality="mri", seed=1, mri=MRISettings(
        coils=4, acceleration=2.0, calibration=8, snr=40.0)))
    if maps_in_file:
        return sim
    return Measurement("MR", sim.data, sim.mask, sim.reference, coil_maps=None,
                       operator=sim.operator, acquisition=dict(sim.acquisition))


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, names: tuple[str, ...]) -> list[str]:
    """The names of ``module``'s functions ``names`` in the order they are called from now."""
    calls: list[str] = []

    def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapped

    for name in names:
        monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    return calls


@pytest.mark.parametrize("maps_in_file", [True, False])
def test_mr_guard_scores_the_tunings_own_training_solve(
        maps_in_file: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """MR l1-wavelet and tv: the guard's training-part solution at each method's chosen
    weight is the one the self-tuning solved already (its weight is a tried one): no solve
    is made again (7 weights x 2 with SURE + all data = 15 solver calls per method, not 16;
    without a noise level 8, not 9; one more per weight and further fold),
    and the held-out error and weight are those of the former extra run on the training
    part, bit for bit. The Lipschitz constant is estimated once per operator (training part,
    all data), not once per solve."""
    m = _mr(maps_in_file)
    dmeas, cmeas, _ = guard._estimate_maps_once(m, CPU, True)
    split = holdout_split(dmeas, CPU)
    calls = _count(monkeypatch, mri, ("fista", "pdhg", "_lipschitz"))
    runs = guard.classical_runs(m, split, CPU, cmeas=cmeas)
    assert [r.method for r in runs] == ["l1-wavelet", "tv"]
    for run in runs:
        tuned = run.output.info["autotune"]
        # with the file's noise level SURE's nudged solve doubles the weights' solves
        assert ("SURE" in tuned["note"]) == maps_in_file, tuned["note"]
        # and every further fold (few held-out lines: mr_holdout_folds) one more
        folds = tuned["folds"]
        per_weight = (2 if maps_in_file else 1) + folds - 1
        solver = "fista" if run.method == "l1-wavelet" else "pdhg"
        assert calls.count(solver) == per_weight * len(tuned["grid"]) + 1
        assert run.output.training_solution is None  # not kept past the scoring
    # one estimate per training operator (one per fold) and one for all data
    assert calls.count("_lipschitz") == sum(r.output.info["autotune"]["folds"] + 1
                                            for r in runs)
    monkeypatch.undo()
    # The former path: each method once more on the guard's training part at the weight it
    # chose there (lam / scale), scored the same way.
    csplit = guard._classical_split(m, cmeas, split, CPU)
    for run in runs:
        tuned = run.output.info["autotune"]
        part = guard._CLASSICAL[("MR", run.method)](
            csplit.train, ReconOptions(lam=run.lam / tuned["scale"]), CPU)
        assert part.solution is not None
        assert run.error == csplit.held.error(part.solution), run.method
        torch.testing.assert_close(run.prediction, csplit.held.predict(part.solution),
                                   rtol=0, atol=0)
        if tuned["folds"] == 1:  # else the reported errors pool every fold's held-out data
            assert run.error == pytest.approx(min(tuned["heldout_errors"]), rel=1e-5)


def test_mr_training_solution_only_when_asked_and_tuned() -> None:
    """``keep_training`` needs the handed-over masks and a self-tuned weight; without them
    there is no training part to keep, and the output is the same either way."""
    m = _mr(True)
    split = holdout_split(m, CPU)
    opts = ReconOptions(iterations=5)
    kept = mri.l1_wavelet(m, opts, CPU, holdout_masks=split.masks, keep_training=True)
    plain = mri.l1_wavelet(m, opts, CPU, holdout_masks=split.masks)
    assert kept.training_solution is not None and plain.training_solution is None
    assert kept.training_solution.shape == kept.solution.shape
    np.testing.assert_array_equal(kept.image, plain.image)
    assert kept.info["autotune"] == plain.info["autotune"]
    given = mri.l1_wavelet(m, ReconOptions(lam=1e-3, iterations=5), CPU,
                           holdout_masks=split.masks, keep_training=True)
    assert given.training_solution is None


def test_ct_tv_keeps_its_training_solve_only_at_a_tried_weight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CT TV: with the held-out views alone (``sure=false``) the weight is a tried one and
    the kept training solution is the run on the training views at that weight, bit for
    bit; with SURE the weight is the parabola vertex between tried weights, so nothing is
    kept and the guard solves the training views once more (7 x 2 + 1 + 1 solves)."""
    hu = blob_head((14, 14, 3)) * 1000.0 - 1000.0
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    m = simulate(vol, SimulationConfig(modality="ct", seed=2,  # type: ignore[arg-type]
                                       ct=CTSettings(views=21, dose_i0=1e4)))
    opts = ReconOptions(iterations=30, extra={"sure": False})
    out = ct.tv_method(m, opts, CPU, keep_training=True)
    lam = out.info["lam"]
    assert lam in out.info["autotune"]["grid"] and out.training_solution is not None
    split = holdout_split(m, CPU)
    part = ct.tv_method(split.train, ReconOptions(lam=lam, iterations=30), CPU)
    assert part.solution is not None
    torch.testing.assert_close(out.training_solution, part.solution, rtol=0, atol=0)

    calls = _count(monkeypatch, ct, ("pdhg", "_data_lipschitz"))
    runs = guard.classical_runs(m, split, CPU)
    tuned = runs[0].output.info["autotune"]
    assert runs[0].lam not in tuned["grid"]  # the vertex
    assert calls.count("pdhg") == 2 * len(tuned["grid"]) + 2
    # once for the training views (every weight, nudged or not), once for all views, once
    # for the extra training-part run (another method call)
    assert calls.count("_data_lipschitz") == 3


def test_operator_norms_estimate_once_per_operator() -> None:
    """By identity: a second operator, even an equal one, gets its own estimate."""
    norms = solvers.OperatorNorms()
    estimates: list[int] = []

    def estimate(v: float) -> Callable[[], float]:
        return lambda: (estimates.append(1), v)[1]

    a, b = object(), object()
    assert norms(a, estimate(2.0)) == 2.0
    assert norms(a, estimate(3.0)) == 2.0
    assert norms(b, estimate(3.0)) == 3.0
    assert len(estimates) == 2
