"""``medrecon.reconstruct``: Measurement + method -> Volume in the reference geometry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medrecon.errors import ConfigError, InputError
from medrecon.io import Volume
from medrecon.io.measurement import Measurement, ReferenceGeometry
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.base import ReconOptions
from medrecon.reconstruct import reconstruct, reconstruction_volume
from medrecon.simulate import MRISettings, SimulationConfig, simulate

AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.2, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def measurement() -> Measurement:
    vol = Volume(shepp_logan_3d((16, 14, 12)), AFFINE, modality="MR", units="a.u.",
                 series_description="T1 ref")
    cfg = SimulationConfig(mri=MRISettings(coils=3, acceleration=2.5, calibration=6))
    return simulate(vol, cfg)


def test_reconstruct_returns_volume_in_reference_geometry(measurement: Measurement) -> None:
    res = reconstruct(measurement, "cg-sense", ReconOptions(iterations=8, device="cpu"))
    v = res.volume
    assert v.shape == (16, 14, 12) and np.array_equal(v.affine, AFFINE)
    assert v.modality == "MR" and v.units == "a.u."
    assert v.series_description == "T1 ref (medrecon cg-sense)"
    assert v.meta["reconstruction"]["method"] == "cg-sense"
    assert v.meta["reconstruction"]["iterations"] == 8 == res.output.iterations
    assert res.residual == res.output.residual and 0 < res.residual < 1
    assert res.modality == "MR" and res.seconds > 0


def test_reconstruct_unknown_method_names_the_choices(measurement: Measurement) -> None:
    with pytest.raises(InputError, match="for MR measurements; choose one of: cg-sense, .*zero-filled"):
        reconstruct(measurement, "fbp")


def test_ct_measurement_with_mri_only_method() -> None:
    ref = ReferenceGeometry(AFFINE, (4, 4, 2), "CT", "HU")
    ct = Measurement("CT", np.zeros((3, 2, 4), np.float32), None, ref, operator={"kind": "ct"})
    with pytest.raises(InputError, match="for CT measurements"):
        reconstruct(ct, "cg-sense")


def test_reconstruction_volume_truncates_description(measurement: Measurement) -> None:
    measurement.reference.series_description = "x" * 80
    try:
        v = reconstruction_volume(measurement, np.zeros((16, 14, 12)), "tv", {"lam": 0.1})
    finally:
        measurement.reference.series_description = "T1 ref"
    assert len(v.series_description) == 64
    assert v.meta["reconstruction"] == {"method": "tv", "lam": 0.1}


def test_mr_reconstruction_of_an_unlabelled_reference_is_an_mr_series(tmp_path) -> None:
    """A NIfTI from another tool has no modality ("OT"); its MR k-space reconstruction is MR,
    and so is the DICOM series written from it (issue 15), not Secondary Capture."""
    import pydicom

    from medrecon.io import load_volume, save_volume

    vol = Volume(shepp_logan_3d((12, 10, 4)), AFFINE)  # modality "OT"
    m = simulate(vol, SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0,
                                                        calibration=4)))
    assert m.reference.modality == "OT"
    result = reconstruct(m, "zero-filled", ReconOptions(device="cpu"))
    assert result.volume.modality == "MR"
    out = save_volume(result.volume, tmp_path / "dicom", format="dicom")
    first = sorted(out.glob("*.dcm"))[0]
    assert pydicom.dcmread(first, stop_before_pixels=True).Modality == "MR"
    assert load_volume(out).modality == "MR"


def test_lam_iterations_and_prior_follow_the_method_metadata(measurement: Measurement) -> None:
    with pytest.raises(InputError, match="lam does not apply to the method zero-filled"):
        reconstruct(measurement, "zero-filled", ReconOptions(lam=0.1))
    with pytest.raises(InputError, match="iterations does not apply to the method zero-filled"):
        reconstruct(measurement, "zero-filled", ReconOptions(iterations=3))
    with pytest.raises(InputError, match="A prior applies to the method diffusion"):
        reconstruct(measurement, "cg-sense", prior=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cg-sense options: has an unknown key 'wavelet'"):
        reconstruct(measurement, "cg-sense", ReconOptions(extra={"wavelet": "db4"}))


def test_settings_record_the_run_and_repeat_it(measurement: Measurement) -> None:
    res = reconstruct(measurement, "l1-wavelet",
                      ReconOptions(iterations=3, device="cpu", extra={"wavelet": "haar"}))
    s = res.settings
    assert (s.method, s.modality, s.device, s.lam, s.iterations) == (
        "l1-wavelet", "MR", "cpu", None, 3)
    assert s.options["wavelet"] == "haar" and s.options["penalise_approximation"] is False
    assert s.resolved["lam"] == res.output.info["lam"] and s.resolved["iterations"] == 3
    # The self-tuned weight is recorded with its grid and held-out errors (metadata).
    tuned = s.resolved["autotune"]
    assert tuned["parameter"] == "lam" and tuned["chosen"] == pytest.approx(s.resolved["lam"])
    assert len(tuned["grid"]) == len(tuned["heldout_errors"]) >= 5
    assert "auto lam" in res.volume.series_description
    assert "held-out error" in res.volume.meta["reconstruction"]["autotune_line"]
    again = reconstruct(measurement, s.method, s.recon_options())
    assert np.array_equal(again.volume.data, res.volume.data)


def test_diffusion_through_reconstruct_with_a_loaded_prior(measurement: Measurement,
                                                          tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prior_factory import export_tiny_prior

    from medrecon.priors import load_prior

    prior = load_prior(export_tiny_prior(tmp_path))
    net = prior.denoiser
    opts = ReconOptions(iterations=2, device="cpu", extra={"samples": 2, "seed": 1})
    res = reconstruct(measurement, "diffusion", opts, prior=prior)
    assert prior.denoiser is net
    assert res.volume.shape == (16, 14, 12)
    assert res.std_volume is not None  # K = 2: a std map, whatever the guard chose
    assert res.output.iterations == 2 and res.settings.options["steps"] == 2
    assert res.settings.options["prior"] == prior.name == "tiny"
    tuned = res.output.info["autotune"]  # the weight chosen on held-out k-space, recorded
    assert res.settings.options["lam"] == tuned["chosen"] == res.settings.resolved["lam"]
    assert 0.1 in tuned["grid"]  # around the MR default
    guard = res.settings.resolved["guard"]  # the better held-out predictor of the two
    assert set(guard["classical_errors"]) == {"l1-wavelet", "tv"}
    assert guard["classical_error"] == guard["classical_errors"][guard["method"]] == min(
        guard["classical_errors"].values())
    # A prior by name gives what the loaded one gives (fixed weight, no guard: cheaper).
    fixed = dataclasses.replace(opts, extra={**opts.extra, "lam": 0.1, "guard": False})
    loaded = reconstruct(measurement, "diffusion", fixed, prior=prior)
    by_name = reconstruct(measurement, "diffusion", dataclasses.replace(
        fixed, extra={**fixed.extra, "prior": str(tmp_path / "tiny.json")}))
    assert np.array_equal(by_name.volume.data, loaded.volume.data)
