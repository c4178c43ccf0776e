"""``medrecon.methods``: every method with its metadata, looked up by modality and name."""

from __future__ import annotations

import dataclasses

import pytest

from medrecon.errors import InputError
from medrecon.methods import available_methods, get_method, normalise_modality
from medrecon.sampling.config import DiffusionConfig


def test_every_method_and_its_facts() -> None:
    assert available_methods() == {
        "CT": ["cgls", "diffusion", "fbp", "fdk", "sirt", "tv"],
        "MR": ["cg-sense", "diffusion", "l1-wavelet", "tv", "zero-filled"]}
    facts = {(m, n): (get_method(m, n).weighted, get_method(m, n).iterative)
             for m, names in available_methods().items() for n in names}  # type: ignore[union-attr]
    assert facts == {
        ("MR", "zero-filled"): (False, False), ("MR", "cg-sense"): (True, True),
        ("MR", "l1-wavelet"): (True, True), ("MR", "tv"): (True, True),
        ("MR", "diffusion"): (True, True), ("CT", "fbp"): (False, False),
        ("CT", "fdk"): (False, False), ("CT", "sirt"): (False, True),
        ("CT", "cgls"): (False, True), ("CT", "tv"): (True, True),
        ("CT", "diffusion"): (True, True)}
    for mod, names in available_methods().items():  # type: ignore[union-attr]
        for name in names:
            spec = get_method(mod, name)
            assert (spec.default_iterations is not None) == spec.iterative, name
            assert (spec.default_lam is not None) == spec.weighted, name
            assert dataclasses.is_dataclass(spec.settings) and spec.summary
            spec.resolve_settings({})  # every option has a default


def test_defaults_are_the_methods_own() -> None:
    assert get_method("MR", "cg-sense").default_lam == 1e-3
    assert get_method("MR", "tv").default_iterations == 300
    assert "99th percentile" in str(get_method("MR", "l1-wavelet").default_lam)
    assert get_method("CT", "sirt").default_iterations == 100
    assert str(get_method("CT", "tv").default_lam).startswith("auto: held-out views")
    assert str(get_method("MR", "tv").default_lam).startswith("auto: held-out k-space")
    assert get_method("MR", "diffusion").default_lam == "auto: held-out k-space over x1/4..x4 of 0.1"
    assert get_method("CT", "diffusion").default_lam == "auto: held-out views over x1/4..x4 of 1"
    assert get_method("CT", "diffusion").settings is DiffusionConfig
    assert get_method("CT", "fbp").option_names == ("filter",)
    assert "wavelet" in get_method("MR", "l1-wavelet").option_names


def test_lookup_spellings_and_errors() -> None:
    assert get_method("mri", " CG-SENSE ") is get_method("MR", "cg-sense")
    assert normalise_modality("ct") == "CT"
    with pytest.raises(InputError, match="Unknown reconstruction method 'fbp' for MR"):
        get_method("MR", "fbp")
    with pytest.raises(InputError, match="Unknown modality"):
        get_method("PET", "tv")
