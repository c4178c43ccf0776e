"""``medrecon.batch.reconstruct_many``: many measurements in one process or sharded over gloo
ranks give exactly the outputs of single ``reconstruct`` calls, skip complete outputs, report
failing inputs and gather one summary table."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from medrecon.batch import BatchItem, collect_items, read_manifest, reconstruct_many, shard
from medrecon.errors import InputError
from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.measurement import read_measurement, write_measurement
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.base import ReconOptions
from medrecon.reconstruct import reconstruct, settings_path
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

SHAPE = (12, 10, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
CG = ReconOptions(iterations=5, device="cpu")


def _study(i: int) -> Volume:
    """A phantom that differs per study (scaled and shifted), so a swapped output shows."""
    data = (50 + 10 * i) * np.roll(shepp_logan_3d(SHAPE), i, axis=0)
    return Volume(data.astype(np.float32), AFFINE, modality="MR", series_description=f"s{i}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four MR measurements m0..m3.h5 with references ref0..ref3.nii.gz."""
    d = tmp_path_factory.mktemp("dataset")
    cfg = SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0, calibration=4))
    for i in range(4):
        vol = _study(i)
        save_volume(vol, d / f"ref{i}.nii.gz")
        write_measurement(simulate(vol, cfg), d / f"m{i}.h5")
    return d


def _items(d: Path) -> list[BatchItem]:
    return [BatchItem(d / f"m{i}.h5") for i in range(4)]


def _single(d: Path, out: Path, method: str, options: ReconOptions) -> None:
    """What four separate ``reconstruct`` calls write (volume as NIfTI)."""
    out.mkdir()
    for i in range(4):
        res = reconstruct(read_measurement(d / f"m{i}.h5"), method, options)
        save_volume(res.volume, out / f"m{i}.nii.gz")


def _assert_same_outputs(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        va, vb = load_volume(a / f"{name}.nii.gz"), load_volume(b / f"{name}.nii.gz")
        assert np.array_equal(va.data, vb.data), name
        assert np.array_equal(va.affine, vb.affine), name


def test_one_process_equals_single_reconstruct_calls(dataset: Path, tmp_path: Path,
                                                     one_thread: None) -> None:
    _single(dataset, tmp_path / "single", "cg-sense", CG)
    out = tmp_path / "batch"
    rows = reconstruct_many(_items(dataset), "cg-sense", CG, out)
    names = [f"m{i}" for i in range(4)]
    _assert_same_outputs(out, tmp_path / "single", names)
    # each output is different (the studies differ) and has its settings file
    assert not np.array_equal(load_volume(out / "m0.nii.gz").data,
                              load_volume(out / "m1.nii.gz").data)
    assert all(settings_path(out / f"{n}.nii.gz").is_file() for n in names)
    assert "method: cg-sense" in settings_path(out / "m2.nii.gz").read_text()
    assert [r.status for r in rows] == ["ok"] * 4
    assert all(r.residual is not None and 0 < r.residual < 1 for r in rows)
    assert all(r.psnr is None for r in rows)  # no references given
    table = json.loads((out / "summary.json").read_text())
    assert [t["input"] for t in table] == [str(dataset / f"m{i}.h5") for i in range(4)]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("input,output,method,status,seconds,residual,psnr,ssim,nmse")
    assert len(csv_lines) == 5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_rerun_skips_complete_outputs_and_redoes_incomplete(dataset: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "batch"
    reconstruct_many(_items(dataset), "cg-sense", CG, out)
    settings_path(out / "m1.nii.gz").unlink()  # as if the run had died while writing m1
    before = {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in ("m0", "m2", "m3")}
    rows = reconstruct_many(_items(dataset), "cg-sense", CG, out)
    assert [r.status for r in rows] == ["skipped", "ok", "skipped", "skipped"]
    assert rows[0].residual is None and rows[1].residual is not None
    assert settings_path(out / "m1.nii.gz").is_file()
    assert before == {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in before}
    assert [t["status"] for t in json.loads((out / "summary.json").read_text())] == \
        ["skipped", "ok", "skipped", "skipped"]


def test_a_corrupt_input_fails_alone(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an HDF5 file" * 10)
    items = [BatchItem(dataset / "m0.h5"), BatchItem(bad), BatchItem(dataset / "m1.h5")]
    seen: list[str] = []
    rows = reconstruct_many(items, "cg-sense", CG, tmp_path / "out",
                            report=lambda r: seen.append(r.status))
    assert seen == ["ok", "failed", "ok"]
    assert rows[1].status == "failed" and "bad.h5" in rows[1].error
    assert "\n" not in rows[1].error
    assert (tmp_path / "out" / "m0.nii.gz").is_file() and (tmp_path / "out" / "m1.nii.gz").is_file()
    assert not (tmp_path / "out" / "bad.nii.gz").exists()


def test_references_give_metrics(dataset: Path, tmp_path: Path) -> None:
    items = [BatchItem(dataset / "m0.h5", dataset / "ref0.nii.gz", "first"),
             BatchItem(dataset / "m1.h5")]
    rows = reconstruct_many(items, "cg-sense", CG, tmp_path)
    assert rows[0].output == str(tmp_path / "first.nii.gz")
    assert rows[0].psnr is not None and rows[0].psnr > 15
    assert rows[0].ssim is not None and 0 < rows[0].ssim <= 1
    assert rows[0].nmse is not None and 0 < rows[0].nmse < 1
    assert rows[1].psnr is None and rows[1].ssim is None
    # against the wrong study the PSNR drops: the metrics use the row's own reference
    wrong = reconstruct_many([BatchItem(dataset / "m0.h5", dataset / "ref3.nii.gz", "wrong")],
                             "cg-sense", CG, tmp_path / "w")
    assert wrong[0].psnr is not None and wrong[0].psnr < rows[0].psnr - 3


def test_fbp_and_tiny_diffusion_equal_single_calls(tmp_path: Path, one_thread: None) -> None:
    from prior_factory import export_tiny_prior

    d = tmp_path / "data"
    d.mkdir()
    ct_cfg = SimulationConfig(modality="ct", ct=CTSettings(views=12))
    mr_cfg = SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0, calibration=4))
    for i in range(2):
        vol = _study(i)
        ct = Volume(vol.data * 20 - 1000, AFFINE, modality="CT", units="HU")
        write_measurement(simulate(ct, ct_cfg), d / f"ct{i}.h5")
        write_measurement(simulate(vol, mr_cfg), d / f"mr{i}.h5")
    fbp = ReconOptions(device="cpu")
    rows = reconstruct_many([BatchItem(d / f"ct{i}.h5") for i in range(2)], "fbp", fbp,
                            tmp_path / "fbp")
    assert [r.status for r in rows] == ["ok", "ok"], rows
    for i in range(2):
        single = reconstruct(read_measurement(d / f"ct{i}.h5"), "fbp", fbp)
        save_volume(single.volume, tmp_path / f"ct{i}.nii.gz")
    _assert_same_outputs(tmp_path / "fbp", tmp_path, ["ct0", "ct1"])

    prior = export_tiny_prior(tmp_path / "prior")
    dm = ReconOptions(iterations=2, device="cpu",
                      extra={"prior": str(prior), "samples": 2, "seed": 3, "guard": False})
    out = tmp_path / "dm"
    rows = reconstruct_many([BatchItem(d / f"mr{i}.h5") for i in range(2)], "diffusion", dm,
                            out)
    assert [r.status for r in rows] == ["ok", "ok"], rows
    for i in range(2):
        single = reconstruct(read_measurement(d / f"mr{i}.h5"), "diffusion", dm)
        assert single.std_volume is not None
        assert np.array_equal(load_volume(out / f"mr{i}.nii.gz").data,
                              load_volume(save_volume(single.volume, tmp_path / "s.nii.gz")).data)
        assert np.array_equal(load_volume(out / f"mr{i}_std.nii.gz").data,
                              load_volume(save_volume(single.std_volume,
                                                      tmp_path / "s_std.nii.gz")).data)
    assert "seed: 3" in settings_path(out / "mr1.nii.gz").read_text()


def test_collect_items_folders_manifests_and_mistakes(dataset: Path, tmp_path: Path) -> None:
    assert [it.output_name for it in collect_items([dataset])] == ["m0", "m1", "m2", "m3"]
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"measurement,reference,output\n{dataset / 'm0.h5'},,a\n"
                        f"{dataset / 'm1.h5'},{dataset / 'ref1.nii.gz'},\n")
    items = read_manifest(manifest)
    assert [(it.output_name, it.reference) for it in items] == \
        [("a", None), ("m1", dataset / "ref1.nii.gz")]
    with pytest.raises(InputError, match="would write the same output 'm0'"):
        collect_items([dataset / "m0.h5", dataset])
    (tmp_path / "bad.csv").write_text("file\nm0.h5\n")
    with pytest.raises(InputError, match="needs a header with a 'measurement' column"):
        collect_items([tmp_path / "bad.csv"])
    with pytest.raises(InputError, match="does not exist"):
        collect_items([tmp_path / "missing.h5"])
    assert shard(5, 0, 2) == [0, 2, 4] and shard(5, 1, 2) == [1, 3]


# --------------------------------------------------------------------------- two gloo ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rows = reconstruct_many(_items(Path(data)), "cg-sense", CG, Path(out))
    # every rank gets every rank's rows back
    (Path(out).parent / f"rows{rank}.json").write_text(
        json.dumps([[r.input, r.status, r.rank] for r in rows]))


@pytest.mark.timeout(180)
def test_two_gloo_ranks_equal_one_process(dataset: Path, tmp_path: Path,
                                          one_thread: None) -> None:
    _single(dataset, tmp_path / "single", "cg-sense", CG)
    out = tmp_path / "ddp"
    mp.start_processes(_rank_worker, args=(2, _free_port(), str(dataset), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    _assert_same_outputs(out, tmp_path / "single", [f"m{i}" for i in range(4)])
    table = json.loads((out / "summary.json").read_text())
    assert [(t["input"], t["rank"], t["status"]) for t in table] == \
        [(str(dataset / f"m{i}.h5"), i % 2, "ok") for i in range(4)]
    rows0 = json.loads((tmp_path / "rows0.json").read_text())
    assert rows0 == json.loads((tmp_path / "rows1.json").read_text()) and len(rows0) == 4
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("summary")) == \
        ["summary.csv", "summary.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ct_measurements_of_one_geometry_share_one_projector(tmp_path: Path) -> None:
    """A batch of one CT protocol builds its projector (ray tables, sparse matrix) once, and the
    reused projector gives exactly what a freshly built one gives."""
    import medrecon.problem as problem_module
    from medrecon.problem import measurement_problem

    def ct(i: int) -> Volume:
        return Volume(_study(i).data * 20 - 1000, AFFINE, modality="CT", units="HU")

    m = [simulate(ct(i), SimulationConfig(modality="ct", ct=CTSettings(views=v)))
         for i, v in ((0, 10), (1, 10), (0, 12))]
    first = measurement_problem(m[0]).op
    assert measurement_problem(m[1]).op is first  # same geometry, other study
    assert measurement_problem(m[2]).op is not first  # 12 views: another projector
    opts = ReconOptions(iterations=3, device="cpu")
    reused = [reconstruct(x, "sirt", opts).volume.data for x in m[:2]]
    problem_module._PROJECTOR_CACHE.clear()
    assert np.array_equal(reconstruct(m[1], "sirt", opts).volume.data, reused[1])
    assert not np.array_equal(reused[0], reused[1])
