"""Candidate CT TV weight rules scored on the curves of ``autotune_ct_holdout.py`` (issue 13).

Reads the JSON lines that ``benchmarks/autotune_ct_holdout.py --splits 3 --sure`` writes (the
PSNR curve on all views, the held-out curves of three interleaved splits with their residual
spectra, the Monte-Carlo SURE curve) and prints, per case, each rule's pick (x the oracle) and
its loss in dB against the oracle (PSNR interpolated in log lam). Every rule uses the
measurement alone; none is fitted to these cases.

    python benchmarks/autotune_ct_rules.py ct.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

Rule = Callable[[dict], float]


def _grid_min(lams: list[float], err: np.ndarray) -> float:
    return float(lams[int(np.argmin(err))])


def _vertex(lams: list[float], err: np.ndarray) -> float:
    """Vertex of the parabola through log(err) at the grid minimum and its two neighbours
    (log lam axis), clamped to that bracket; the grid minimum at an end of the grid."""
    i = int(np.argmin(err))
    if i == 0 or i == len(lams) - 1:
        return float(lams[i])
    x = np.log(np.asarray(lams[i - 1:i + 2]))
    y = np.log(np.asarray(err[i - 1:i + 2]))
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return float(lams[i])
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))


def _heldout(row: dict, splits: int, weight: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> np.ndarray:
    """Sum over the first ``splits`` splits of the held-out residual energy relative to the
    held-out data's (a frequency weighting of the residual spectra when ``weight`` is given:
    a function of the detector frequency in cycles/mm)."""
    total = np.zeros(len(row["lams"]))
    for s in row["splits"][:splits]:
        spec = np.asarray(s["spec"])  # (weights, bins)
        f = np.arange(spec.shape[1]) / (2 * (spec.shape[1] - 1) * row["det_mm"])
        w = np.ones_like(f) if weight is None else weight(f)
        total += (spec * w).sum(axis=1) / max(float((np.asarray(s["y_spec"]) * w).sum()), 1e-30)
    return total


def _fov_mm(row: dict) -> float:
    return float(row["shape"][0] * row["spacing_mm"][0])


def _band(row: dict, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Detector frequencies below ``factor`` x the angular Nyquist of the training views,
    n_t / (pi FOV) cycles/mm."""
    n_t = row["views"] * 6 / 7
    cut = factor * n_t / (math.pi * _fov_mm(row))
    return lambda f: (f <= cut).astype(float)


def _cap(lam: float, lams: list[float], misfit: list[float]) -> float:
    """The held-out pick capped at the training misfit's crossing of 1 (the opt-in rule)."""
    pairs = sorted((m, r) for m, r in zip(lams, misfit, strict=True) if m <= lam)
    if pairs and pairs[-1][1] < 1.0:
        return lam
    for (l0, r0), (l1, r1) in zip(pairs[-2::-1], pairs[::-1], strict=False):
        if r0 < 1.0:
            t = -math.log(r0) / (math.log(r1) - math.log(r0))
            return float(math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))))
    return lam


def _gated(row: dict, sure: list[float], z: float = 2.0) -> float:
    """SURE's weight, unless the held-out views (split 0) prefer the held-out pick over it by
    more than ``z`` standard errors of the mean per-view difference."""
    lams = row["lams"]
    s = row["splits"][0]
    i_h, i_s = int(np.argmin(s["heldout"])), int(np.argmin(sure))
    if "view_err" not in s or i_h == i_s:
        return float(lams[i_h])
    d = np.asarray(s["view_err"][i_s]) - np.asarray(s["view_err"][i_h])
    t = d.mean() / max(d.std(ddof=1) / math.sqrt(d.size), 1e-30)
    return float(lams[i_h] if t > z else lams[i_s])


def _curve(row: dict, values: list[float] | np.ndarray, lam: float) -> float:
    return float(np.interp(np.log(lam), np.log(row["lams"]), np.asarray(values)))


def _library_risk(row: dict, parabola: bool = False) -> float:
    """The library's search on the summed risk (curves interpolated in log lam): coarse grid,
    half steps around its minimum, the minimum (``parabola``: the vertex through it and its
    two tried neighbours)."""
    total = sum(_risks(row))
    tried = [1e-3 * 8 ** (k / 2) for k in range(-2, 3)]
    i = int(np.argmin([_curve(row, total, t) for t in tried]))
    step = 8 ** 0.25
    tried = sorted([*tried, tried[i] / step, tried[i] * step])
    values = np.asarray([_curve(row, total, t) for t in tried])
    if parabola:
        return _vertex(tried, values - values.min() + 1e-3 * abs(values.min()) + 1e-12)
    return float(tried[int(np.argmin(values))])


def _library_grid(row: dict, sure: bool = True) -> float:
    """The library's search emulated on the curves (interpolated in log lam): the coarse grid
    1e-3 x 8^(-1, -1/2, 0, 1/2, 1), refined by half steps around the held-out minimum; SURE
    read at the same weights; the geometric mean of the two minima (the held-out one alone
    without ``sure``)."""
    held = _heldout(row, 1)
    tried = [1e-3 * 8 ** (k / 2) for k in range(-2, 3)]
    i = int(np.argmin([_curve(row, held, t) for t in tried]))
    step = 8 ** 0.25
    tried += [tried[i] / step, tried[i] * step]
    lam_h = min(tried, key=lambda t: _curve(row, held, t))
    if not sure:
        return lam_h
    lam_s = min(tried, key=lambda t: _curve(row, row["splits"][0]["sure"], t))
    return math.sqrt(lam_h * lam_s)


def _risks(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-ray risk estimates of split 0 (1/mm^2): SURE's in-sample risk on the training
    views, ``sigma^2 SURE``, and the held-out views' mean squared residual less the noise
    variance ``sigma^2``."""
    s, var = row["splits"][0], row["noise_std"] ** 2
    n_det = 2 * (len(s["y_spec"]) - 1)
    held = np.asarray(s["view_err"]).mean(axis=1) / n_det - var
    return var * np.asarray(s["sure"]), held


RULES: dict[str, Rule] = {
    "held-out (1 split, default)": lambda r: _grid_min(r["lams"], _heldout(r, 1)),
    "1 split, parabola": lambda r: _vertex(r["lams"], _heldout(r, 1)),
    "2 splits": lambda r: _grid_min(r["lams"], _heldout(r, 2)),
    "2 splits, parabola": lambda r: _vertex(r["lams"], _heldout(r, 2)),
    "3 splits": lambda r: _grid_min(r["lams"], _heldout(r, 3)),
    "3 splits, parabola": lambda r: _vertex(r["lams"], _heldout(r, 3)),
    "half-ramp, 2 splits": lambda r: _grid_min(r["lams"], _heldout(r, 2, np.abs)),
    "band < Nyq_t, 2 splits": lambda r: _grid_min(r["lams"], _heldout(r, 2, _band(r, 1.0))),
    "band < 2 Nyq_t, 2 splits": lambda r: _grid_min(r["lams"], _heldout(r, 2, _band(r, 2.0))),
    "band > Nyq_t, 2 splits": lambda r: _grid_min(
        r["lams"], _heldout(r, 2, lambda f: 1.0 - _band(r, 1.0)(f))),
    "SURE (all views)": lambda r: _grid_min(r["lams"], np.asarray(r["sure"])),
    "SURE, parabola": lambda r: _vertex(r["lams"], np.asarray(r["sure"]) + 1.0),
    "SURE (training views)": lambda r: _grid_min(r["lams"], np.asarray(r["splits"][0]["sure"])),
    "SURE_t unless held-out t>2": lambda r: _gated(r, r["splits"][0]["sure"]),
    "SURE_t unless held-out t>1": lambda r: _gated(r, r["splits"][0]["sure"], 1.0),
    "geo-mean SURE_t, held-out": lambda r: math.sqrt(
        _grid_min(r["lams"], np.asarray(r["splits"][0]["sure"]))
        * _grid_min(r["lams"], _heldout(r, 1))),
    "geo-mean SURE (all), held-out": lambda r: math.sqrt(
        _grid_min(r["lams"], np.asarray(r["sure"])) * _grid_min(r["lams"], _heldout(r, 1))),
    "geo-mean SURE_t, 2-split held-out": lambda r: math.sqrt(
        _grid_min(r["lams"], np.asarray(r["splits"][0]["sure"]))
        * _grid_min(r["lams"], _heldout(r, 2))),
    "geo-mean discrepancy, held-out": lambda r: math.sqrt(
        _cap(8.0, r["lams"], r["splits"][0]["train_misfit"])
        * _grid_min(r["lams"], _heldout(r, 1))),
    "library grid: held-out": lambda r: _library_grid(r, False),
    "library grid: geo-mean SURE_t, held-out": _library_grid,
    "risk sum: SURE_t + held-out": lambda r: _grid_min(r["lams"], sum(_risks(r))),
    "risk sum, parabola": lambda r: _vertex(
        r["lams"], sum(_risks(r)) - min(sum(_risks(r))) + 1e-3 * abs(min(sum(_risks(r))))),
    "library grid: risk sum": _library_risk,
    "library grid: risk sum, parabola": lambda r: _library_risk(r, True),
    "risk: SURE_t + held-out / 2": lambda r: _grid_min(
        r["lams"], _risks(r)[0] + 0.5 * _risks(r)[1]),
    "discrepancy cap (opt-in)": lambda r: _cap(_grid_min(r["lams"], _heldout(r, 1)), r["lams"],
                                               r["splits"][0]["train_misfit"]),
}


def _loss(row: dict, lam: float) -> float:
    top = max(row["psnr"])
    return top - float(np.interp(np.log(lam), np.log(row["lams"]), row["psnr"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--rules", default="", help="rule names separated by ; (default: all)")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for f in args.files for line in f.read_text().splitlines()
            if line.strip()]
    rows = [r for r in rows if "splits" in r and "sure" in r]
    names = [n for n in RULES if not args.rules or n in args.rules.split(";")]
    if not all("sure" in r["splits"][0] for r in rows):
        names = [n for n in names if "SURE_t" not in n and "training" not in n]
    heads = [f"{r['shape'][0]}^2 {r['spacing_mm'][0]:.2g} mm {r['views']}v s{r['seed'] % 10}"
             f"{' tex' if r.get('texture') else ''}" for r in rows]
    print("| rule | " + " | ".join(heads) + " | worst |")
    print("|---" * (len(rows) + 2) + "|")
    print("| oracle weight (PSNR) | " + " | ".join(
        f"{r['oracle']['lam']:.2g} ({r['oracle']['psnr']:.2f})" for r in rows) + " | |")
    for name in names:
        cells, worst = [], 0.0
        for r in rows:
            lam = RULES[name](r)
            loss = _loss(r, lam)
            worst = max(worst, loss)
            cells.append(f"{lam / r['oracle']['lam']:.2f}x / {loss:.2f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {worst:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
