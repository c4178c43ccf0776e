"""Training data for the prior: volumes in model space and reproducible random patches.

Pipeline: find volumes (NIfTI files, DICOM series folders, or a manifest) -> read through
:func:`medrecon.io.load_volume` -> resample to the target spacing (trilinear) -> map to model
space with the per-modality :class:`~medrecon.priors.normalisation.Normalisation` -> cache as
``.npy`` (keyed by path, size, mtime, spacing and normalisation, so edits invalidate it) ->
hold out a validation split -> draw patches.

Patches are a pure function of ``(seed, rank, step)``: the batch at step t never depends on
what happened before, which makes ``--resume`` exact and gives every DDP rank its own stream
without any sampler state to save. Augmentation (mirror flips, a small random rotation and
scaling about the patch centre, MR gain/gamma jitter) runs on the training device.

``data.source: rendered`` skips the volume pools: :class:`RenderedPatchSource` renders a fresh
batch on the training device at every step (:func:`medrecon.priors.synthetic.render_patches`,
voxel sizes from its ``sample_spacings``), under the same ``(seed, rank, step)`` rule.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from medrecon.errors import InputError, MedreconError
from medrecon.priors.config import DataConfig
from medrecon.priors.normalisation import MODALITY_IDS, Normalisation, modality_id

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MANIFEST_SUFFIXES = (".txt", ".csv")

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass
class TrainingVolume:
    """One preprocessed volume: ``data`` (I, J, K) float32 in model space, its modality id,
    a list of foreground voxel indices (N, 3) for foreground-biased patch centres, and where it
    came from."""

    data: np.ndarray
    modality: int
    foreground: np.ndarray
    source: str


def _seed_int(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2)
    return (int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1)


def _foreground(data: np.ndarray, threshold: float = 0.05, max_points: int = 20000,
                seed: int = 0) -> np.ndarray:
    idx = np.argwhere(data > threshold)
    if len(idx) > max_points:
        sel = np.random.default_rng(seed).choice(len(idx), max_points, replace=False)
        idx = idx[np.sort(sel)]
    return idx.astype(np.int32)


# --------------------------------------------------------------------------- file discovery
def _is_dicom_file(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def discover_studies(paths: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """Expand ``--data`` arguments into (study path, modality override) pairs.

    Each argument may be a NIfTI file, a DICOM file or series folder, a folder tree holding
    NIfTI files and/or DICOM series (one series per leaf folder), or a manifest: a ``.txt``
    file with one path per line, or a ``.csv`` file with a ``path`` column and an optional
    ``modality`` column. Relative manifest paths are relative to the manifest.
    """
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"Training data path {p} does not exist.")
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            out.extend(_read_manifest(p))
        elif p.is_file():
            out.append((p, None))
        else:
            found: list[tuple[Path, str | None]] = []
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.name.lower().endswith(NIFTI_SUFFIXES):
                    found.append((f, None))
            dicom_dirs = sorted({f.parent for f in p.rglob("*") if f.is_file()
                                 and not f.name.lower().endswith(NIFTI_SUFFIXES)
                                 and _is_dicom_file(f)})
            found.extend((d, None) for d in dicom_dirs)
            if not found:
                raise InputError(f"No NIfTI files or DICOM series were found under {p}.")
            out.extend(found)
    if not out:
        raise InputError("No training volumes were given.")
    return out


def _read_manifest(path: Path) -> list[tuple[Path, str | None]]:
    rows: list[tuple[Path, str | None]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise InputError(f"Manifest {path} needs a 'path' column.")
            for r in reader:
                mod = (r.get("modality") or "").strip().upper() or None
                rows.append((_resolve(path, r["path"].strip()), mod))
    else:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((_resolve(path, line), None))
    for p, _ in rows:
        if not p.exists():
            raise InputError(f"Manifest {path.name} lists {p}, which does not exist.")
    return rows


def _resolve(manifest: Path, entry: str) -> Path:
    p = Path(entry)
    return p if p.is_absolute() else manifest.parent / p


def split_train_val(items: Sequence[tuple[Path, str | None]], val_fraction: float
                    ) -> tuple[list[tuple[Path, str | None]], list[tuple[Path, str | None]]]:
    """Deterministic split by a hash of each path, so adding studies does not reshuffle old ones.

    At least one study is always kept for training: a single study is trained on (no
    validation), and with two or more studies and ``val_fraction > 0`` at least one is held out
    (the hash may otherwise put every study of a small set on one side). Returns (train, val),
    each in hash order.
    """
    def h(p: Path) -> float:
        return int(hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12], 16) / 16**12

    scored = sorted(((h(it[0]), it) for it in items), key=lambda t: t[0])
    n_val = sum(1 for s, _ in scored if s < val_fraction)  # a prefix of the hash order
    if n_val == 0 and val_fraction > 0 and len(scored) >= 2:
        n_val = 1
    n_val = min(n_val, max(len(scored) - 1, 0))
    return [it for _, it in scored[n_val:]], [it for _, it in scored[:n_val]]


# --------------------------------------------------------------------------- preprocessing
def resample_to_spacing(data: np.ndarray, spacing: Sequence[float],
                        target: Sequence[float]) -> np.ndarray:
    """Trilinear resampling of (I, J, K) ``data`` from voxel size ``spacing`` to ``target`` mm,
    keeping the field of view (the grid keeps the volume's axes; no reorientation)."""
    from scipy.ndimage import zoom

    factors = [s / t for s, t in zip(spacing, target, strict=True)]
    if all(abs(f - 1) < 1e-3 for f in factors):
        return data.astype(np.float32, copy=False)
    return zoom(data.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)


def load_training_volume(path: Path, modality_override: str | None, cfg: DataConfig,
                         norm: Normalisation, cache_dir: Path | None) -> TrainingVolume:
    """Read, resample and normalise one study, through the ``.npy`` cache when given."""
    from medrecon.io import load_volume

    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, list(cfg.spacing_mm),
                      norm.to_dict(), modality_override, cfg.default_modality])
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    if cache_dir is not None:
        npy, meta = cache_dir / f"{digest}.npy", cache_dir / f"{digest}.json"
        if npy.exists() and meta.exists():
            info = json.loads(meta.read_text())
            data = np.load(npy)
            return TrainingVolume(data, info["modality"], _foreground(data), str(path))
    vol = load_volume(path)
    mod = (modality_override or (vol.modality if vol.modality in ("MR", "CT") else None)
           or cfg.default_modality)
    if mod is None:
        raise InputError(
            f"{path} has modality {vol.modality!r}; set data.default_modality or a manifest "
            "modality column to MR or CT."
        )
    mod = mod.upper()
    if mod not in cfg.modalities:
        raise InputError(f"{path} is {mod}, but this prior is configured for "
                         f"{', '.join(cfg.modalities)} only.")
    data = resample_to_spacing(vol.data, vol.spacing, cfg.spacing_mm)
    data = np.asarray(norm.to_model(data, mod), dtype=np.float32)
    if mod == "CT":
        data = np.maximum(data, 0.0)  # below -1000 HU is reconstruction noise, not anatomy
    if cache_dir is not None:
        from medrecon.io.atomic import atomic_file

        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache_dir / f"{digest}.npy") as tmp, tmp.open("wb") as f:
            np.save(f, data)
        with atomic_file(cache_dir / f"{digest}.json") as tmp:
            tmp.write_text(json.dumps({"source": str(path), "modality": modality_id(mod)}))
    return TrainingVolume(data, modality_id(mod), _foreground(data), str(path))


# --------------------------------------------------------------------------- volume pools
SYNTHETIC_TRAIN_SEED0 = 0  # = medrecon.priors.synthetic.SPLITS["train"].start
SYNTHETIC_VAL_SEED0 = 1_000_000  # = SPLITS["val"].start; "test" seeds are never used here


def synthetic_volume(seed: int, modality: str, cfg: DataConfig, norm: Normalisation,
                     device: torch.device | str = "cpu") -> TrainingVolume:
    """One procedural head (:func:`medrecon.priors.synthetic.generate_head_tensor`, rendered on
    ``device``) in model space.

    MR contrast (T1/T2/PD-like) is chosen by the seed; lesions are on; measurement noise is
    off unless ``data.synthetic_noise`` (the prior models the anatomy, data consistency
    handles the noise of a measurement).
    """
    from medrecon.priors.synthetic import generate_head_tensor

    img, _ = generate_head_tensor(shape=tuple(cfg.synthetic_shape),
                                  spacing_mm=float(cfg.spacing_mm[0]), modality=modality,
                                  seed=seed, lesions=True, noise=cfg.synthetic_noise,
                                  device=device)
    data = np.asarray(norm.to_model(img.cpu().numpy(), modality), dtype=np.float32)
    if modality == "CT":
        data = np.maximum(data, 0.0)
    return TrainingVolume(data, modality_id(modality), _foreground(data, seed=seed),
                          f"synthetic:{modality}:{seed}")


def phantom_volume(seed: int, modality: str, cfg: DataConfig) -> TrainingVolume:
    """A randomised 3D Shepp-Logan phantom (ellipsoid centres, sizes and values jittered) in
    model space; CT phantoms get an HU-like scaling. Cheap, for tests and smoke runs."""
    from medrecon.phantoms import SHEPP_LOGAN_3D, Ellipsoid, ellipsoid_phantom

    rng = np.random.default_rng(seed)
    ells = []
    for e in SHEPP_LOGAN_3D:
        c = tuple(float(v) for v in np.asarray(e.centre) + rng.uniform(-0.03, 0.03, 3))
        a = tuple(float(v) for v in np.asarray(e.axes) * rng.uniform(0.9, 1.1, 3))
        ells.append(Ellipsoid(e.value * float(rng.uniform(0.8, 1.2)), c, a,
                              e.phi + float(rng.uniform(-0.2, 0.2))))
    data = np.clip(ellipsoid_phantom(tuple(cfg.synthetic_shape), tuple(ells)), 0, None)
    if modality == "CT":
        data = 1 / 3 + 0.3 * data * (data > 0.5) + 0.05 * data
        data = np.where(ellipsoid_phantom(tuple(cfg.synthetic_shape), tuple(ells[:1])) > 0,
                        data, 0.0)
    data = data.astype(np.float32)
    return TrainingVolume(data, modality_id(modality), _foreground(data, seed=seed),
                          f"phantom:{modality}:{seed}")


@dataclass(frozen=True)
class StudyLoader:
    """``(path, modality override) -> TrainingVolume`` through the cache; a picklable callable
    (unlike a closure) for worker processes."""

    cfg: DataConfig
    norm: Normalisation
    cache_dir: Path | None = None

    def __call__(self, item: tuple[Path, str | None]) -> TrainingVolume:
        return load_training_volume(item[0], item[1], self.cfg, self.norm, self.cache_dir)


@dataclass(frozen=True)
class SyntheticMaker:
    """``(seed, modality) -> TrainingVolume`` by :func:`synthetic_volume`; picklable."""

    cfg: DataConfig
    norm: Normalisation
    device: str = "cpu"

    def __call__(self, job: tuple[int, str]) -> TrainingVolume:
        return synthetic_volume(job[0], job[1], self.cfg, self.norm, self.device)


@dataclass(frozen=True)
class PhantomMaker:
    """``(seed, modality) -> TrainingVolume`` by :func:`phantom_volume`; picklable."""

    cfg: DataConfig

    def __call__(self, job: tuple[int, str]) -> TrainingVolume:
        return phantom_volume(job[0], job[1], self.cfg)


def _load_or_reason(item: tuple[Path, str | None], cfg: DataConfig, norm: Normalisation,
                    cache_dir: Path | None) -> TrainingVolume | str:
    """One study in model space, or the sentence saying why it cannot be used."""
    try:
        return load_training_volume(item[0], item[1], cfg, norm, cache_dir)
    except MedreconError as exc:
        return str(exc)
    except OSError as exc:
        return f"Cannot read {item[0]} ({exc.strerror or exc})."


def _unusable_sentence(bad: list[tuple[Path, str]], total: int) -> str:
    """One sentence naming every unusable study (the first one's reason in full)."""
    if len(bad) == 1:
        return bad[0][1]
    names = ", ".join(str(p) for p, _ in bad[:5]) + (f" and {len(bad) - 5} more"
                                                      if len(bad) > 5 else "")
    first = bad[0][1].rstrip(".")
    return (f"{len(bad)} of {total} training studies cannot be used ({names}); the first: "
            f"{first[:1].lower() + first[1:]}.")


def file_pools(cfg: DataConfig, norm: Normalisation, data_paths: Sequence[str | Path],
               cache_dir: Path | None, rank: int = 0, world_size: int = 1, workers: int = 0
               ) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
    """Training volumes of this rank and (rank 0) the validation volumes, from ``--data``.

    The studies are split by :func:`split_train_val` (a single study is trained on) and the
    training studies sharded by rank. Every study this rank reads is tried before any error is
    raised, and the error names each unreadable study (in path order).
    """
    if not data_paths:
        raise InputError("data.source is files: give training data with --data PATH.")
    items = discover_studies(data_paths)
    train_items, val_items = split_train_val(items, cfg.val_fraction)
    shard = train_items[rank::world_size]
    if not shard:
        raise InputError(f"{len(items)} studies ({len(val_items)} held out for validation) leave "
                         f"process {rank} of {world_size} without a training volume; give at "
                         f"least {world_size + len(val_items)} studies or use fewer processes.")
    mine = shard + (val_items if rank == 0 else [])
    load = functools.partial(_load_or_reason, cfg=cfg, norm=norm, cache_dir=cache_dir)
    loaded = _map(load, mine, workers)
    bad = sorted((it[0], r) for it, r in zip(mine, loaded, strict=True)
                 if isinstance(r, str))  # named in path order, not hash order
    if bad:
        raise InputError(_unusable_sentence(bad, len(mine)))
    vols = [v for v in loaded if isinstance(v, TrainingVolume)]
    return vols[:len(shard)], vols[len(shard):]


def build_pools(cfg: DataConfig, norm: Normalisation, data_paths: Sequence[str | Path] = (),
                cache_dir: Path | None = None, rank: int = 0, world_size: int = 1,
                workers: int = 0, device: torch.device | str = "cpu"
                ) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
    """Training volumes of this rank (its shard, as a DistributedSampler would give) and all
    validation volumes (validation runs on rank 0 only; other ranks get an empty list).

    ``data.source: files`` is :func:`file_pools`. Generated sources use seeds
    ``SYNTHETIC_TRAIN_SEED0 + i`` for training and ``SYNTHETIC_VAL_SEED0 + i`` for validation,
    disjoint from each other and from the test seeds of the synthetic generator. ``workers`` > 1
    loads / generates in that many processes, with the same result as one.
    """
    if cfg.source == "files":
        return file_pools(cfg, norm, data_paths, cache_dir, rank, world_size, workers)
    jobs_train = [(SYNTHETIC_TRAIN_SEED0 + i, m) for m in cfg.modalities
                  for i in range(cfg.train_volumes)][rank::world_size]
    jobs_val = ([(SYNTHETIC_VAL_SEED0 + i, m) for m in cfg.modalities
                 for i in range(cfg.val_volumes)] if rank == 0 else [])
    make: Callable[[tuple[int, str]], TrainingVolume]
    if cfg.source == "synthetic":
        make = SyntheticMaker(cfg, norm, str(device))
        if torch.device(device).type == "cuda":
            workers = 0  # rendering on the GPU: one process, no CPU pool
    else:
        make = PhantomMaker(cfg)
    vols = _map(make, jobs_train + jobs_val, workers)  # one process pool for both
    return vols[:len(jobs_train)], vols[len(jobs_train):]


def _init_worker(threads: int) -> None:
    """Worker set-up: share the parent's torch threads among the workers (no oversubscription)."""
    torch.set_num_threads(threads)


def _map(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """``[fn(it) for it in items]``, in ``workers`` processes when more than one.

    ``fn`` must be picklable (a module-level function, a :class:`functools.partial` of one, or
    an instance such as :class:`StudyLoader`). Workers are spawned, not forked: a child forked
    from a process whose OpenMP pool has run can deadlock in native code.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(it) for it in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = min(workers, len(items))
    threads = max(1, torch.get_num_threads() // n)
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as ex:
        return list(ex.map(fn, items))


# --------------------------------------------------------------------------- patches
@dataclass(frozen=True)
class SpacingRange:
    """Voxel sizes a rendered training run draws: ``low``..``high`` mm on any axis.

    Measured once on a large draw of ``sample_spacings`` (seeded, so the same for every run
    and rank) and recorded in the prior's JSON as ``spacing_range_mm``.
    """

    low: float
    high: float

    @classmethod
    def of_renderer(cls, draws: int = 100_000) -> SpacingRange:
        from medrecon.priors import synthetic

        sp = synthetic.sample_spacings(draws, torch.Generator().manual_seed(0))
        # Rounded outwards (to 0.05 mm below, 0.1 mm above): the support of the distribution,
        # whose corners (e.g. the thickest slice of the coarsest in-plane size) one draw of
        # 1e5 reaches only to within a few per cent, not that draw's extremes.
        return cls(math.floor(float(sp.min()) * 20) / 20, math.ceil(float(sp.max()) * 10) / 10)


class RenderedPatchSource:
    """Patches rendered on the training device at every step, a pure function of
    ``(seed, rank, step, stream)`` like :meth:`PatchSampler.batch`.

    Per batch: voxel sizes from ``synthetic.sample_spacings``; each patch is MR with
    probability ``cfg.mr_fraction`` (when both modalities are trained), else CT; one
    ``synthetic.render_patches`` call per modality renders them. Model space as for files: MR
    renders come normalised like :meth:`Normalisation.mr_scale` (magnitude taken), CT HU go
    through the CT window and are clipped at 0 (below -1000 HU is noise, not anatomy). With
    ``augment``, mirror flips along ``cfg.flip_axes`` (position negated, as for file patches);
    the renderer does its own domain randomisation, so no further intensity jitter.
    """

    def __init__(self, cfg: DataConfig, norm: Normalisation, seed: int, rank: int = 0,
                 augment: bool = True) -> None:
        self.cfg, self.norm = cfg, norm
        self.seed, self.rank, self.augment = int(seed), int(rank), augment

    def batch(self, step: int, batch_size: int, device: torch.device | str = "cpu",
              stream: int = 0, spacing: Sequence[float] | None = None) -> PatchBatch:
        """The batch of ``step`` for this rank; ``spacing`` (mm, 3 values) fixes every
        patch's voxel size instead of drawing it (validation at the reference voxel size)."""
        from medrecon.priors import synthetic

        g = torch.Generator().manual_seed(_seed_int(self.seed, self.rank, step, stream, 11))
        n = int(batch_size)
        if spacing is None:
            sp = synthetic.sample_spacings(n, g).to(torch.float32).reshape(n, 3)
        else:
            sp = torch.tensor([list(spacing)] * n, dtype=torch.float32)
        mods = list(self.cfg.modalities)
        if len(mods) == 2:
            is_mr = torch.rand(n, generator=g) < self.cfg.mr_fraction
        else:
            is_mr = torch.full((n,), mods[0] == "MR")
        p = tuple(int(v) for v in self.cfg.patch_size)
        x = torch.zeros((n, 1, *p), dtype=torch.float32, device=device)
        position = torch.zeros(n, 3, dtype=torch.float32)
        labels = torch.zeros(n, dtype=torch.long)
        for mod, sel in (("MR", is_mr), ("CT", ~is_mr)):
            idx = torch.nonzero(sel).reshape(-1)
            if idx.numel() == 0:
                continue
            r = synthetic.render_patches(mod, int(idx.numel()), sp[idx], patch_size=p,
                                         generator=g, device=device,
                                         noise_prob=self.cfg.render_noise_prob)
            img = r.image.to(device=device, dtype=torch.float32)
            if mod == "MR":
                img = img.abs()
            else:
                img = self.norm.to_model(img, "CT").clamp_min(0.0)
            x[idx.to(device), 0] = img
            position[idx] = r.position.detach().cpu().float()
            sp[idx] = r.spacing.detach().cpu().float()
            labels[idx] = MODALITY_IDS[mod]
        if self.augment and self.cfg.flip_axes:
            u = torch.rand(n, 3, generator=g)  # drawn only with flips on
            for b in range(n):
                dims = [a for a in self.cfg.flip_axes if u[b, a] < 0.5]
                if dims:
                    x[b] = torch.flip(x[b], dims=[a + 1 for a in dims])
                    position[b, dims] = -position[b, dims]
        return PatchBatch(x, labels.to(device), position.to(device), sp.to(device))


@dataclass
class PatchBatch:
    """x: (B, 1, X, Y, Z) float32 model space; modality: (B,) long; position: (B, 3) float32
    patch centres in [-1, 1] of the full volume (per voxel axis, after flips); spacing:
    (B, 3) float32 voxel size in mm along the patch axes (X, Y, Z)."""

    x: torch.Tensor
    modality: torch.Tensor
    position: torch.Tensor
    spacing: torch.Tensor


class PatchSampler:
    """Random, augmented patches as a pure function of (seed, rank, step)."""

    def __init__(self, volumes: Sequence[TrainingVolume], cfg: DataConfig, seed: int,
                 rank: int = 0, augment: bool = True) -> None:
        if not volumes:
            raise InputError("No training volumes to draw patches from.")
        self.volumes = list(volumes)
        self.cfg = cfg
        self.seed = int(seed)
        self.rank = int(rank)
        self.augment = augment
        p = np.asarray(cfg.patch_size)
        # Margin so that a rotated/scaled patch never samples outside its crop: a rotation by
        # theta stretches the bounding box by at most 1 + 2 (sin theta + 1 - cos theta) per
        # axis, and zooming out by s = 1 - scale by 1 / s.
        self.margin = np.zeros(3, int)
        if augment and (cfg.rotate_deg or cfg.scale):
            th = math.radians(cfg.rotate_deg)
            stretch = (1 + 2 * (math.sin(th) + 1 - math.cos(th))) / (1 - cfg.scale)
            self.margin = np.ceil(p / 2 * (stretch - 1)).astype(int) + 1

    def _crop(self, vol: TrainingVolume, centre: np.ndarray, size: np.ndarray) -> np.ndarray:
        lo = centre - size // 2
        out = np.zeros(tuple(size), np.float32)
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(lo + size, vol.data.shape)
        if np.any(src_hi <= src_lo):
            return out
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = vol.data[
            src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
        return out

    def batch(self, step: int, batch_size: int, device: torch.device | str = "cpu",
              stream: int = 0) -> PatchBatch:
        """The batch of ``step`` for this rank (``stream`` separates e.g. validation draws)."""
        rng = np.random.default_rng([self.seed, self.rank, int(step), stream, 7])
        p = np.asarray(self.cfg.patch_size)
        size = p + 2 * self.margin
        crops, mods, pos, flips = [], [], [], []
        for _ in range(batch_size):
            vol = self.volumes[int(rng.integers(len(self.volumes)))]
            shape = np.asarray(vol.data.shape)
            if len(vol.foreground) and rng.random() < self.cfg.foreground_prob:
                centre = vol.foreground[int(rng.integers(len(vol.foreground)))].astype(int)
            else:
                centre = np.array([int(rng.integers(n)) for n in shape])
            # keep the patch inside the volume where the volume is large enough
            half = p // 2
            lo_c = np.minimum(half, shape // 2)
            hi_c = np.maximum(shape - (p - half), shape // 2)
            centre = np.clip(centre, lo_c, hi_c)
            crops.append(self._crop(vol, centre, size))
            mods.append(vol.modality)
            pos.append(2.0 * centre / np.maximum(shape - 1, 1) - 1.0)
            u = rng.random(3)  # always drawn, so the flip setting does not shift the stream
            flip = [bool(self.augment and a in self.cfg.flip_axes and u[a] < 0.5)
                    for a in range(3)]
            flips.append(flip)
        x = torch.from_numpy(np.stack(crops)[:, None]).to(device)
        position = torch.tensor(np.asarray(pos), dtype=torch.float32)
        for b, flip in enumerate(flips):
            dims = [d + 1 for d in range(3) if flip[d]]  # spatial dims of x[b] (1, X, Y, Z)
            if dims:
                # mirroring the patch = cutting it from the mirrored volume, whose patch centre
                # sits at the mirrored (negated) normalised position
                x[b] = torch.flip(x[b], dims=dims)
                for d in range(3):
                    if flip[d]:
                        position[b, d] = -position[b, d]
        if self.augment and (self.cfg.rotate_deg or self.cfg.scale):
            x = self._affine(x, rng, p)
        elif np.any(self.margin):
            m = self.margin
            x = x[:, :, m[0]:m[0] + p[0], m[1]:m[1] + p[1], m[2]:m[2] + p[2]]
        if self.augment and self.cfg.intensity:
            x = self._intensity(x, rng, mods)
        spacing = torch.tensor([list(self.cfg.spacing_mm)] * batch_size, dtype=torch.float32)
        return PatchBatch(x.contiguous(), torch.tensor(mods, dtype=torch.long, device=device),
                          position.to(device), spacing.to(device))

    def _affine(self, x: torch.Tensor, rng: np.random.Generator, p: np.ndarray) -> torch.Tensor:
        """Rotate by up to ``rotate_deg`` about a random axis and scale by 1 +- ``scale``,
        about the crop centre, trilinearly; then take the central patch of size ``p``."""
        import torch.nn.functional as F

        b = x.shape[0]
        size = np.asarray(x.shape[2:])
        thetas = []
        for _ in range(b):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            ang = np.deg2rad(rng.uniform(-self.cfg.rotate_deg, self.cfg.rotate_deg))
            k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            rot = np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k
            s = 1.0 + rng.uniform(-self.cfg.scale, self.cfg.scale)
            # affine_grid works in normalised output coords of the *patch*; map them to the
            # normalised coords of the larger crop (ratio p / size) after rotating/scaling.
            ratio = np.diag(p / size)
            a = ratio @ rot / s
            # grid_sample's coordinate order is (z, y, x) = reversed tensor dims
            a = a[::-1, ::-1]
            thetas.append(np.concatenate([a, np.zeros((3, 1))], axis=1))
        theta = torch.tensor(np.stack(thetas), dtype=torch.float32, device=x.device)
        grid = F.affine_grid(theta, [b, 1, *[int(v) for v in p]], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _intensity(self, x: torch.Tensor, rng: np.random.Generator, mods: list[int]
                   ) -> torch.Tensor:
        """MR only: x -> gain * x^gamma (on the non-negative part); CT HU are absolute."""
        r = self.cfg.intensity
        out = x.clone()
        for b, m in enumerate(mods):
            gain = float(rng.uniform(1 - r, 1 + r))
            gamma = float(rng.uniform(1 - r, 1 + r))
            if m == modality_id("MR"):
                out[b] = gain * torch.clamp(x[b], min=0) ** gamma
        return out
