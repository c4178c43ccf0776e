"""Seconds and solver work of the guard's classical stage, before and after its cuts (issue 14).

The default diffusion path's stage ``guard: classical methods`` (``stage_seconds``,
benchmarks/end_to_end_speed.py) is :func:`medrecon.guard.classical_runs`: MR l1-wavelet and TV,
CT TV, each self-tuned on all the data and scored by its solution on the training part at the
weight it chose there. This script runs exactly that stage on the files of
``end_to_end_speed.py`` (same cases, same simulation; maps in the file, so no ESPIRiT), no
diffusion, in two variants alternated in one process (same card, same load):

* ``after``: the library as it is: the tuning's own training-part solve is scored
  (``keep_training``), each operator's Lipschitz constant is estimated once per method
  call (:class:`medrecon.solvers.OperatorNorms`), and the wavelet transform keeps its gather
  indices and filter taps (:class:`medrecon.operators.wavelets.WaveletTransform`).
* ``before``: the former path, emulated: the methods are called without ``keep_training``, so
  the training part is solved once more at the chosen weight, every solve estimates its
  Lipschitz constant again (``OperatorNorms`` passes every call through), and the wavelet
  transform builds its indices and taps at every single-level pass (its caches emptied
  before each use: on a GPU a tap tensor from Python floats is a copy that waits for the
  stream).

Per run: wall seconds per method, solver calls, solver iterations and power iterations (each
one ``A^H A``, or a projection and a backprojection for CT), the weight and the held-out error
per method; the two variants' weights and errors must be equal (``same_picks``). One JSON line
per run::

    python benchmarks/guard_classical_speed.py --cases mr128,ct256 --device cuda --repeat 2 \\
        --out guard_classical.jsonl
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/guard_classical_speed.py --cases mr128,ct256 \\
        --quick --out /tmp/gc.jsonl          # CPU: 32^3 volumes

Wall times on a shared CPU are inflated by the load; the counts are not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end_speed import _prepare  # noqa: E402

from medrecon import guard, solvers  # noqa: E402
from medrecon.holdout import holdout_split  # noqa: E402
from medrecon.io.measurement import read_measurement  # noqa: E402
from medrecon.operators.wavelets import WaveletTransform  # noqa: E402
from medrecon.recon import ct, mri  # noqa: E402


class Counts:
    """Solver calls and iterations, power iterations, counted by wrapping the solvers."""

    def __init__(self) -> None:
        self.calls = 0
        self.iterations = 0
        self.power_iterations = 0

    def as_dict(self) -> dict[str, int]:
        return {"solver_calls": self.calls, "solver_iterations": self.iterations,
                "power_iterations": self.power_iterations}


@contextlib.contextmanager
def counted(counts: Counts) -> Iterator[None]:
    """The solvers of mri and ct (fista, pdhg, power_iteration) wrapped to count their work."""
    saved: list[tuple[Any, str, Any]] = []

    def solver(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            res = fn(*args, **kwargs)
            counts.calls += 1
            counts.iterations += int(res.iterations)
            return res
        return wrapped

    def power(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            counts.power_iterations += int(kwargs.get("iters", 30))
            return fn(*args, **kwargs)
        return wrapped

    for module, name, wrap in ((mri, "fista", solver), (mri, "pdhg", solver),
                               (ct, "pdhg", solver), (mri, "power_iteration", power),
                               (ct, "power_iteration", power)):
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, wrap(getattr(module, name)))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


@contextlib.contextmanager
def former_path() -> Iterator[None]:
    """The path before the cuts: no ``keep_training`` (the guard solves the training part
    again), no reuse of Lipschitz constants, wavelet indices and taps built at every use."""
    methods = dict(guard._CLASSICAL)

    def without_keep(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("keep_training", None)
            return fn(*args, **kwargs)
        return wrapped

    def uncached(fn: Callable[..., Any], cache: str) -> Callable[..., Any]:
        def wrapped(self: WaveletTransform, *args: Any) -> Any:
            getattr(self, cache).clear()
            return fn(self, *args)
        return wrapped

    call = solvers.OperatorNorms.__call__
    index, filters = WaveletTransform._index, WaveletTransform._filters
    guard._CLASSICAL.update({k: without_keep(v) for k, v in methods.items()})
    solvers.OperatorNorms.__call__ = lambda self, op, estimate: float(estimate())  # type: ignore[method-assign]
    WaveletTransform._index = uncached(index, "_indices")  # type: ignore[method-assign]
    WaveletTransform._filters = uncached(filters, "_taps")  # type: ignore[method-assign]
    try:
        yield
    finally:
        guard._CLASSICAL.update(methods)
        solvers.OperatorNorms.__call__ = call  # type: ignore[method-assign]
        WaveletTransform._index, WaveletTransform._filters = index, filters  # type: ignore[method-assign]


def run_stage(m: Any, device: torch.device, variant: str) -> dict[str, Any]:
    """One classical stage (:func:`medrecon.guard.classical_runs`) in ``variant``."""
    counts = Counts()
    split = holdout_split(m, device)
    ctx = former_path() if variant == "before" else contextlib.nullcontext()
    with ctx, counted(counts):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runs = guard.classical_runs(m, split, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"variant": variant, "seconds": round(seconds, 3), **counts.as_dict(),
            "methods": {r.method: {"seconds": round(r.seconds, 3), "lam": r.lam,
                                   "heldout_error": r.error} for r in runs}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/guard_classical"),
                    help="folder for the case files (end_to_end_speed.py's, written once)")
    ap.add_argument("--cases", default="mr128,ct256")
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds of all variants; the first includes start-up (CUDA, FFT plans)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CPU: 32^3 volumes")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    for case in args.cases.split(","):
        path, _ = _prepare(case, args.work, args.device, args.quick)
        m = read_measurement(path)
        picks: dict[str, Any] = {}
        for rep in range(args.repeat):
            for variant in args.variants.split(","):
                row = run_stage(m, device, variant)
                chosen = {k: (v["lam"], v["heldout_error"]) for k, v in row["methods"].items()}
                picks.setdefault("first", chosen)
                row.update(case=case, shape=list(m.image_shape), repeat=rep, card=card,
                           threads=torch.get_num_threads(), torch=torch.__version__,
                           same_picks=chosen == picks["first"],
                           date=datetime.now(UTC).isoformat(timespec="seconds"))
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
