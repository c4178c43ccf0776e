"""The command line imports MONAI without the optional packages medrecon never uses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medrecon import monai_import


def _fake_package(root: Path, name: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("VALUE = 1\n")


def test_listed_packages_are_absent_only_inside_the_first_monai_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_package(tmp_path, "medrecon_fake_optional")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(monai_import, "MONAI_UNUSED_OPTIONAL",
                        frozenset({"medrecon_fake_optional"}))
    monkeypatch.setattr(monai_import, "_lean_monai", False)
    monkeypatch.delitem(sys.modules, "monai", raising=False)  # as if MONAI were not loaded yet
    with monai_import.monai_import_context():  # not switched on: a plain import
        assert importlib.util.find_spec("medrecon_fake_optional") is not None
    monai_import.lean_monai_import()
    with monai_import.monai_import_context():
        assert importlib.util.find_spec("medrecon_fake_optional") is None
        with pytest.raises(ModuleNotFoundError):
            import medrecon_fake_optional  # noqa: F401
    import medrecon_fake_optional  # noqa: F401, F811  (importable again afterwards)

    monkeypatch.setitem(sys.modules, "monai", object())  # MONAI already imported: no blocking
    sys.modules.pop("medrecon_fake_optional")
    with monai_import.monai_import_context():
        assert importlib.util.find_spec("medrecon_fake_optional") is not None


@pytest.mark.parametrize("lean", [False, True])
def test_monai_sees_a_listed_package_only_without_the_lean_import(tmp_path: Path,
                                                                   lean: bool) -> None:
    """In a fresh interpreter, as ``medrecon`` runs: MONAI's image reader imports ``nrrd``
    when it is installed (here a stand-in on the path); under the lean import MONAI records
    it as absent, the U-Net still builds and runs, and the package imports afterwards."""
    _fake_package(tmp_path, "nrrd")
    code = textwrap.dedent(f"""
        import sys
        import torch
        from medrecon import monai_import
        if {lean}:
            monai_import.lean_monai_import()
        import medrecon.priors.network as network
        cfg = network.NetworkConfig(channels=(8, 8), num_res_blocks=(1, 1),
                                    attention_levels=(False, False), num_head_channels=8,
                                    norm_num_groups=4, num_modalities=0, position_channels=0)
        net = network.build_network(cfg)
        out = net(torch.zeros(1, 1, 8, 8, 8), timesteps=torch.zeros(1))
        import monai.data.image_reader as reader
        import nrrd
        print(tuple(out.shape), reader.has_nrrd, nrrd.VALUE)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(1,", "1,", "8,", "8,", "8)", str(not lean), "1"]
