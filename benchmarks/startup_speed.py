"""Where a fresh process spends its time before and after sampling (issue 14 item 3).

``end_to_end_speed.py`` showed ``medrecon reconstruct`` in a fresh process 15 s slower inside
the reconstruction than the warmed-up sampling benchmark, and 7-19 s outside it. This script
is that fresh process, split into stages, each timed once in order (CUDA synchronised):

* ``import``: torch, medrecon;
* ``cuda_init``: the CUDA context and a first kernel;
* ``read``: ``read_measurement`` of the file;
* ``load_prior``: ``load_prior`` (imports MONAI as the command line does, without the
  optional packages medrecon never uses, :mod:`medrecon.monai_import`; builds the U-Net,
  reads the weights);
* ``first_run`` / ``second_run``: the same ``posterior_sample`` twice (``--steps``, one
  sample, the modality's default weight): the difference is the first call's set-up (cuDNN
  plans for every tile shape and batch, lazy kernel loading, CUDA graph captures);
* ``write``: ``save_volume`` of the mean as gzipped NIfTI;
* ``read_one_core`` / ``write_one_core``: the same read and write on one core (h5py's own
  chunk reading, nibabel's gzip), as before :mod:`medrecon.io.parallel_zlib`; the file is in
  the page cache by then, as it is for ``read`` when the file was just written.

With ``--trace`` the first run is also split by network-call signature (batch, tile shape):
every call of the graphed patch network is synchronised and timed as the signature's eager
first call, its graph capture, or a replay, and the run is profiled with cProfile (the top
functions by own time go into the JSON line). The synchronisation and the profiler slow the
traced run down, so its stage times are not the untraced ones: run once without and once with.

    python benchmarks/startup_speed.py FILE.h5 --out startup.jsonl [--device cuda] [--steps 50] [--trace]

Run it once per file, in a fresh process each time (the measurement files come from
``end_to_end_speed.py``'s work folder or ``medrecon simulate``).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import medrecon  # noqa: E402, F401


@contextlib.contextmanager
def _patched(module: object, name: str, value: object) -> Iterator[None]:
    """``module.name`` set to ``value`` inside the block."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


class _Trace:
    """Times every call of :class:`GraphedPatchDenoiser` by signature and kind, and cProfiles
    the traced block (a context manager; patches the class while active)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.calls: dict[tuple[str, str], list[float]] = {}
        self.profile = cProfile.Profile()

    def __enter__(self) -> _Trace:
        from medrecon.sampling.graphs import GraphedPatchDenoiser

        original = self._original = GraphedPatchDenoiser.__call__
        trace = self

        def timed(den: GraphedPatchDenoiser, x: torch.Tensor, sigma: torch.Tensor,
                  position: torch.Tensor | None) -> torch.Tensor:
            key = (tuple(x.shape), x.dtype, x.device, position is not None)
            kind = ("replay" if key in den._graphs else "capture" if key in den._seen
                    else "eager_first")
            trace.sync()
            t = time.perf_counter()
            out = original(den, x, sigma, position)
            trace.sync()
            sig = "x".join(str(n) for n in x.shape)
            trace.calls.setdefault((sig, kind), []).append(time.perf_counter() - t)
            return out

        GraphedPatchDenoiser.__call__ = timed  # type: ignore[method-assign]
        self.profile.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        from medrecon.sampling.graphs import GraphedPatchDenoiser

        self.profile.disable()
        GraphedPatchDenoiser.__call__ = self._original  # type: ignore[method-assign]

    def summary(self, top: int = 25) -> dict:
        kinds: dict[str, dict[str, float]] = {}
        for (_, kind), times in self.calls.items():
            k = kinds.setdefault(kind, {"calls": 0, "seconds": 0.0})
            k["calls"] += len(times)
            k["seconds"] = round(k["seconds"] + sum(times), 3)
        per_sig = sorted(((sig, kind, len(t), round(sum(t), 3))
                          for (sig, kind), t in self.calls.items()), key=lambda r: -r[3])
        text = io.StringIO()
        pstats.Stats(self.profile, stream=text).sort_stats("tottime").print_stats(top)
        lines = [ln for ln in text.getvalue().splitlines() if ln.strip()]
        return {"signatures": len({sig for sig, _ in self.calls}), "by_kind": kinds,
                "by_signature": per_sig, "profile_tottime": lines[-top - 1:]}


def main(argv: list[str] | None = None) -> int:
    stages: dict[str, float] = {"import": time.perf_counter() - T0}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--trace", action="store_true", help="per-signature times and a profile "
                    "of the first run (see the module docstring)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def stage(name: str, fn):  # noqa: ANN001, ANN202
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        stages[name] = time.perf_counter() - t
        return out

    from medrecon.monai_import import lean_monai_import

    lean_monai_import()  # as medrecon's command line does
    from medrecon.io import save_volume
    from medrecon.io.measurement import read_measurement
    from medrecon.priors import load_prior
    from medrecon.sampling import posterior_sample
    from medrecon.sampling.api import MODALITY_DEFAULTS, SamplerOptions

    stage("cuda_init", lambda: torch.ones(1, device=dev).add_(1))
    m = stage("read", lambda: read_measurement(args.file))
    prior = stage("load_prior", lambda: load_prior(args.prior, device=dev))
    lam = MODALITY_DEFAULTS[(m.modality, "dds")]["lam"]
    opt = SamplerOptions.defaults(m.modality, "dds", lam=lam)

    def run():  # noqa: ANN202
        return posterior_sample(m, prior, steps=args.steps, samples=1, seed=0, device=dev,
                                options=opt)

    trace = _Trace(sync) if args.trace else None
    if trace is not None:
        with trace:
            stage("first_run", run)
    else:
        stage("first_run", run)
    res = stage("second_run", run)
    vol = m.reference.volume(res.mean)
    with tempfile.TemporaryDirectory() as tmp:
        stage("write", lambda: save_volume(vol, Path(tmp) / "mean.nii.gz"))
        # the same on one core, as before medrecon.io.parallel_zlib (file now in the page cache)
        import nibabel as nib

        import medrecon.io.hdf5_read as hdf5_read

        with _patched(hdf5_read, "read_dataset", lambda ds: ds[()]):
            stage("read_one_core", lambda: read_measurement(args.file))
        img = nib.Nifti1Image(vol.data, vol.affine)
        stage("write_one_core", lambda: nib.save(img, str(Path(tmp) / "b.nii.gz")))
    row = {"file": str(args.file), "modality": m.modality, "steps": args.steps,
           "stages": {k: round(v, 3) for k, v in stages.items()},
           "process_seconds": round(time.perf_counter() - T0, 2),
           "device": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                      else platform.processor()),
           "torch": torch.__version__, "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv)}
    if trace is not None:
        row["trace"] = trace.summary()
    print(json.dumps(row), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
