"""Figures (orientation, aspect, contents, atomic PNG) and the metrics table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medrecon.errors import GeometryError, InputError
from medrecon.metrics import evaluate_volumes
from medrecon.report import _to_ras, _views, format_table, orthogonal_slices_figure


def _read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(str(path))


def test_views_follow_radiological_convention() -> None:
    # RAS+ array (+x Right, +y Anterior, +z Superior) with one bright voxel at the corner.
    a = np.zeros((5, 6, 7))
    a[4, 5, 6] = 1.0  # most Right, most Anterior, most Superior
    axial, coronal, sagittal = _views(a, (4, 5, 6))
    # Axial: patient's right on the image's left, anterior at the top -> top-left corner.
    assert axial.shape == (6, 5) and axial[0, 0] == 1.0
    # Coronal: right on the left, superior at the top -> top-left.
    assert coronal.shape == (7, 5) and coronal[0, 0] == 1.0
    # Sagittal: anterior on the left, superior at the top -> top-left.
    assert sagittal.shape == (7, 6) and sagittal[0, 0] == 1.0


def test_reorientation_makes_views_independent_of_voxel_order(rng: np.random.Generator) -> None:
    ras = rng.random((6, 7, 8))
    ras_affine = np.diag([1.0, 2.0, 3.0, 1.0])
    # The same image stored in LPS voxel order with axes permuted to (z, x, y).
    lps = ras[::-1, ::-1, :].transpose(2, 0, 1)
    lps_affine = np.zeros((4, 4))
    lps_affine[2, 0] = 3.0  # voxel axis 0 -> +z (S)
    lps_affine[0, 1] = -1.0  # voxel axis 1 -> -x (L)
    lps_affine[1, 2] = -2.0  # voxel axis 2 -> -y (P)
    lps_affine[3, 3] = 1.0
    a, sp_a, _ = _to_ras({"v": ras}, ras_affine, (1, 1, 1))
    b, sp_b, origin = _to_ras({"v": lps}, lps_affine, (1, 1, 1))
    np.testing.assert_array_equal(a["v"], b["v"])
    assert sp_a == sp_b == (1.0, 2.0, 3.0)
    assert origin == [(1, True), (2, True), (0, False)]


def test_figure_is_written_with_expected_layout(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = np.zeros((24, 20, 10), dtype=np.float32)
    ref[4:20, 4:16, 2:8] = 1.0
    rec = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    path = tmp_path / "fig.png"
    mask = ref > 0
    out = orthogonal_slices_figure(
        {"Reference": ref, "Recon": rec, "Mean": 0.5 * (rec + ref)},
        path,
        affine=np.diag([-1.0, -1.0, 2.5, 1.0]),
        std={"Std": np.abs(rec - ref)},
        mask=mask,
        annotations={"Recon": "PSNR 26 dB"},
        units="HU",
        title="test",
    )
    assert out == path and path.is_file()
    img = _read_png(path)
    # 3 images + 2 error maps + 1 std map = 6 rows of roughly square panels: a tall figure.
    assert img.shape[0] > 1.5 * img.shape[1]
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    # Coloured pixels exist (inferno/viridis maps and the cyan mask outline).
    rgb = img[..., :3]
    assert (rgb.max(axis=-1) - rgb.min(axis=-1)).max() > 0.5


def test_figure_without_affine_uses_spacing(tmp_path: Path) -> None:
    ref = np.zeros((16, 16, 4), dtype=np.float32)
    ref[4:12, 4:12, :] = 1.0
    tall = orthogonal_slices_figure({"ref": ref, "rec": ref * 0.9}, tmp_path / "a.png",
                                    spacing=(1.0, 1.0, 8.0))
    flat = orthogonal_slices_figure({"ref": ref, "rec": ref * 0.9}, tmp_path / "b.png",
                                    spacing=(1.0, 1.0, 3.0))  # not thin enough to stack
    # Thick slices stretch the views that show the k axis; rows keep their height, so the
    # figure gets narrower relative to its height.
    t, f = _read_png(tall), _read_png(flat)
    assert t.shape[1] / t.shape[0] < 0.8 * f.shape[1] / f.shape[0]


def test_thin_slab_stacks_coronal_above_sagittal(tmp_path: Path) -> None:
    """A slab far thinner than it is wide: the two short strips share one column, so the
    figure loses the third column that would hold mostly blank rows."""
    thin = np.zeros((32, 32, 6), dtype=np.float32)
    thin[8:24, 8:24, 1:5] = 1.0
    cube = np.zeros((32, 32, 32), dtype=np.float32)
    cube[8:24, 8:24, 8:24] = 1.0
    a = _read_png(orthogonal_slices_figure({"ref": thin, "rec": thin * 0.9}, tmp_path / "a.png"))
    b = _read_png(orthogonal_slices_figure({"ref": cube, "rec": cube * 0.9}, tmp_path / "b.png"))
    assert abs(a.shape[0] / b.shape[0] - 1.0) < 0.05  # rows as tall as the axial view
    assert a.shape[1] < 0.85 * b.shape[1]  # two panel columns instead of three


def test_figure_errors(tmp_path: Path) -> None:
    ref = np.zeros((8, 8, 8))
    with pytest.raises(InputError, match="at least one"):
        orthogonal_slices_figure({}, tmp_path / "x.png")
    with pytest.raises(InputError, match="not one of"):
        orthogonal_slices_figure({"a": ref}, tmp_path / "x.png", reference="b")
    with pytest.raises(InputError, match="error of 'c'"):
        orthogonal_slices_figure({"a": ref}, tmp_path / "x.png", error_of=["c"])
    with pytest.raises(GeometryError, match="shape"):
        orthogonal_slices_figure({"a": ref, "b": ref[:4]}, tmp_path / "x.png")
    with pytest.raises(InputError, match="3D"):
        orthogonal_slices_figure({"a": ref[0]}, tmp_path / "x.png")
    with pytest.raises(InputError, match="window"):
        orthogonal_slices_figure({"a": ref}, tmp_path / "x.png", window=(1.0, 0.0))
    assert not (tmp_path / "x.png").exists()


def test_format_table_states_range_and_region(rng: np.random.Generator) -> None:
    ref = rng.random((8, 9, 10)) * 100
    res = evaluate_volumes(ref + rng.standard_normal(ref.shape), ref, data_range=120.0)
    text = format_table(res, units="HU")
    assert "Data range: 120 HU (user)" in text
    assert "whole volume (720 voxels)" in text
    assert "per slice along k (10 slices)" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert float(lines["PSNR"][2]) == pytest.approx(res.volume["psnr"], abs=0.01)
    assert float(lines["SSIM"][1]) == pytest.approx(res.volume["ssim"], abs=1e-4)
    summary = res.slice_summary()
    assert float(lines["NMSE"][2]) == pytest.approx(summary["nmse"]["min"], rel=1e-3)
    assert float(lines["HFEN"][4]) == pytest.approx(summary["hfen"]["max"], rel=1e-3)


def test_metric_writers(tmp_path: Path, rng: np.random.Generator) -> None:
    import csv
    import json

    from medrecon.report import write_metrics_csv, write_metrics_json

    ref = rng.random((6, 7, 5))
    mask = np.zeros(ref.shape, dtype=bool)
    mask[1:5, 1:6, 1:4] = True
    res = evaluate_volumes(ref, ref, mask=mask)  # PSNR +inf, slices 0 and 4 outside the mask
    j = write_metrics_json(res, tmp_path / "m.json", extra={"units": "HU"})
    doc = json.loads(j.read_text())
    assert doc["units"] == "HU" and set(doc["metric_definitions"]) == {"psnr", "ssim", "nmse",
                                                                        "hfen"}
    assert doc["volume"]["psnr"] is None and doc["slices"][0]["ssim"] is None
    assert doc["slices"][2]["ssim"] == pytest.approx(1.0) and doc["region_voxels"] == 60
    c = write_metrics_csv(res, tmp_path / "m.csv")
    with c.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slice"] for r in rows] == ["0", "1", "2", "3", "4", "volume"]
    assert rows[0]["psnr"] == "nan" and rows[2]["psnr"] == "inf" and rows[5]["voxels"] == "60"


def _figure_texts(monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> tuple[list[str], list]:
    """Draw a small figure and return every text drawn on it and its colour bars' extends."""
    from matplotlib.figure import Figure

    captured: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: object, **kw: object) -> None:
        captured.append(self)
        original(self, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    orthogonal_slices_figure(**kwargs)  # type: ignore[arg-type]
    fig = captured[0]
    from matplotlib.text import Text

    texts = [t.get_text() for t in fig.findobj(Text)]
    texts += [ax.get_ylabel() for ax in fig.axes]
    return texts, fig.axes


def test_figure_states_units_convention_region_and_std(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ref = np.zeros((12, 10, 8), np.float32)
    ref[3:9, 3:7, 2:6] = 1.0
    rec = ref + 0.1
    mask = ref > 0.5
    long_title = "recon_" + "x" * 150 + ".nii.gz vs reference.nii.gz"
    texts, _ = _figure_texts(
        monkeypatch, volumes={"Reference": ref, "Recon": rec}, path=tmp_path / "f.png",
        affine=np.diag([2.0, 2.0, 2.0, 1.0]), std={"Posterior std": np.abs(rec - ref)},
        mask=mask, units="a.u.", title=long_title, footnote="Metrics over: the mask.")
    joined = "\n".join(texts)
    assert "Intensity [a.u.]" in texts and "|Error| [a.u.]" in texts
    assert "Standard deviation [a.u.]" in texts
    assert "Radiological convention: patient's right on the image's left" in joined
    assert "Cyan outline on the reference: the evaluation region." in joined
    assert "Metrics over: the mask." in joined
    title = next(t for t in texts if t.startswith("recon_"))
    assert "\n" in title and max(len(line) for line in title.splitlines()) < 120  # wrapped


def test_figure_without_affine_says_so_and_marks_clipped_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = np.linspace(-1000, 1000, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    texts, axes = _figure_texts(monkeypatch, volumes={"Reference": ref}, path=tmp_path / "f.png",
                                window=(-160.0, 240.0), units="HU")
    assert any("No affine given: panels show voxel axes" in t for t in texts)
    cbar = axes[-1]
    assert cbar.get_ylabel() == "Intensity [HU]"
    # Values beyond the window on both sides: the colour bar shows both arrows.
    assert cbar._colorbar.extend == "both"  # type: ignore[attr-defined]


def _image_axes(axes: list) -> list:
    return [ax for ax in axes if ax.images and not hasattr(ax, "_colorbar")]


def test_single_slice_gets_one_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = np.zeros((20, 16, 1), np.float32)
    ref[4:16, 3:13] = 1.0
    texts, axes = _figure_texts(
        monkeypatch, volumes={"Reference": ref, "Recon": 0.9 * ref}, path=tmp_path / "f.png",
        affine=np.diag([1.0, 1.0, 3.0, 1.0]), mask=ref > 0.5, std={"Std": 0.1 * ref})
    panels = _image_axes(axes)
    assert len(panels) == 4  # reference, recon, error, std: one axial panel each
    assert any(t.startswith("Axial") for t in texts)
    assert not any(t.startswith(("Coronal", "Sagittal")) for t in texts)
    assert all(ax.images[0].get_array().shape == (16, 20) for ax in panels)  # no 1-pixel strip
    # A thin slab of 3 slices keeps the axial view only as well; 4 slices show all three.
    _, axes = _figure_texts(monkeypatch, volumes={"r": np.repeat(ref, 3, axis=2)},
                            path=tmp_path / "g.png")
    assert len(_image_axes(axes)) == 1
    _, axes = _figure_texts(monkeypatch, volumes={"r": np.repeat(ref, 4, axis=2)},
                            path=tmp_path / "h.png")
    assert len(_image_axes(axes)) == 3


def test_default_windows_are_robust_percentiles_of_the_region(
        tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = rng.uniform(100.0, 200.0, size=(16, 16, 8)).astype(np.float32)
    region = np.zeros(ref.shape, dtype=bool)
    region[2:14, 2:14, 1:7] = True
    ref[~region] = -3000.0  # far outside the region's values: must not set the window
    ref[8, 8, 4] = 1e6  # one hot voxel inside
    a = ref + rng.normal(0, 5, ref.shape).astype(np.float32)
    b = ref + rng.normal(0, 10, ref.shape).astype(np.float32)
    b[~region] += 5000.0  # huge errors outside the region do not stretch the error scale
    _, axes = _figure_texts(monkeypatch, volumes={"Reference": ref, "A": a, "B": b},
                            path=tmp_path / "f.png", mask=region)
    panels = _image_axes(axes)
    lo, hi = panels[0].images[0].get_clim()
    expected = np.percentile(ref[region], [0.5, 99.5])
    assert (lo, hi) == pytest.approx(tuple(expected))
    assert 100.0 <= lo < hi < 1e6
    err_clims = {tuple(ax.images[0].get_clim()) for ax in panels[9:]}
    assert len(err_clims) == 1  # one shared error scale for A and B
    emax = np.percentile(np.concatenate([np.abs(a - ref)[region], np.abs(b - ref)[region]]), 99)
    assert err_clims.pop()[1] == pytest.approx(emax, rel=1e-5)


def test_blank_voxels_show_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = np.full((12, 12, 4), 40.0, np.float32)
    pad = np.zeros(ref.shape, dtype=bool)
    pad[:3] = True
    ref[pad] = -3024.0
    rec = np.where(pad, -1000.0, ref + 1.0).astype(np.float32)
    _, axes = _figure_texts(monkeypatch, volumes={"Reference": ref, "Recon": rec},
                            path=tmp_path / "f.png", blank=pad)
    err = _image_axes(axes)[6].images[0].get_array()  # the axial error view
    assert np.isnan(np.asarray(err, dtype=float)).any()
    assert np.nanmax(np.asarray(err, dtype=float)) == pytest.approx(1.0)
