"""CT TV's self-tuning risk against the true PSNR on a quarter-octave grid (issue 13).

Is the self-tuned weight's gap to the oracle a resolution artefact of the search (the true
optimum between the tried weights, the risk flat near its minimum) or a bias of the risk?
For one case (a synthetic head slab or, with ``--volume``, the central slices of a CT NIfTI
in HU; parallel beam, ``--views`` views, I0 = 1e5, the ``ct30`` / ``ct60`` settings of
``benchmarks/real_quality.py``) every weight is ``1e-3 x 2^(e/4)`` (integer ``e``), so the
library's search (:func:`medrecon.recon.autotune.tune_weight`: ``2^(+-6/4)``, ``2^(+-12/4)``
and the midpoints ``2^(+-3/4)`` beside the best) lies on the grid, and:

* the two terms of the library's criterion (:mod:`medrecon.recon.ct_tune`: SURE's risk on
  the training views and the held-out views' risk, the library's split and probe; two
  training solves per weight) on every weight that the searches below try, and on every
  quarter-octave weight within ``--risk-span`` steps of the former rule's pick;
* the true PSNR from all views (one solve per weight; region above -900 HU, data range the
  reference's max - min) from that pick toward the higher PSNR until the optimum is
  bracketed, ``--psnr-pad`` more steps on each side: the fine oracle;
* the same two terms in the ramp-weighted energy that stands for the image's
  (:class:`~medrecon.recon.sure.SpectralEnergy`; SURE with the weighted misfit and
  divergence), from the same solves;
* the picks of the search (:func:`~medrecon.recon.autotune.tune_weight`) on SURE's term plus
  the held-out term times 1 (the former rule) or 1/3 (the library's rule), and on the ramp's
  terms with 1/3, each on the tried weights and with ``vertex`` (``picks``, the PSNR solved
  at each); ``before`` / ``after``:
  the former sum without / with the vertex.

* with ``--triples``, from a second split that holds out a triple of adjacent views every
  10 views (:func:`_triple_split`; three more training solves per weight): SURE on its
  training views (library and per-ray probe) and the held-out risk of the triples' outer
  views (one view spacing D from the nearest training view, in a gap of 4D) and middle views
  (2D): how the risk grows with the distance from the measured views and with the gap.

All solves run once per weight (memoised; ``--prefill`` reuses an earlier run's); one JSON
line per case to ``--out``. ``--score`` prints each rule's pick (x the oracle) and loss in dB
from such lines (older lines without ``picks``: the PSNR interpolated in log lam on the
stored curve, "out" beyond it, "n/a" where the search needs a weight not stored).

    python benchmarks/autotune_ct_curve.py --volume .devrun/real_cases/ct_spine.nii.gz \\
        --slices 1 --views 30 --out curve.jsonl
    python benchmarks/autotune_ct_curve.py --size 128 --spacing 1.0 --views 30 --head 1 \\
        --out curve.jsonl
    python benchmarks/autotune_ct_curve.py --score curve.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from autotune_ct_holdout import _case

from medrecon.metrics import psnr
from medrecon.problem import ct_ray_variance, measurement_problem
from medrecon.recon import ct
from medrecon.recon.autotune import parabola_vertex, tune_weight
from medrecon.recon.ct_tune import holdout_problems
from medrecon.recon.sure import SpectralEnergy, SureProbe, heldout_risk, sure, sure_probe
from medrecon.simulate import CTSettings, SimulationConfig, simulate

BASE = ct.DEFAULT_TV_LAM


def _lam(e: int) -> float:
    return BASE * 2.0 ** (e / 4)


def _index(lam: float) -> int:
    e = round(4 * math.log2(lam / BASE))
    assert abs(_lam(e) / lam - 1.0) < 1e-9, lam
    return e


#: The rules scored: (energy, weight of the held-out term). Energies: "plain", the data's
#: (the former rules), and "ramp", both terms in the ramp-weighted energy that stands for the
#: image's (:class:`~medrecon.recon.sure.SpectralEnergy`); weights: the former sum (1) and a
#: third (the geometry of ct_tune's docstring).
RULES = (("plain", 1.0), ("plain", 1.0 / 3.0), ("ramp", 1.0 / 3.0), ("plain-ray", 1.0 / 3.0),
         ("ramp-ray", 1.0 / 3.0))
#: Where each energy's (SURE term, held-out term) lie in a stored tuple of terms ("-ray":
#: SURE's probe with each ray's own noise variance, :func:`_ray_probe`).
_TERMS = {"plain": (0, 1), "ramp": (2, 3), "plain-ray": (4, 1), "ramp-ray": (5, 3)}
_KEYS = ("sure_term", "heldout_term", "sure_ramp", "heldout_ramp", "sure_ray", "sure_ramp_ray")
#: With ``--triples``: the terms of :func:`_triple_split` (SURE, library and per-ray probe, on
#: its training views; the held-out risk of the triples' outer and middle views).
_TRIPLE_KEYS = ("sure3", "sure3_ray", "near3", "far3")
#: A triple of adjacent views is held out every ``_TRIPLE_EVERY`` views.
_TRIPLE_EVERY = 10


def _rule(energy: str, weight: float, vertex: bool) -> str:
    name = f"held x {weight:.3g}" + (" + vertex" if vertex else "")
    return name if energy == "plain" else f"{energy}: {name}"


def _on_grid(lam: float) -> bool:
    q = 4 * math.log2(lam / BASE)
    return abs(q - round(q)) < 1e-9


def _weighted(terms: dict[int, tuple[float, ...]], risk: object, lam: float, energy: str,
              weight: float) -> float:
    """SURE's term plus ``weight`` x the held-out term at ``lam`` in ``energy`` (solved where
    missing)."""
    risk(lam)  # type: ignore[operator]
    i, j = _TERMS[energy]
    t = terms[_index(lam)]
    return t[i] + weight * t[j]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--volume", type=Path, default=None, help="a CT NIfTI in HU instead")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--texture", action="store_true")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--risk-span", type=int, default=3,
                    help="quarter-octave steps each side of the pick with the risk")
    ap.add_argument("--psnr-pad", type=int, default=2,
                    help="PSNR steps beyond the bracketed optimum on each side")
    ap.add_argument("--triples", action="store_true",
                    help="also record the terms of a split holding out triples of views "
                         "(the risk at one and two view spacings; three more solves a weight)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--prefill", type=Path, default=None,
                    help="reuse the solves of this case's rows in this file (JSON lines)")
    ap.add_argument("--score", type=Path, default=None,
                    help="score rules on the stored curves of this file instead")
    args = ap.parse_args(argv)
    if args.score is not None:
        for line in args.score.read_text().splitlines():
            _score_row(json.loads(line))
        return 0
    if args.out is None:
        ap.error("--out is required")
    torch.set_num_threads(1)  # shared cores
    t_start = time.perf_counter()

    vol, seed = _case(args)
    row_case = str(args.volume) if args.volume else "synthetic head"
    ref = vol.data  # type: ignore[attr-defined]
    m = simulate(vol, SimulationConfig(modality="ct", seed=seed,  # type: ignore[arg-type]
                                       ct=CTSettings(geometry="parallel", views=args.views,
                                                     dose_i0=1e5)))
    region, data_range = ref > -900.0, float(ref.max() - ref.min())
    settings = ct.method_settings(ct.TVSettings, {}, "tv")
    dev = torch.device(args.device)
    full = ct._problem(m, dev)
    mw = full.units.mu_water
    assert mw is not None
    solves = 0

    def solve(problem: ct.Problem, lam: float) -> torch.Tensor:
        nonlocal solves
        solves += 1
        return ct._tv_solve(problem, lam, args.iterations, 1e-4, settings)[0].x * mw

    # the library's criterion, as tune_tv_weight builds it (same split, same probe)
    sub, held, _ = holdout_problems(m, dev)
    split_seed = int((m.acquisition or {}).get("seed", 0) or 0)  # the library's split's
    probe = sure_probe(sub, split_seed)
    assert probe is not None
    ramp = SpectralEnergy(int(sub.y.shape[-1]))
    ray = _ray_probe(m, sub, probe)
    triple_terms: dict[int, tuple[float, ...]] = {}  # e -> the terms of _TRIPLE_KEYS
    if args.triples:
        sub3, near3, far3 = _triple_split(m, dev, split_seed)
        probe3 = sure_probe(sub3, split_seed)
        assert probe3 is not None
        ray3 = _ray_probe(m, sub3, probe3)
    # e -> the terms of _KEYS: SURE and held-out, plain and ramp-weighted, SURE per-ray
    terms: dict[int, tuple[float, ...]] = {}

    def risk(lam: float) -> float:
        e = _index(lam)
        if e not in terms:
            x = solve(sub, lam)
            nudged, nudged_ray = solve(probe.nudged, lam), solve(ray.nudged, lam)
            var = sub.noise_std ** 2
            terms[e] = (var * sure(sub, x, nudged, probe), heldout_risk(held, x),
                        var * sure(sub, x, nudged, probe, ramp), heldout_risk(held, x, ramp),
                        var * sure(sub, x, nudged_ray, ray),
                        var * sure(sub, x, nudged_ray, ray, ramp))
            if args.triples:
                x3 = solve(sub3, lam)
                n3, n3_ray = solve(probe3.nudged, lam), solve(ray3.nudged, lam)
                var3 = sub3.noise_std ** 2
                triple_terms[e] = (var3 * sure(sub3, x3, n3, probe3),
                                   var3 * sure(sub3, x3, n3_ray, ray3),
                                   heldout_risk(near3, x3), heldout_risk(far3, x3))
        return terms[e][0] + terms[e][1]

    quality: dict[float, float] = {}
    if args.prefill is not None:  # an earlier run of this case: its solves are not repeated
        for line in args.prefill.read_text().splitlines():
            old = json.loads(line)
            if (old["case"], old["views"], old["seed"], old["shape"]) == (
                    row_case, args.views, seed, list(ref.shape)):
                r = old["risk"]
                keys = _KEYS + (_TRIPLE_KEYS if args.triples else ())
                if all(k in r for k in keys):  # older rows lack some terms
                    terms.update({e: t for e, *t in zip(r["e"], *(r[k] for k in _KEYS),
                                                        strict=True)})
                    if args.triples:
                        triple_terms.update({e: t for e, *t in zip(
                            r["e"], *(r[k] for k in _TRIPLE_KEYS), strict=True)})
                quality.update(zip(old["psnr"]["lam"], old["psnr"]["psnr"], strict=True))

    def score(lam: float) -> float:
        if lam not in quality:
            x = solve(full, lam)
            quality[lam] = psnr(full.units.to_reference(x.cpu().numpy()), ref,
                                data_range=data_range, mask=region)
        return quality[lam]

    _, grid, values = tune_weight(risk, BASE)
    grid = [_lam(_index(g)) for g in grid]  # the same weights, as this grid spells them
    before = grid[int(np.argmin(values))]
    after = parabola_vertex(grid, values)
    library = tune_weight(risk, BASE, vertex=True)[0]  # the library's pick (memoised)
    assert abs(library / after - 1.0) < 1e-9, (library, after)
    q = 4 * math.log2(after / BASE)  # on the grid: as the grid spells it
    after = _lam(round(q)) if abs(q - round(q)) < 1e-9 else after
    eb = _index(before)
    for e in range(eb - args.risk_span, eb + args.risk_span + 1):
        risk(_lam(e))
    # PSNR: climb from the pick until the optimum is bracketed, then pad both sides
    e = eb
    while True:
        up, here, down = (score(_lam(k)) for k in (e + 1, e, e - 1))
        if here >= up and here >= down:
            break
        e += 1 if up > down else -1
    for k in range(e - 1 - args.psnr_pad, e + 2 + args.psnr_pad):
        score(_lam(k))
    picks = {}  # each rule's search (the risks of its weights) and the PSNR at its pick
    for energy, weight in RULES:
        for vertex in (False, True):
            lam = tune_weight(lambda v, g=energy, w=weight: _weighted(terms, risk, v, g, w),
                              BASE, vertex=vertex)[0]
            lam = _lam(_index(lam)) if _on_grid(lam) else lam
            picks[_rule(energy, weight, vertex)] = {"lam": lam, "psnr": score(lam)}
    e_oracle = max((_index(lam) for lam in quality if _on_grid(lam)),
                   key=lambda k: quality[_lam(k)])
    oracle = _lam(e_oracle)
    top = quality[oracle]
    fine = sorted(lam for lam in quality if _on_grid(lam))
    fine_oracle_vertex = parabola_vertex(fine, [-quality[lam] for lam in fine])
    score(after)
    es = sorted(terms)
    row = {
        "case": row_case,
        "shape": list(ref.shape), "spacing_mm": [float(s) for s in full.spacing_mm],
        "views": args.views, "seed": seed, "texture": args.texture,
        "iterations": args.iterations, "noise_std": full.noise_std,
        "risk": {"e": es, "lam": [_lam(k) for k in es],
                 "sure_term": [terms[k][0] for k in es],
                 **{key: [terms[k][i] for k in es] for i, key in enumerate(_KEYS)},
                 **({key: [triple_terms[k][i] for k in es]
                     for i, key in enumerate(_TRIPLE_KEYS)} if args.triples else {}),
                 "total": [terms[k][0] + terms[k][1] for k in es]},
        "tried": {"lam": grid, "risk": values},
        "psnr": {"lam": sorted(quality), "psnr": [quality[lam] for lam in sorted(quality)]},
        "oracle": {"lam": oracle, "psnr": top, "vertex_lam": fine_oracle_vertex},
        "picks": picks,
        "before": {"lam": before, "ratio": before / oracle, "psnr": quality[before],
                   "loss_db": top - quality[before]},
        "after": {"lam": after, "ratio": after / oracle, "psnr": quality[after],
                  "loss_db": top - quality[after]},
        "solves": solves, "seconds": round(time.perf_counter() - t_start, 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("case", "views", "oracle", "before", "after",
                                          "solves", "seconds")}))
    for k in es:
        lam = _lam(k)
        print(f"e={k:+3d} lam={lam:.3e} (sure {terms[k][0]:+.4e}, held {terms[k][1]:+.4e}; "
              f"ramp: sure {terms[k][2]:+.4e}, held {terms[k][3]:+.4e})"
              + (f" psnr={quality[lam]:.3f}" if lam in quality else ""))
    for lam in sorted(quality):
        if not _on_grid(lam) or _index(lam) not in terms:
            print(f"lam={lam:.3e} psnr={quality[lam]:.3f}")
    return 0


def _ray_probe(m: object, sub: ct.Problem, probe: SureProbe) -> SureProbe:
    """SURE's probe with each ray's own noise variance: the direction ``b_i sigma_i / sigma``
    (``sigma_i^2`` from the file's Poisson model, :func:`medrecon.problem.ct_ray_variance`;
    ``sigma`` its RMS, the problem's ``noise_std``), so that the divergence term estimates
    ``tr(Sigma J)`` instead of ``sigma^2 tr(J)``; the same ``b`` and step as ``probe``."""
    var = ct_ray_variance(m, sub.y)  # type: ignore[arg-type]
    assert var is not None, "the per-ray probe needs the file's Poisson model"
    sd = torch.sqrt(var) / sub.noise_std
    direction = (probe.direction.double() * sd).to(sub.y.dtype)
    return SureProbe(dataclasses.replace(sub, y=sub.y + probe.eps * direction), direction,
                     probe.eps)


def _triple_split(m: object, dev: torch.device,
                  seed: int) -> tuple[ct.Problem, ct.Problem, ct.Problem]:
    """(training, near, far) problems of a split that holds out triples of adjacent views, one
    triple every ``_TRIPLE_EVERY`` views (offset by the seed): the outer views of a triple lie
    one view spacing D from the nearest training view (as the library's held-out views), the
    middle one 2D; from the same training solve the two give the risk's growth with the
    angular distance (ct_tune's docstring: a third of the held-out risk for a linear growth)."""
    n = int(np.asarray(m.data).shape[0])  # type: ignore[attr-defined]
    k = _TRIPLE_EVERY
    centres = np.arange(1 + int(np.random.default_rng(seed).integers(k - 2)), n - 1, k)
    near, far = np.zeros(n, np.float32), np.zeros(n, np.float32)
    far[centres] = 1.0
    near[centres - 1] = near[centres + 1] = 1.0
    assert m.mask is None, "the triple split expects a simulated file without a view mask"  # type: ignore[attr-defined]
    train = 1.0 - near - far
    return tuple(measurement_problem(dataclasses.replace(m, mask=v), dev)  # type: ignore[return-value,call-overload]
                 for v in (train, near, far))


class _Missing(Exception):
    """A weight the rule's search asks for that the stored curve lacks."""


def _score_row(row: dict) -> None:
    """Print each rule's pick (x the fine oracle) and loss against it (module docstring)."""
    r = row["risk"]
    keys = [k for k in _KEYS if k in r]  # older rows: a prefix of _KEYS
    stored = {e: t for e, *t in zip(r["e"], *(r[k] for k in keys), strict=True)}
    lams, psnrs = row["psnr"]["lam"], row["psnr"]["psnr"]
    top, oracle = row["oracle"]["psnr"], row["oracle"]["lam"]
    name = Path(row["case"]).name.split(".")[0] if row["case"] != "synthetic head" else (
        f"head s{row['seed'] % 10} {row['shape'][0]}^2 {row['spacing_mm'][0]:g} mm")
    cells = [f"{name} {row['views']}v", f"{oracle:.2e} ({top:.2f})"]
    for energy, weight in RULES:
        i, j = _TERMS[energy]

        def crit(lam: float, w: float = weight, i: int = i, j: int = j) -> float:
            e = _index(lam)
            if e not in stored or len(stored[e]) <= max(i, j):
                raise _Missing
            return stored[e][i] + w * stored[e][j]

        for vertex in (False, True):
            stored_pick = row.get("picks", {}).get(_rule(energy, weight, vertex))
            if stored_pick is not None:  # solved at the pick
                lam = stored_pick["lam"]
                cells.append(f"{lam / oracle:.2f}x / {top - stored_pick['psnr']:.2f}")
                continue
            try:
                lam = tune_weight(crit, BASE, vertex=vertex)[0]
            except _Missing:
                cells.append("n/a")
                continue
            if not lams[0] <= lam <= lams[-1]:
                cells.append(f"{lam / oracle:.2f}x / out")
                continue
            loss = top - float(np.interp(np.log(lam), np.log(lams), psnrs))
            cells.append(f"{lam / oracle:.2f}x / {loss:.2f}")
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
