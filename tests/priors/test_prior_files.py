"""Broken prior files: one sentence that names the problem, and `list_priors` marks them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medrecon.errors import InputError
from medrecon.priors import list_priors, load_prior, resolve_prior_path
from medrecon.priors.checkpoint import check_prior_weights, read_prior_description
from tests.prior_factory import export_broken_priors


@pytest.fixture(scope="module")
def priors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/, corrupt/ (NAME.json not JSON), missing/ (no weights), trunc/ (cut weights),
    model.bin (random bytes)."""
    return export_broken_priors(tmp_path_factory.mktemp("priors"))


def test_corrupt_json_is_named_as_corrupt(priors: Path) -> None:
    for given in (priors / "corrupt", priors / "corrupt" / "corrupt.json"):
        with pytest.raises(InputError, match=r"corrupt\.json is corrupt \(invalid JSON at line"):
            resolve_prior_path(given)


def test_binary_files_are_one_sentence(priors: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model.bin is a weights file"):
        load_prior(priors / "model.bin")
    blob = tmp_path / "blob.dat"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="blob.dat is a binary file, not a medrecon prior"):
        resolve_prior_path(blob)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="notes.txt is not a medrecon prior description"):
        read_prior_description(text)


def test_missing_and_truncated_weights(priors: Path) -> None:
    good = resolve_prior_path(priors / "good")
    assert check_prior_weights(good, read_prior_description(good)) == ""
    for name, problem in (("missing", "weights missing"), ("trunc", "weights unreadable")):
        js = resolve_prior_path(priors / name)
        assert check_prior_weights(js, read_prior_description(js)) == problem
    with pytest.raises(InputError, match=r"missing\.safetensors of prior missing\.json is missing"):
        load_prior(priors / "missing")
    with pytest.raises(InputError, match=r"trunc\.safetensors of prior trunc\.json is unreadable "
                                         r"\(truncated: \d+ of \d+ bytes\)"):
        load_prior(priors / "trunc")


def test_list_priors_marks_broken_priors(priors: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MEDRECON_PRIORS", os.pathsep.join(
        str(priors / n) for n in ("good", "corrupt", "missing", "trunc")))
    got = {i.name: i.problem for i in list_priors() if not i.shipped}
    assert got == {"good": "", "missing": "weights missing", "trunc": "weights unreadable",
                   "corrupt": "description corrupt"}
    # A run folder's other JSON files (not priors) are neither listed nor errors.
    (priors / "good" / "metrics.json").write_text(json.dumps({"psnr": 30}))
    assert resolve_prior_path(priors / "good").name == "good.json"
