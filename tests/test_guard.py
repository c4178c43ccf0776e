"""Self-tuned diffusion weight and the guard against the self-tuned classical result
(medrecon.guard): tiny CPU cases with whole-volume denoisers that are bad or perfect on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prior_factory import export_tiny_prior
from typer.testing import CliRunner
from volume_factory import blob_head

from medrecon import guard as guard_module
from medrecon.guard import GUARD_METHODS, guarded_diffusion
from medrecon.holdout import HeldOut, blend_weight, holdout_split, prior_alpha
from medrecon.io import Volume, load_volume
from medrecon.io.measurement import Measurement, write_measurement
from medrecon.methods import get_method
from medrecon.recon.base import ReconOptions
from medrecon.reconstruct import reconstruct
from medrecon.sampling import api
from medrecon.sampling.config import DiffusionConfig
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")
STEPS = 4


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny tensors: one torch thread is faster on a shared runner."""


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_prior(tmp_path_factory.mktemp("prior"))


@pytest.fixture(scope="module")
def prior(prior_path: Path) -> Any:
    from medrecon.priors import load_prior

    return load_prior(prior_path)


def _mr(shape: tuple[int, int, int]) -> Measurement:
    """The blob head of ``shape`` at 2 mm, 2 birdcage coils, R = 2, SNR 40."""
    vol = Volume(blob_head(shape) * 100.0, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    cfg = SimulationConfig(modality="mri", seed=1, mri=MRISettings(
        coils=2, acceleration=2.0, calibration=4, snr=40.0, coil_model="birdcage"))
    return simulate(vol, cfg)


@pytest.fixture(scope="module")
def mr() -> Measurement:
    return _mr((14, 12, 10))


@pytest.fixture(scope="module")
def ct() -> tuple[Measurement, np.ndarray]:
    hu = blob_head((14, 14, 3)) * 1000.0 - 1000.0
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    return simulate(vol, SimulationConfig(modality="ct", seed=2,  # type: ignore[arg-type]
                                          ct=CTSettings(views=21, dose_i0=1e5))), hu


class _WholeVolume:
    """A whole-volume model-space denoiser in place of the tiled network (what
    :func:`medrecon.sampling.denoiser.prior_denoiser` returns), counting its calls."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls, self.patches = fn, 0, 1

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x)


def _use_denoiser(monkeypatch: pytest.MonkeyPatch, fn: Any) -> None:
    monkeypatch.setattr(api, "prior_denoiser", lambda *a, **k: _WholeVolume(fn))


def _garbage(x: torch.Tensor) -> torch.Tensor:
    """A prior that returns a loud fixed checkerboard whatever it is shown."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in x.shape[1:]], indexing="ij"))
    board = (idx.sum(0) % 2).to(x.dtype) * 4.0 - 1.0
    return board.expand_as(x).clone()


def _config(**kw: Any) -> DiffusionConfig:
    return DiffusionConfig(**{"steps": STEPS, "samples": 2, "seed": 0, **kw})


def _assert_offset_std(out: Any, plain: Any, classical: Any) -> None:
    """``out``'s std map is :func:`~medrecon.priors.calibration.output_std` of the plain run's
    spread and the classical image's offset from its mean, at the guard's weight and the
    held-out scale, inside the operator's support; outside it the plain run's value (the
    prior's unconstrained spread) stays."""
    from medrecon.priors.calibration import output_std

    w, samples = out.info["guard"]["weight"], out.info["guard"]["samples"]
    scale = out.info["std_calibration"].get("scale")
    raw = plain.info["std_image"] / (plain.info["std_factor"] or 1.0)
    expected = output_std(raw, classical.image - plain.image, w,
                          prior_alpha(plain.info), samples, scale or 1.0)
    std, ref_std = out.info["std_image"], plain.info["std_image"]
    inside = np.isclose(std, expected, rtol=1e-4, atol=1e-6)
    assert np.all(inside | (std == ref_std)) and inside.mean() > 0.3
    assert "distance from the posterior mean" in out.info["std_calibration_line"]
    # calibrated by neither the prior nor the held-out data: said so (no factor)
    uncalibrated = scale is None and plain.info["std_factor"] is None
    assert (out.info["std_factor"] is None) == uncalibrated


def test_blend_weight_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, y = (torch.randn(50, generator=g, dtype=torch.complex64) for _ in range(3))
    w = blend_weight(a, b, y)
    ws = np.linspace(0, 1, 201)
    errs = [float(torch.linalg.vector_norm(v * a + (1 - v) * b - y)) for v in ws]
    assert abs(w - ws[int(np.argmin(errs))]) <= 0.005 + 1e-9
    assert blend_weight(y, b, y) == pytest.approx(1.0)  # a predicts perfectly
    assert blend_weight(-y, y, y) == 0.0  # clipped at the classical end


def test_blend_gain_t_over_held_out_positions() -> None:
    """``HeldOut.gain_t``: the blend's per-position gain (coils summed) over its standard
    error. A prediction that knows part of the truth gains at every position (large t); one
    that only adds its own noise gains by the weight's fit to chance (small t); the guard
    blends only above MIN_GAIN_T, else it keeps the classical result and says why."""
    from medrecon.guard import MIN_GAIN_T, GuardReport, guard_choice

    g = torch.Generator().manual_seed(1)

    def cn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.complex64)

    coils, shape = 4, (6, 10, 10)
    positions = torch.zeros(shape, dtype=torch.bool)
    positions[:, ::3, ::2] = True  # 6 x 4 x 5 = 120 held-out positions
    truth = cn(coils, *shape) * positions
    y = truth + 0.3 * cn(coils, *shape) * positions
    b = truth + 0.5 * cn(coils, *shape) * positions          # the classical prediction
    held = HeldOut(lambda x: x, y, positions=positions)
    good = truth + 0.4 * cn(coils, *shape) * positions       # knows the truth, other errors
    chance = b + 0.5 * cn(coils, *shape) * positions         # the classical one plus noise
    w_good, w_chance = blend_weight(good, b, y), blend_weight(chance, b, y)
    t_good, n = held.gain_t(good, b, w_good)
    t_chance, _ = held.gain_t(chance, b, w_chance)
    assert n == 120 and t_good is not None and t_chance is not None
    assert t_good > 5.0 and t_chance < MIN_GAIN_T
    c_err = held.prediction_error(b)
    assert guard_choice(held, good, 2 * c_err, b, c_err)[0] == "blend"
    choice, w, err, t = guard_choice(held, chance, 2 * c_err, b, c_err)
    assert (choice, w, err) == ("classical", 0.0, c_err) and t == pytest.approx(t_chance)
    line = GuardReport("tv", 1e-3, 2 * c_err, c_err, choice, w, err, "held out",
                       blend_t=t).line()
    assert "within the held-out data's scatter" in line
    # one position: no scatter to compare with, the gain alone decides
    one = torch.zeros(shape, dtype=torch.bool)
    one[0, 0, 0] = True
    assert HeldOut(lambda x: x, y * one, positions=one).gain_t(good, b, 0.5) == (None, 1)


def test_guard_falls_back_to_the_classical_result_for_a_garbage_prior(
        mr: Measurement, prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_denoiser(monkeypatch, _garbage)
    out = guarded_diffusion(mr, _config(), prior, CPU)
    guard = out.info["guard"]
    assert GUARD_METHODS["MR"] == ("l1-wavelet", "tv")
    # the piecewise-constant head: TV predicts the held-out samples better than l1-wavelet
    assert guard["method"] == "tv", guard
    assert guard["classical_errors"]["tv"] == guard["classical_error"]
    assert guard["classical_errors"]["l1-wavelet"] > guard["classical_error"]
    assert guard["diffusion_error"] > guard["classical_error"]
    assert guard["choice"] == "classical" and guard["weight"] == 0.0
    line = out.info["guard_line"]
    assert line.startswith("guard fell back to tv (lam ")
    assert (f"tv {guard['classical_error']:.4g} (chosen over l1-wavelet "
            f"{guard['classical_errors']['l1-wavelet']:.4g})") in line
    assert "\n" not in line
    # The result is the self-tuned classical reconstruction from all the data ...
    classical = get_method("MR", "tv")(mr, ReconOptions(), CPU)
    np.testing.assert_array_equal(out.image, classical.image)
    # ... with the std map of the posterior around it (K = 2: a final run for the map)
    assert "final run (std map)" in out.info["stage_seconds"]
    plain = guarded_diffusion(mr, _config(lam=out.info["lam"], guard=False), prior, CPU)
    _assert_offset_std(out, plain, classical)
    # K = 1: no map, so no final sampling run
    one = guarded_diffusion(mr, _config(samples=1), prior, CPU)
    assert one.info["guard"]["choice"] == "classical" and "std_image" not in one.info
    assert not any(k.startswith("final run") for k in one.info["stage_seconds"])
    assert guard["classical_lam"] == classical.info["lam"]
    # ... and the guard scored it at its self-tuned weight on the split diffusion was scored
    # on: the first of the self-tuning's folds (a few held-out lines per draw here: its
    # reported errors are pooled over the others too, so they differ)
    tuned_tv = classical.info["autotune"]
    assert tuned_tv["folds"] > 1
    split = holdout_split(mr, CPU)
    part = get_method("MR", "tv")(split.train, ReconOptions(
        lam=classical.info["lam"] / tuned_tv["scale"]), CPU)
    assert guard["classical_error"] == pytest.approx(split.held.error(part.solution),
                                                     rel=1e-5)
    assert guard["classical_error"] != pytest.approx(min(tuned_tv["heldout_errors"]),
                                                     rel=1e-3)
    # The weight was still tuned on the held-out samples and recorded.
    tuned = out.info["autotune"]
    assert tuned["chosen"] == out.info["lam"] and len(tuned["grid"]) == 4
    # One chain predicted worse than tv and K = 2, so the guard's diffusion error is
    # the mean's, estimated from two fresh chains (seeds 1, 2), not the tuning chain's. For a
    # prior that ignores its input every chain is the same image up to the sampler's seeded
    # noise (~1e-5 of the image apart, measured), so the errors agree to ~1e-6, on either side
    # of 1e-6 as float32 rounding of the simulated k-space moves (the module fixture simulates
    # before the test's one-thread fixture: 1 or 2 threads, 7e-8 apart); the next grid
    # weight's error is 3 % away.
    assert guard["chains"] == 2
    assert min(tuned["heldout_errors"]) == pytest.approx(guard["diffusion_error"], rel=1e-4)


def _smooth(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth volume oscillating about three times across, no edges: wavelets fit it,
    TV's staircase does not."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (1.5 + np.sin(6 * i + 1) * np.cos(5 * j)
            + 0.5 * np.cos(7 * k + 3 * i)).astype(np.float32)


@pytest.mark.parametrize(("phantom", "expected"), [(blob_head, "tv"), (_smooth, "l1-wavelet")])
def test_guard_takes_the_classical_method_that_predicts_held_out_data_better(
        phantom: Any, expected: str, prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """MR: the guard's classical baseline is whichever of self-tuned l1-wavelet and tv
    predicts the held-out samples better: tv on a piecewise-constant head (held-out error
    0.15 against 0.35, measured), l1-wavelet on a smooth oscillating volume (0.16 against
    0.18; PSNR 35.7 against 34.8 dB). A garbage prior makes the guard fall back to it; a
    choice fixed to either method fails one of the two cases. (A slower oscillation, half
    these frequencies, gave tv the smaller error once the weights were tuned on folds, and
    the higher PSNR, 38.9 against 37.8 dB.)"""
    truth = phantom((14, 12, 10)) * 100.0
    m = simulate(Volume(truth, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), SimulationConfig(
        modality="mri", seed=1, mri=MRISettings(coils=2, acceleration=2.0, calibration=4,
                                                snr=40.0, coil_model="birdcage")))
    _use_denoiser(monkeypatch, _garbage)
    out = guarded_diffusion(m, _config(samples=1), prior, CPU)
    guard = out.info["guard"]
    other = "l1-wavelet" if expected == "tv" else "tv"
    assert guard["method"] == expected and guard["choice"] == "classical", guard
    assert guard["classical_errors"][other] > guard["classical_error"]
    picked = get_method("MR", expected)(m, ReconOptions(), CPU)
    np.testing.assert_array_equal(out.image, picked.image)
    assert out.info["guard_line"].startswith(f"guard fell back to {expected} (lam ")


def test_guard_scores_the_classical_methods_with_their_own_map_sets(
        prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file without coil maps of an object wider than the field of view: the final
    l1-wavelet and tv use two ESPIRiT map sets (one cannot fit the fold-over), so their
    training-part runs must too, scored through that operator: each held-out error is then
    that of a two-set run on the split at its self-tuned weight (with one set it is far
    larger), and the guard takes the smaller."""
    from medrecon.phantoms import shepp_logan_3d
    from tests.operators.test_coils import _folded_scene

    x = shepp_logan_3d((32, 24, 2)).astype(np.float32)
    sim = simulate(Volume(x, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), SimulationConfig(mri=MRISettings(
        coils=6, acceleration=2.0, calibration=12, snr=1000.0, dims="2d", mask="equispaced")))
    data = (_folded_scene()["kspace"].numpy() * np.asarray(sim.mask)).astype(np.complex64)
    m = Measurement("MR", data, sim.mask, sim.reference, coil_maps=None, operator=sim.operator,
                    acquisition=dict(sim.acquisition))
    _use_denoiser(monkeypatch, _garbage)
    out = guarded_diffusion(m, _config(samples=1), prior, CPU)
    guard = out.info["guard"]
    assert set(guard["classical_errors"]) == {"l1-wavelet", "tv"}
    one, two = holdout_split(m, CPU), holdout_split(m, CPU, map_sets=2)
    for name, err in guard["classical_errors"].items():
        classical = get_method("MR", name)(m, ReconOptions(), CPU)
        assert classical.info["map_sets"] == 2
        tuned = classical.info["autotune"]
        # the error of its training-part run at its self-tuned weight, through both sets, on
        # the split (the self-tuning's first fold; its report pools the errors of all folds)
        part = get_method("MR", name)(two.train, ReconOptions(
            lam=classical.info["lam"] / tuned["scale"]), CPU)
        assert err == pytest.approx(two.held.error(part.solution), rel=1e-4)
        assert guard["holdout"] == tuned["holdout"]  # the same words
        if name == guard["method"]:  # the same maps, estimated once
            assert guard["classical_lam"] == classical.info["lam"]
            assert guard["classical_error"] == err == min(guard["classical_errors"].values())
    # The diffusion's training part keeps one set, the classical one carries both.
    assert one.train.coil_maps.ndim == 4 and two.train.coil_maps.shape[0] == 2
    for name in GUARD_METHODS["MR"]:
        part = get_method("MR", name)(two.train, ReconOptions(lam=1e-4), CPU)
        assert part.info["map_sets"] == 2 and part.solution.shape == (2, *m.image_shape)
        single = get_method("MR", name)(one.train, ReconOptions(lam=1e-4), CPU)
        assert two.held.error(part.solution) < 0.5 * one.held.error(single.solution), name


def test_holdout_split_describes_single_samples_as_the_classical_tuning_does() -> None:
    """An equispaced line mask (a regular pattern): single samples are held out, and the
    guard's split says so in the classical self-tuning's words."""
    x = blob_head((16, 24, 4)) * 100.0
    m = simulate(Volume(x, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), SimulationConfig(
        seed=0, mri=MRISettings(coils=2, acceleration=3.0, calibration=4, snr=40.0, dims="2d",
                                mask="equispaced")))
    split = holdout_split(m, CPU)
    classical = get_method("MR", "l1-wavelet")(m, ReconOptions(iterations=2), CPU)
    assert split.text == classical.info["autotune"]["holdout"]
    assert split.text.endswith("% of k-space samples held out (single samples: regular line "
                               "pattern)")


@pytest.mark.parametrize("method", ["l1-wavelet", "tv"])
def test_classical_method_tuned_on_the_guards_split_is_the_self_drawn_run(method: str) -> None:
    """The guard hands its split's masks to l1-wavelet's and tv's self-tuning instead of a
    second draw: on a regular 2D line pattern (full-size single-sample masks, the costly
    draw) and a 3D Poisson-disc one (whole readout lines), the run on the handed-over masks
    is the run that draws its own, bit for bit."""
    from medrecon.recon import mri

    x = blob_head((16, 24, 4)) * 100.0
    for dims, mask, seed in (("2d", "equispaced", 0), ("3d", "poisson", 1)):
        m = simulate(Volume(x, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), SimulationConfig(
            seed=seed, mri=MRISettings(coils=2, acceleration=3.0, calibration=4, snr=40.0,
                                       dims=dims, mask=mask)))  # type: ignore[arg-type]
        split = holdout_split(m, CPU)
        assert split.masks is not None
        options = ReconOptions(iterations=5)
        run = mri.l1_wavelet if method == "l1-wavelet" else mri.total_variation
        own = run(m, options, CPU)
        shared = run(m, options, CPU, holdout_masks=split.masks)
        assert ("single samples" in own.info["autotune"]["holdout"]) == (dims == "2d")
        assert shared.info["autotune"] == own.info["autotune"]
        np.testing.assert_array_equal(shared.image, own.image)


@pytest.fixture(scope="module")
def mr_no_maps() -> Measurement:
    """Like a fastMRI file: k-space without coil maps (4 coils, an 8-line calibration box)."""
    vol = Volume(blob_head((16, 14, 12)) * 100.0, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    sim = simulate(vol, SimulationConfig(modality="mri", seed=1, mri=MRISettings(
        coils=4, acceleration=2.0, calibration=8, snr=40.0)))
    return Measurement("MR", sim.data, sim.mask, sim.reference, coil_maps=None,
                       operator=sim.operator, acquisition=dict(sim.acquisition))


def _count_estimates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The map sets asked of each coil-map estimate from now on (not counting the one-set
    candidates of the ESPIRiT threshold's choice for a narrow calibration region, which
    ``problem.espirit_threshold`` makes inside an estimate)."""
    from medrecon import problem
    from medrecon.operators import coils

    calls: list[int] = []
    choosing: list[bool] = []
    real, real_choice = coils.estimate_coil_maps, problem.espirit_threshold

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not choosing:
            calls.append(int(kwargs.get("map_sets", 1)))
        return real(*args, **kwargs)

    def choice(*args: Any, **kwargs: Any) -> Any:
        choosing.append(True)
        try:
            return real_choice(*args, **kwargs)
        finally:
            choosing.pop()

    monkeypatch.setattr(coils, "estimate_coil_maps", counting)
    monkeypatch.setattr(problem, "espirit_threshold", choice)
    return calls


def test_guard_estimates_the_coil_maps_once(mr_no_maps: Measurement, prior: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without maps in the file, one ESPIRiT estimate (the two map sets of l1-wavelet and tv)
    serves every run of the guarded path, diffusion's on its first set, which is diffusion's
    own one-set estimate, and one draw of the held-out samples serves both splits and both
    classical methods' self-tuning: the results are bit for bit those of runs that estimate their maps and draw
    their samples themselves (before, the path estimated 1, 2 and again 1 set, and drew the
    samples twice)."""
    import medrecon.holdout
    import medrecon.recon.mri

    m = mr_no_maps
    calls = _count_estimates(monkeypatch)
    draws: list[str] = []
    real_draw, real_folds = medrecon.holdout.mr_holdout_masks, medrecon.recon.mri.mr_holdout_folds

    def counting_draw(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        draws.append("medrecon.holdout")
        return real_draw(*args, **kwargs)

    def counting_folds(*args: Any, **kwargs: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        if kwargs.get("first") is None:  # the tuning draws its first fold itself
            draws.append("medrecon.recon.mri")
        return real_folds(*args, **kwargs)

    monkeypatch.setattr(medrecon.holdout, "mr_holdout_masks", counting_draw)
    monkeypatch.setattr(medrecon.recon.mri, "mr_holdout_folds", counting_folds)
    ref = torch.from_numpy(blob_head(m.image_shape))
    _use_denoiser(monkeypatch, lambda x: ref.expand_as(x).clone())  # right, up to the phase
    out = guarded_diffusion(m, _config(), prior, CPU)
    assert calls == [2]
    assert draws == ["medrecon.holdout"]  # one draw for both splits and both tunings
    guard = out.info["guard"]
    assert set(guard["classical_errors"]) == {"l1-wavelet", "tv"}
    assert guard["choice"] == "blend", guard  # a final sampling run, and the classical result
    # what diffusion alone would say (4 calibration lines: the threshold chosen on held-out data)
    assert out.info["coil_maps"].startswith("estimated (espirit, threshold ")
    # Runs that estimate their own maps: a plain diffusion run at the chosen weight (one set)
    # and the self-tuned classical method the guard chose (two sets) give the blend's parts,
    # bit for bit.
    calls.clear()
    plain = guarded_diffusion(m, _config(lam=out.info["lam"], guard=False), prior, CPU)
    classical = get_method("MR", guard["method"])(m, ReconOptions(), CPU)
    assert calls == [1, 2] and plain.info["coil_maps"] == out.info["coil_maps"]
    assert draws[1:] == ["medrecon.recon.mri"]  # the stand-alone run drew its own
    assert guard["holdout"] == classical.info["autotune"]["holdout"]
    assert guard["classical_lam"] == classical.info["lam"]
    w = guard["weight"]
    np.testing.assert_array_equal(out.image, (w * plain.image + (1 - w) * classical.image))
    # the std map: the posterior's spread and the blend's distance from its mean, inside the
    # maps' support (outside it the prior's unconstrained spread stays: the blend knows no
    # more there than diffusion alone)
    _assert_offset_std(out, plain, classical)
    # Without the guard: the weight's tuning and the final run share one one-set estimate.
    calls.clear()
    tuned = guarded_diffusion(m, _config(guard=False), prior, CPU)
    assert calls == [1] and tuned.info["coil_maps"] == out.info["coil_maps"]
    again = guarded_diffusion(m, _config(lam=tuned.info["lam"], guard=False), prior, CPU)
    np.testing.assert_array_equal(tuned.image, again.image)


def test_guard_keeps_diffusion_when_it_predicts_better_and_uses_all_data(
        ct: tuple[Measurement, np.ndarray], prior: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An oracle prior that knows the true volume must predict held-out views better than TV."""
    m, hu = ct
    lo, hi = prior.normalisation.ct_hu_min, prior.normalisation.ct_hu_max
    truth = torch.from_numpy((hu - lo) / (hi - lo)).float()
    _use_denoiser(monkeypatch, lambda x: truth.expand_as(x).clone())
    out = guarded_diffusion(m, _config(), prior, CPU)
    guard = out.info["guard"]
    assert guard["method"] == "tv" and guard["choice"] == "diffusion" and guard["weight"] == 1.0
    assert guard["diffusion_error"] < guard["classical_error"]
    assert out.info["guard_line"].startswith("guard kept diffusion")
    assert out.info["std_image"].shape == hu.shape
    # The final result is a plain run on all the views with the chosen weight: not the
    # training-view run the weight was scored with.
    plain = guarded_diffusion(m, _config(lam=out.info["lam"], guard=False), prior, CPU)
    assert "guard" not in plain.info and "autotune" not in plain.info
    np.testing.assert_array_equal(out.image, plain.image)
    np.testing.assert_array_equal(out.info["std_image"], plain.info["std_image"])
    split = holdout_split(m, CPU)
    assert split.held.error(plain.solution) < guard["diffusion_error"]  # it saw those views
    assert np.abs(out.image - hu).mean() < 60.0  # and it is the truth, nearly


def test_blend_is_consistent_with_its_parts(mr: Measurement, prior: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A prior that is right up to a partial blur (30 % of a 5-voxel box blur; its held-out
    error is close to the classical one's, with other errors): the guard blends, and the
    blend, its std map and its residual follow from the two all-data results with the
    recorded weight."""
    ref = torch.from_numpy(blob_head(mr.image_shape))

    def blurred(x: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.avg_pool3d(ref[None, None], 5, stride=1, padding=2)[0, 0]
        return (0.3 * z + 0.7 * ref).expand_as(x).clone()

    _use_denoiser(monkeypatch, blurred)
    out = guarded_diffusion(mr, _config(), prior, CPU)
    guard = out.info["guard"]
    assert guard["choice"] == "blend", guard
    w = guard["weight"]
    assert 0.0 < w < 1.0 and guard["blend_error"] < guard["classical_error"]
    plain = guarded_diffusion(mr, _config(lam=out.info["lam"], guard=False), prior, CPU)
    classical = get_method("MR", guard["method"])(mr, ReconOptions(), CPU)
    np.testing.assert_allclose(out.image, w * plain.image + (1 - w) * classical.image,
                               rtol=1e-5, atol=1e-5)
    _assert_offset_std(out, plain, classical)


def test_explicit_weight_switches_tuning_off_guard_off_keeps_diffusion(
        mr: Measurement, prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_denoiser(monkeypatch, _garbage)
    fixed = guarded_diffusion(mr, _config(lam=0.1), prior, CPU)
    assert "autotune" not in fixed.info and fixed.info["lam"] == 0.1
    assert fixed.info["guard"]["choice"] == "classical"  # the guard still runs
    off = guarded_diffusion(mr, _config(lam=0.1, guard=False), prior, CPU)
    assert "guard" not in off.info and "std_image" in off.info
    assert not np.array_equal(off.image, fixed.image)  # garbage kept, as asked


def test_cli_records_the_choice_everywhere(ct: tuple[Measurement, np.ndarray], prior_path: Path,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom
    import yaml

    from medrecon.cli.main import app

    _use_denoiser(monkeypatch, _garbage)
    meas = write_measurement(ct[0], tmp_path / "ct.h5")
    args = ["reconstruct", str(meas), "--method", "diffusion", "--prior", str(prior_path),
            "--steps", str(STEPS), "--samples", "2", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, [*args[:2], str(tmp_path / "g.nii.gz"), *args[2:]])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    guard_lines = [ln for ln in lines if ln.startswith("Guard: ")]
    assert len(guard_lines) == 1 and guard_lines[0].startswith("Guard: fell back to tv")
    assert any(ln.startswith("Self-tuned: lam auto = ") for ln in lines)
    wrote = [ln for ln in lines if ln.startswith("Wrote CT diffusion reconstruction")]
    assert len(wrote) == 1 and "output: the guard's tv at lam " in wrote[0]
    # the classical result with the std map of the posterior around it
    std_lines = [ln for ln in lines if ln.startswith("Wrote the per-voxel standard deviation")]
    assert len(std_lines) == 1 and "distance from the posterior mean" in std_lines[0]
    assert (tmp_path / "g_std.nii.gz").exists()
    settings = yaml.safe_load((tmp_path / "g.reconstruct.yaml").read_text())
    assert settings["resolved"]["guard"]["choice"] == "classical"
    assert settings["resolved"]["guard"]["method"] == "tv"
    assert settings["options"]["guard"] is True
    assert settings["options"]["lam"] == settings["resolved"]["autotune"]["chosen"]
    stages = settings["resolved"]["stage_seconds"]  # the profile of the default path
    assert list(stages)[0] == "maps and split" and "guard: classical methods" in stages
    assert "final run" not in stages and all(v >= 0 for v in stages.values())
    assert "guard: tv" in load_volume(tmp_path / "g.nii.gz").series_description
    # DICOM: the derivation text carries the weight's and the guard's lines.
    result = CliRunner().invoke(app, [*args[:2], str(tmp_path / "dcm"), *args[2:],
                                      "--format", "dicom"])
    assert result.exit_code == 0, result.output
    ds = pydicom.dcmread(sorted((tmp_path / "dcm").iterdir())[0])
    assert "lam auto = " in ds.DerivationDescription
    assert "guard fell back to tv" in ds.DerivationDescription
    # --guard off: the (garbage) diffusion result and its std map, no guard line.
    result = CliRunner().invoke(app, [*args[:2], str(tmp_path / "d.nii.gz"), *args[2:],
                                      "--guard", "off"])
    assert result.exit_code == 0, result.output
    assert "Guard:" not in result.output and (tmp_path / "d_std.nii.gz").exists()
    assert not np.array_equal(load_volume(tmp_path / "d.nii.gz").data,
                              load_volume(tmp_path / "g.nii.gz").data)
    bad = CliRunner().invoke(app, [*args[:2], str(tmp_path / "e.nii.gz"), *args[2:],
                                   "--guard", "maybe"])
    assert bad.exit_code == 2 and "--guard must be on or off" in bad.output
    tv = CliRunner().invoke(app, ["reconstruct", str(meas), str(tmp_path / "t.nii.gz"),
                                  "--method", "tv", "--guard", "off"])
    assert tv.exit_code == 2 and "--guard applies to --method diffusion only" in tv.output


def test_reconstruct_api_and_settings_repeat_the_run(ct: tuple[Measurement, np.ndarray],
                                                     prior: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m, hu = ct
    lo, hi = prior.normalisation.ct_hu_min, prior.normalisation.ct_hu_max
    truth = torch.from_numpy((hu - lo) / (hi - lo)).float()
    _use_denoiser(monkeypatch, lambda x: truth.expand_as(x).clone())
    opts = ReconOptions(iterations=STEPS, device="cpu", extra={"samples": 2})
    res = reconstruct(m, "diffusion", opts, prior=prior)
    assert res.settings.resolved["guard"]["choice"] == "diffusion"
    assert "guard kept" in res.volume.series_description
    assert "auto lam" in res.volume.series_description
    assert "guard kept diffusion" in res.volume.meta["reconstruction"]["autotune_line"]
    assert res.std_volume is not None
    again = reconstruct(m, "diffusion", res.settings.recon_options(), prior=prior)
    np.testing.assert_array_equal(again.volume.data, res.volume.data)


def test_heldout_mean_error_estimates_the_mean_of_k() -> None:
    """Chains m + e_k with independent spread: the two-chain estimate of the K-sample mean's
    held-out error matches its expectation ||m - y||^2 + v / K on average, relative to
    ||y||^2 as every held-out error is."""
    g = torch.Generator().manual_seed(0)
    n, v_per = 4000, 0.5
    y = torch.randn(n, generator=g, dtype=torch.complex64)
    held = HeldOut(lambda x: x, 3.0 * y)  # a scale of the data, to catch an unscaled term
    m = y + 0.3 * torch.randn(n, generator=g, dtype=torch.complex64)
    bias2 = float(torch.sum(torch.abs(m - y) ** 2))
    for k in (1, 2, 4, 16):
        est = []
        for _ in range(20):
            a1, a2 = (3.0 * (m + v_per ** 0.5 * torch.randn(n, generator=g,
                                                            dtype=torch.complex64))
                      for _ in range(2))
            e, mean = held.mean_error(a1, a2, k)
            est.append(e**2)
            torch.testing.assert_close(mean, 0.5 * (a1 + a2))
        expected = (bias2 + n * v_per / k) / float(torch.sum(torch.abs(y) ** 2))
        assert abs(np.mean(est) / expected - 1.0) < 0.03, (k, np.mean(est), expected)


def test_heldout_errors_of_images_and_predictions_agree() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(30, generator=g, dtype=torch.complex64)
    x = torch.randn(30, generator=g, dtype=torch.complex64)
    held = HeldOut(lambda v: 2.0 * v, y)
    expected = float(torch.linalg.vector_norm(2.0 * x - y) / torch.linalg.vector_norm(y))
    assert held.error(x) == pytest.approx(expected, rel=1e-6)
    assert held.prediction_error(held.predict(x)) == held.error(x)
    assert held.prediction_error(y) == 0.0


def _high_dose_ct(prior: Any) -> tuple[Measurement, np.ndarray, torch.Tensor]:
    """A tiny CT slab at high dose (15 views, I0 = 1e7): the measurement, the HU volume and the
    truth in the prior's model range."""
    hu = blob_head((14, 14, 3)) * 1000.0 - 1000.0
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    m = simulate(vol, SimulationConfig(modality="ct", seed=2,  # type: ignore[arg-type]
                                       ct=CTSettings(views=15, dose_i0=1e7)))
    lo, hi = prior.normalisation.ct_hu_min, prior.normalisation.ct_hu_max
    return m, hu, torch.from_numpy((hu - lo) / (hi - lo)).float()


def test_guard_scores_the_mean_of_k_not_one_noisy_sample(
        prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prior that is right on average but noisy per chain, on high-dose views (so the truth
    predicts them far better than TV): one sample predicts the held-out views worse than TV,
    the mean of 16 samples better. With K = 16 the guard must estimate the mean's error from
    two fresh chains and keep diffusion; with K = 1 that one noisy sample is the output, and
    the guard must not keep it alone."""
    m, hu, truth = _high_dose_ct(prior)
    noise = torch.Generator().manual_seed(5)

    def noisy_truth(x: torch.Tensor) -> torch.Tensor:
        return truth + 0.016 * torch.randn(x.shape, generator=noise)

    _use_denoiser(monkeypatch, noisy_truth)
    many = guarded_diffusion(m, DiffusionConfig(steps=STEPS, samples=16, seed=0), prior, CPU)
    guard = many.info["guard"]
    single = min(many.info["autotune"]["heldout_errors"])
    assert single > guard["classical_error"] > guard["diffusion_error"], guard
    assert guard["chains"] == 2 and guard["samples"] == 16
    assert guard["choice"] == "diffusion" and guard["weight"] == 1.0
    assert "mean of 16, estimated from 2 chains" in many.info["guard_line"]
    one = guarded_diffusion(m, DiffusionConfig(steps=STEPS, samples=1, seed=0), prior, CPU)
    assert one.info["guard"]["chains"] == 1 and one.info["guard"]["choice"] != "diffusion"


def test_weight_ranked_on_shorter_runs_guard_scores_a_full_run(
        ct: tuple[Measurement, np.ndarray], prior: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune_steps``: the weight's candidates are sampled with fewer steps; the guard's
    comparison and the output use the run's own steps, as with that weight given."""
    m, hu = ct
    lo, hi = prior.normalisation.ct_hu_min, prior.normalisation.ct_hu_max
    truth = torch.from_numpy((hu - lo) / (hi - lo)).float()
    _use_denoiser(monkeypatch, lambda x: truth.expand_as(x).clone())
    steps: list[tuple[int, bool]] = []
    sample = guard_module._sample

    def counting(meas: Measurement, p: Any, config: DiffusionConfig, *a: Any,
                 **k: Any) -> Any:
        steps.append((config.steps, meas is m))
        return sample(meas, p, config, *a, **k)

    monkeypatch.setattr(guard_module, "_sample", counting)
    # K = 1: the guard scores one training-part run at the run's steps (the rescore)
    out = guarded_diffusion(m, _config(tune_steps=1, samples=1), prior, CPU)
    tuning, rest = steps[:-2], steps[-2:]
    assert len(tuning) >= 3 and {s for s, _ in tuning} == {1}
    assert rest[0][0] == rest[1][0] == STEPS  # the guard's training-part run, the final run
    assert not any(full for _, full in tuning + rest[:1]) and rest[1][1]  # training, then all
    assert "ranked on 1-step runs" in out.info["autotune_line"]
    assert [k for k in out.info["stage_seconds"] if k.startswith(("weight", "guard: rescore",
                                                                  "final"))] == [
        f"weight ({len(tuning)} runs, 1 steps)", f"guard: rescore at {STEPS} steps", "final run"]
    steps.clear()
    given = guarded_diffusion(m, _config(lam=out.info["lam"], samples=1), prior, CPU)
    assert [s for s, _ in steps] == [STEPS, STEPS]
    assert out.info["guard"] == given.info["guard"]
    np.testing.assert_array_equal(out.image, given.image)
    # K >= 2: two training-part chains at the run's steps instead (the mean's error and the
    # std map's calibration), the same with the weight given
    steps.clear()
    many = guarded_diffusion(m, _config(tune_steps=1), prior, CPU)
    assert [s for s, _ in steps[-3:]] == [STEPS] * 3 and {s for s, _ in steps[:-3]} == {1}
    assert [full for _, full in steps[-3:]] == [False, False, True]
    assert f"guard: two chains at {STEPS} steps" in many.info["stage_seconds"]
    steps.clear()
    given = guarded_diffusion(m, _config(lam=many.info["lam"]), prior, CPU)
    assert [s for s, _ in steps] == [STEPS] * 3
    assert many.info["guard"] == given.info["guard"]


def test_std_map_is_calibrated_on_the_measurements_held_out_data(
        prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prior whose chains spread a little around a biased image (an offset in one half of
    the slab): the spread alone covers the truth poorly; the two chains the guard scores on
    the training views give alpha from the held-out views, and the calibrated map covers it.
    The test prior has no calibration of its own, so without the held-out data the map
    would stay raw."""
    m, hu, truth = _high_dose_ct(prior)
    truth[:7] += 0.1  # the bias the chains share
    noise = torch.Generator().manual_seed(5)

    def biased(x: torch.Tensor) -> torch.Tensor:
        return truth + 0.005 * torch.randn(x.shape, generator=noise)

    _use_denoiser(monkeypatch, biased)
    out = guarded_diffusion(m, DiffusionConfig(steps=STEPS, samples=4, seed=0), prior, CPU)
    assert out.info["guard"]["choice"] != "classical", out.info["guard"]
    cal = out.info["std_calibration"]
    assert cal["basis"] == "held-out data" and cal["prior_factor"] is None
    assert out.info["std_calibration_line"].startswith(
        "std map calibrated on this measurement's held-out data")
    std = out.info["std_image"]
    raw = std / out.info["std_factor"]
    region = hu > -900.0
    covered = np.abs(out.image - hu)[region] <= 2.0 * std[region]
    raw_covered = np.abs(out.image - hu)[region] <= 2.0 * raw[region]
    assert covered.mean() > max(0.75, raw_covered.mean() + 0.2), (covered.mean(),
                                                                  raw_covered.mean())


@pytest.fixture(scope="module")
def mr_long() -> Measurement:
    """A head 2x longer along the readout than across: an 8-row slab applies (20 > 12)."""
    return _mr((20, 12, 10))


def test_guard_chooses_on_a_slab_and_solves_the_chosen_method_on_all_data(
        mr_long: Measurement, prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune_slab``: the weight, the chains and both classical methods' tuning run on the
    slab; the fallback is the chosen method's one solve on all the data at the weight its
    slab tuning chose (the one its own self-tuning on that slab chooses), and the lines
    say which rows."""
    from medrecon.slab import measurement_slab

    _use_denoiser(monkeypatch, _garbage)
    out = guarded_diffusion(mr_long, _config(tune_slab=8), prior, CPU)
    guard, slab = out.info["guard"], out.info["tune_slab"]
    assert guard["choice"] == "classical" and slab["stop"] - slab["start"] == 8
    assert f"on {slab['text']}" in out.info["guard_line"]
    assert f"weight chosen on {slab['text']}" in out.info["autotune_line"]
    stages = out.info["stage_seconds"]
    assert list(stages)[:2] == ["maps", f"slab ({slab['text']}) and split"]
    assert "guard: classical all-data solve" in stages and "final run (std map)" in stages
    name, lam = guard["method"], guard["classical_lam"]
    tuned = get_method("MR", name)(mr_long, ReconOptions(extra={"tune_slab": 8}), CPU)
    assert tuned.info["tune_slab"] == slab and tuned.info["lam"] == pytest.approx(lam,
                                                                                  rel=1e-6)
    fixed = get_method("MR", name)(mr_long, ReconOptions(lam=lam), CPU)
    assert out.image.shape == mr_long.image_shape
    np.testing.assert_array_equal(out.image, fixed.image)
    # the guard's errors are those of the slab's split
    sub, _ = measurement_slab(mr_long, CPU, 8) or (None, None)
    assert sub is not None and holdout_split(sub, CPU).text in guard["holdout"]
    # off: the whole volume, as before
    whole = guarded_diffusion(mr_long, _config(tune_slab=0), prior, CPU)
    assert "tune_slab" not in whole.info and " on rows " not in whole.info["guard_line"]


def test_guard_on_a_slab_blends_with_all_data_results(
        mr_long: Measurement, prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partly blurred true head (on the slab: its rows): the guard blends; the blend is
    the all-data diffusion run and the chosen method's all-data solve with the recorded
    weight, its std map covers the whole volume and its residual is the whole data's."""
    from medrecon.slab import measurement_slab

    sub, slab = measurement_slab(mr_long, CPU, 8) or (None, None)
    assert sub is not None and slab is not None
    ref = torch.nn.functional.avg_pool3d(
        torch.from_numpy(blob_head(mr_long.image_shape))[None, None], 5, stride=1, padding=2)[0, 0]
    ref = 0.3 * ref + 0.7 * torch.from_numpy(blob_head(mr_long.image_shape))

    def blurred(x: torch.Tensor) -> torch.Tensor:
        z = ref if tuple(x.shape[-3:]) == mr_long.image_shape else slab.take(ref)
        return z.expand_as(x).clone()

    _use_denoiser(monkeypatch, blurred)
    # the slab's few held-out positions leave this small gain within their scatter (t ~ 1);
    # the test is about how a blend is composed from all-data results, so it is let through
    monkeypatch.setattr(guard_module, "MIN_GAIN_T", 0.0)
    out = guarded_diffusion(mr_long, _config(tune_slab=8), prior, CPU)
    guard = out.info["guard"]
    assert guard["choice"] == "blend", guard
    w = guard["weight"]
    plain = guarded_diffusion(mr_long, _config(lam=out.info["lam"], guard=False), prior, CPU)
    classical = get_method("MR", guard["method"])(mr_long, ReconOptions(
        lam=guard["classical_lam"]), CPU)
    np.testing.assert_allclose(out.image, w * plain.image + (1 - w) * classical.image,
                               rtol=1e-5, atol=1e-5)
    assert out.info["std_image"].shape == mr_long.image_shape
    assert 0.0 < out.residual < 1.0
