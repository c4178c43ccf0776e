"""Many measurements, one method: sharded batch reconstruction with one summary table.

:func:`reconstruct_many` runs :func:`medrecon.reconstruct.reconstruct` on every item in one
process, so a diffusion prior is loaded once (the prior cache of :mod:`medrecon.methods`) and
CUDA starts once. Launched under ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set) it
shards the items over the ranks: rank r takes items r, r + N, r + 2N, ... and runs on
``cuda:LOCAL_RANK`` (or the CPU). Each output is exactly what one ``reconstruct`` call with the
same options and seed writes: the volume, its std volume where there is one, and the resolved
settings ``<name>.reconstruct.yaml``. An output whose volume and settings file both exist is
complete and is skipped on a rerun; an input that fails is one line and a "failed" row, and the
others go on. At the end the rows of every rank are gathered (``all_gather_object``) and
rank 0 writes ``summary.csv`` and ``summary.json`` into the output folder, atomically::

    from medrecon.batch import BatchItem, reconstruct_many
    from medrecon.reconstruct import ReconOptions

    items = [BatchItem(Path("a.h5")), BatchItem(Path("b.h5"), reference=Path("b_ref.nii.gz"))]
    rows = reconstruct_many(items, "cg-sense", ReconOptions(device="cpu"), Path("out"))
    [r.status for r in rows]   # ['ok', 'ok']; rows[1].psnr is a number
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medrecon.errors import InputError, MedreconError
from medrecon.io.atomic import atomic_file
from medrecon.recon.base import ReconOptions

__all__ = ["BatchItem", "BatchRow", "collect_items", "read_manifest", "reconstruct_many",
           "shard", "SUMMARY_NAME"]

SUMMARY_NAME = "summary"
MEASUREMENT_SUFFIXES = (".h5", ".hdf5")
# Ranks finish their shards at different times and the final gather waits for the slowest;
# a rank that dies is ended by torchrun, so this only bounds a truly wedged run.
GATHER_TIMEOUT_HOURS = 72.0


@dataclass(frozen=True)
class BatchItem:
    """One input: a measurement file, an optional reference volume (for metrics) and an
    optional output name (default: the measurement's file name without its suffix)."""

    measurement: Path
    reference: Path | None = None
    name: str | None = None

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        stem = self.measurement.name
        for suffix in MEASUREMENT_SUFFIXES:
            if stem.lower().endswith(suffix):
                return stem[: -len(suffix)]
        return stem


@dataclass
class BatchRow:
    """One line of the summary table.

    ``status`` is "ok" (reconstructed now), "skipped" (complete from an earlier run) or
    "failed" (``error`` says why, one sentence). ``seconds`` is the method's wall-clock time;
    ``residual`` is ``||M(Ax) - y|| / ||y||`` (None when skipped or failed); PSNR [dB], SSIM and
    NMSE are over the whole volume against the reference (None without one).
    """

    input: str
    output: str
    method: str
    status: str
    seconds: float | None = None
    residual: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    nmse: float | None = None
    reference: str = ""
    rank: int = 0
    device: str = ""
    error: str = ""
    index: int = field(default=0, repr=False)


def read_manifest(path: Path) -> list[BatchItem]:
    """Items of a CSV manifest with a header: ``measurement`` (required), ``reference`` and
    ``output`` (optional, may be empty). Relative paths are relative to the manifest's folder.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"The manifest {path} is not a UTF-8 text CSV file.") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "measurement" not in columns:
        raise InputError(f"The manifest {path} needs a header with a 'measurement' column "
                         f"(optional: reference, output).")
    unknown = sorted(set(columns) - {"measurement", "reference", "output"})
    if unknown:
        raise InputError(f"The manifest {path} has unknown columns {', '.join(unknown)}; use "
                         f"measurement, reference and output.")
    items = []
    for line, raw in enumerate(reader, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        if not row.get("measurement"):
            raise InputError(f"Line {line} of the manifest {path} has no measurement.")

        def where(p: str) -> Path:
            q = Path(p).expanduser()
            return q if q.is_absolute() else path.parent / q

        ref = row.get("reference")
        items.append(BatchItem(where(row["measurement"]), where(ref) if ref else None,
                               row.get("output") or None))
    if not items:
        raise InputError(f"The manifest {path} lists no measurements.")
    return items


def collect_items(inputs: Iterable[Path]) -> list[BatchItem]:
    """Measurement files, folders of them (``*.h5``/``*.hdf5``, sorted, not recursive) and CSV
    manifests -> items, in the order given. Output names must be unique."""
    items: list[BatchItem] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(q for q in p.iterdir()
                           if q.is_file() and q.name.lower().endswith(MEASUREMENT_SUFFIXES))
            if not found:
                raise InputError(f"The folder {p} holds no measurement files (*.h5).")
            items += [BatchItem(q) for q in found]
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                raise InputError(f"The manifest {p} does not exist.")
            items += read_manifest(p)
        elif p.exists():
            items.append(BatchItem(p))
        else:
            raise InputError(f"The input {p} does not exist.")
    seen: dict[str, Path] = {}
    for it in items:
        name = it.output_name
        if name in seen:
            raise InputError(f"Two inputs would write the same output {name!r} ({seen[name]} "
                             f"and {it.measurement}); give output names in a manifest.")
        if name == SUMMARY_NAME:
            raise InputError(f"The output name {name!r} is reserved for the summary table.")
        seen[name] = it.measurement
    return items


def shard(n: int, rank: int, world: int) -> list[int]:
    """The item indices rank ``rank`` of ``world`` takes: rank, rank + world, ..."""
    return list(range(rank, n, world))


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _rank_device(device: str, world: int, local: int) -> str:
    """Under torchrun, "auto" and "cuda" mean this rank's GPU ``cuda:LOCAL_RANK``."""
    import torch

    name = (device or "auto").strip().lower()
    if world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local}"
    return device


def _error_sentence(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, MedreconError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line


def _metrics(volume: Any, reference: Path) -> dict[str, float]:
    from medrecon.evaluation import compare_volumes
    from medrecon.io import load_volume

    result, _ = compare_volumes(volume, load_volume(reference))
    return {k: float(result.volume[k]) for k in ("psnr", "ssim", "nmse")}


def _run_one(item: BatchItem, index: int, method: str, options: ReconOptions, out_dir: Path,
             fmt: str, rank: int) -> BatchRow:
    from medrecon.config import dump_config
    from medrecon.io import load_volume, save_volume
    from medrecon.io.measurement import read_measurement
    from medrecon.reconstruct import reconstruct, settings_path, std_path

    out = out_dir / (item.output_name + (".nii.gz" if fmt == "nifti" else ""))
    row = BatchRow(input=str(item.measurement), output=str(out), method=method, status="ok",
                   reference=str(item.reference or ""), rank=rank, device=str(options.device),
                   index=index)
    cfg = settings_path(out)
    try:
        if out.exists() and cfg.is_file():
            row.status = "skipped"
            volume = load_volume(out) if item.reference else None
        else:
            result = reconstruct(read_measurement(item.measurement), method, options)
            save_volume(result.volume, out, format=fmt)
            if result.std_volume is not None:
                save_volume(result.std_volume, std_path(out), format=fmt)
            # the settings file last: it marks the output complete
            dump_config(result.settings, cfg)
            row.seconds, row.residual = result.seconds, float(result.residual)
            row.device = str(result.meta.get("device", options.device))
            volume = result.volume
        if item.reference is not None:
            for k, v in _metrics(volume, item.reference).items():
                setattr(row, k, v)
    except Exception as exc:  # one input's failure must not stop the others
        row.status, row.error = "failed", _error_sentence(exc)
    return row


def write_summary(rows: Sequence[BatchRow], out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` (one entry per input, in input order)
    atomically into ``out_dir``."""
    names = [f.name for f in fields(BatchRow) if f.name != "index"]
    records = [{k: v for k, v in asdict(r).items() if k != "index"} for r in rows]
    csv_path, json_path = out_dir / f"{SUMMARY_NAME}.csv", out_dir / f"{SUMMARY_NAME}.json"
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in rec.items()}
                         for rec in records)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in rec.items()} for rec in records]
    with atomic_file(json_path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def reconstruct_many(items: Sequence[BatchItem], method: str, options: ReconOptions,
                     out_dir: Path, fmt: str = "nifti",
                     report: Callable[[BatchRow], None] | None = None) -> list[BatchRow]:
    """Reconstruct this rank's share of ``items`` into ``out_dir``; return every rank's rows.

    Args:
        items: the inputs (see :func:`collect_items`); every rank must get the same list.
        method, options: as for :func:`medrecon.reconstruct.reconstruct` (the same seed gives
            the same output as a single call on the same device).
        out_dir: where ``<name>.nii.gz`` (or DICOM folder ``<name>``), its settings file and
            the summary go.
        fmt: "nifti" or "dicom".
        report: called with each row as this rank finishes it (e.g. to print failures).

    Returns:
        The rows of all ranks in input order (after ``all_gather_object`` under torchrun);
        rank 0 has written the summary table.
    """
    import dataclasses
    import datetime

    rank, world, local = _dist_env()
    options = dataclasses.replace(options, device=_rank_device(options.device, world, local))
    out_dir.mkdir(parents=True, exist_ok=True)
    group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo even on GPUs: the one collective is a gather of a few Python rows, and
            # NCCL's watchdog would end ranks that wait long for the slowest shard.
            dist.init_process_group("gloo", timeout=datetime.timedelta(
                hours=GATHER_TIMEOUT_HOURS))
            group = True
    from medrecon.sampling.denoiser import shared_network_calls

    try:
        mine = []
        with shared_network_calls():  # studies of one shape replay the first one's graphs
            for i in shard(len(items), rank, world):
                t0 = time.perf_counter()
                row = _run_one(items[i], i, method, options, out_dir, fmt, rank)
                if row.status == "failed" and row.seconds is None:
                    row.seconds = time.perf_counter() - t0
                mine.append(row)
                if report is not None:
                    report(row)
        if world > 1:
            import torch.distributed as dist

            gathered: list[list[BatchRow] | None] = [None] * world
            dist.all_gather_object(gathered, mine)
            rows = [r for part in gathered for r in (part or [])]
        else:
            rows = mine
        rows.sort(key=lambda r: r.index)
        if rank == 0:
            write_summary(rows, out_dir)
        return rows
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
