"""``medrecon.reconstruct``: Measurement + method -> Volume in the reference geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medrecon.errors import InputError
from medrecon.io import Volume
from medrecon.io.measurement import Measurement, ReferenceGeometry
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.classical import ReconOptions
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
