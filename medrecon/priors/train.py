"""Training loop of the prior: EDM loss on random 3D patches, AdamW, EMA, bf16, DDP, resume.

One function, :func:`train`, serves the CLI (``medrecon train``), ``torchrun`` (DDP: one process
per GPU, detected from the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment) and tests.

Per step t (per rank r):  batch = patches(seed, r, t) (cut from the volume pools, or for
``data.source: rendered`` rendered on the device at voxel sizes drawn per patch, see
:class:`~medrecon.priors.data.RenderedPatchSource`); sigma ~ logN(P_mean, P_std^2);
n ~ N(0, I) from a generator seeded by (seed, r, t); loss = mean lambda(sigma) |D(x+sigma n) - x|^2;
AdamW with lr = lr_max min(1, (t+1)/warmup); gradients clipped to ``grad_clip`` (global norm);
EMA  theta_ema <- beta theta_ema + (1 - beta) theta,  beta = min(ema_decay, (1+t)/(10+t)).
With ``init_from`` the model and the EMA start from an exported prior's weights (new inputs such
as the voxel-size embedding at zero, so step 0 computes what that prior computes); the prior's
JSON then records the lineage (``training.init_from``, ``init_steps``, ``total_steps``).

Rank 0 alone writes: ``RUN_DIR/config.yaml``, ``log.csv`` (step, loss, lr, grad norm,
loss per sigma band, samples/s), ``val.csv`` (EMA validation denoising PSNR per sigma and patch group, in dB
with data range 1 in model space; :mod:`medrecon.priors.evaluation`), ``previews/step_N.png``
(unconditional EMA samples, one patch per modality and preview voxel size), ``checkpoint/`` (exact resume) and ``prior/NAME.json``
(+ safetensors: the EMA prior, loadable with :func:`medrecon.priors.load_prior`).

Failures under DDP: an error on any rank ends every rank with the same error, promptly. The data
set-up and each of rank 0's output steps (log row, validation, preview, checkpoint: only at
their intervals, and at the end) are followed by one all-reduce of a failure flag; when it is
set, the ranks exchange the error and all raise it (a user error, such as a full disk while
writing a checkpoint, as the same one-sentence :class:`~medrecon.errors.InputError`), leave
the process group and exit. Checkpoints and the exported prior are written atomically, so a
failed write leaves the previous ones intact. Anything else that could leave ranks waiting for
each other (a rank killed, a failure inside the DDP step) is ended by the process-group timeout:
``dist_timeout`` minutes, else ``$MEDRECON_DIST_TIMEOUT_MIN``, else 10 (PyTorch's default is 30).
Raise it when ranks may legitimately wait longer for one another, e.g. when rank 0 reads many
more validation studies than the others on a first, uncached run.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.priors.config import TrainConfig, dump_train_config
from medrecon.priors.data import (
    PatchBatch,
    PatchSampler,
    RenderedPatchSource,
    SpacingRange,
    TrainingVolume,
    _seed_int,
    build_pools,
)
from medrecon.priors.denoiser import EDMDenoiser
from medrecon.priors.distributed import (
    DIST_TIMEOUT_ENV,
    DIST_TIMEOUT_MIN,
    DistInfo,
    any_rank,
    init_distributed,
    leave,
    mean_over_ranks,
    on_every_rank,
)
from medrecon.priors.evaluation import (
    group_masks,
    validation_fields,
    validation_psnr,
    write_preview,
)
from medrecon.priors.network import build_network, count_parameters
from medrecon.priors.schedules import sample_training_sigmas, sigma_bands

LOG_FIELDS_BASE = ["step", "loss", "lr", "grad_norm", "samples_per_s"]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; paths are meaningful on rank 0)."""

    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    val_psnr: dict[str, float] = field(default_factory=dict)
    prior_json: Path | None = None
    samples_per_s: float = 0.0
    model: torch.nn.Module | None = None  # the trained (non-EMA) denoiser of this rank


def make_denoiser(config: TrainConfig, device: torch.device | str = "cpu") -> EDMDenoiser:
    """An untrained denoiser for ``config`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    d = config.denoiser
    return EDMDenoiser(build_network(config.network, device), sigma_data=d.sigma_data,
                       sigma_min=d.sigma_min, sigma_max=d.sigma_max, p_mean=d.p_mean,
                       p_std=d.p_std, uses_position=config.network.uses_position,
                       num_modalities=config.network.num_modalities,
                       noise_embed_scale=d.noise_embed_scale,
                       uses_spacing=config.network.uses_spacing).to(device)


def prior_info(config: TrainConfig, step: int, extra: dict[str, Any] | None = None, *,
               spacing_range: SpacingRange | None = None,
               lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON description stored next to exported prior weights.

    ``spacing_range``: the voxel sizes training drew (rendered patches), recorded as
    ``spacing_range_mm``; ``lineage``: ``{"init_from": name, "init_steps": N}`` of a warm
    start, recorded in ``training`` with ``total_steps = N + step``.
    """
    cfg = config.to_dict()
    training: dict[str, Any] = {"steps": step, "source": config.data.source,
                                "seed": config.seed}
    if lineage:
        training.update(lineage, total_steps=int(lineage["init_steps"]) + step)
    training.update(extra or {})
    info: dict[str, Any] = {
        "network": cfg["network"], "denoiser": cfg["denoiser"],
        "normalisation": cfg["normalisation"], "modalities": list(config.data.modalities),
        "patch_size": list(config.data.patch_size), "spacing_mm": list(config.data.spacing_mm),
        "uses_position": config.network.uses_position,
        "parameters": count_parameters(build_network(config.network)),
        "training": training,
        "config": cfg,
    }
    if spacing_range is not None:
        info["spacing_range_mm"] = [spacing_range.low, spacing_range.high]
    return info


# --------------------------------------------------------------------------- logging helpers
@contextlib.contextmanager
def _writing(what: str, path: Path) -> Iterator[None]:
    """Turn an :class:`OSError` (a full disk, no permission) while writing ``what`` at
    ``path`` into one :class:`InputError` sentence."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"Cannot write {what} {path} ({exc.strerror or exc}); free disk space "
                         f"or fix the permissions, then run again (--resume continues from "
                         f"the last checkpoint, if any).") from exc


class _Csv:
    """Append-only CSV that, on resume, first drops rows past the checkpoint step."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None,
                 what: str) -> None:
        self.path, self.fields, self.what = path, fields, what
        rows: list[dict[str, str]] = []
        with _writing(what, path):
            if resume_step is not None and path.exists():
                with path.open(newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with _writing(self.what, self.path), self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _band_name(lo: float, hi: float) -> str:
    return f"loss_sigma_{lo:g}_{hi:g}"


# --------------------------------------------------------------------------- set-up
@dataclass
class _Setup:
    """What :func:`_prepare` gives the training loop (the CSV logs on rank 0 only)."""

    start_step: int
    ckpt: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None
    sampler: PatchSampler | RenderedPatchSource
    val_batch: PatchBatch | None
    data_seconds: float
    log_csv: _Csv | None = None
    val_csv: _Csv | None = None
    init_weights: dict[str, torch.Tensor] | None = None  # warm start (fresh runs only)
    lineage: dict[str, Any] | None = None
    spacing_range: SpacingRange | None = None


def _prepare(config: TrainConfig, run_dir: Path, data_paths: Sequence[str | Path], resume: bool,
             dist_info: DistInfo, dev: torch.device, workers: int,
             pools: tuple[list[TrainingVolume], list[TrainingVolume]] | None) -> _Setup:
    """This rank's resume state or warm-start weights, run folder and logs (rank 0), training
    patch source and validation batch."""
    from medrecon.io.atomic import atomic_file
    from medrecon.priors.checkpoint import load_training_checkpoint, warm_start_weights

    main = dist_info.main
    start_step, ckpt, init_weights, lineage = 0, None, None, None
    if resume:
        meta, msd, esd, osd = load_training_checkpoint(run_dir / "checkpoint")
        saved = TrainConfig.from_dict(meta["config"])
        if _resume_key(saved) != _resume_key(config):
            raise InputError("The config differs from the checkpoint's in more than optim.steps "
                             "and log settings; resume with RUN_DIR/config.yaml.")
        if int(meta["world_size"]) != dist_info.world:
            raise InputError(f"The checkpoint was written by {meta['world_size']} process(es); "
                             f"resume with the same number, not {dist_info.world}.")
        start_step, ckpt = int(meta["step"]), (msd, esd, osd)
        lineage = meta.get("lineage")
    elif main and (run_dir / "checkpoint").exists():
        raise InputError(f"{run_dir} already holds a training run; pass --resume or choose "
                         "another --out.")
    elif config.init_from:
        init_weights, lineage = warm_start_weights(config.init_from, config)

    if main:
        with _writing("the run's config", run_dir / "config.yaml"):
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(run_dir / "config.yaml") as tmp:
                tmp.write_text(dump_train_config(config))

    t0 = time.perf_counter()
    sampler: PatchSampler | RenderedPatchSource
    val_batch, spacing_range = None, None
    if config.data.source == "rendered":
        sampler = RenderedPatchSource(config.data, config.normalisation, config.seed,
                                      dist_info.rank)
        spacing_range = SpacingRange.of_renderer()
        if main:
            # half drawn like training, half at the reference voxel size (the warm start's)
            vs = RenderedPatchSource(config.data, config.normalisation, config.seed + 1,
                                     augment=False)
            n = config.log.val_patches
            parts = [vs.batch(0, n - n // 2, dev, stream=1),
                     vs.batch(0, n // 2, dev, stream=2, spacing=config.data.spacing_mm)]
            val_batch = PatchBatch(*(torch.cat([getattr(b, f) for b in parts])
                                     for f in ("x", "modality", "position", "spacing")))
    else:
        if pools is None:
            cache = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "cache"
            pools = build_pools(config.data, config.normalisation, data_paths, cache,
                                dist_info.rank, dist_info.world, workers, dev)
        train_vols, val_vols = pools
        sampler = PatchSampler(train_vols, config.data, config.seed, dist_info.rank)
        if main and val_vols:
            vs = PatchSampler(val_vols, config.data, config.seed + 1, 0, augment=False)
            val_batch = vs.batch(0, config.log.val_patches, dev, stream=1)
    data_seconds = time.perf_counter() - t0
    log_csv = val_csv = None
    if main:
        log_fields = LOG_FIELDS_BASE + [_band_name(lo, hi) for lo, hi in sigma_bands()]
        resume_at = start_step if resume else None
        log_csv = _Csv(run_dir / "log.csv", log_fields, resume_at, "the training log")
        val_csv = _Csv(run_dir / "val.csv", validation_fields(config), resume_at,
                       "the validation log")
    return _Setup(start_step, ckpt, sampler, val_batch, data_seconds, log_csv, val_csv,
                  init_weights, lineage, spacing_range)


# --------------------------------------------------------------------------- main loop
def _resume_key(config: TrainConfig) -> dict[str, Any]:
    """The parts of a config that must not change on resume (steps and logging may)."""
    d = config.to_dict()
    d.pop("log")
    d["optim"].pop("steps")
    return d


def train(
    config: TrainConfig,
    run_dir: str | Path,
    data_paths: Sequence[str | Path] = (),
    resume: bool = False,
    device: str = "auto",
    max_minutes: float | None = None,
    workers: int = 0,
    progress: bool = True,
    pools: tuple[list[TrainingVolume], list[TrainingVolume]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    dist_timeout: float | None = None,
) -> TrainResult:
    """Train (or resume training) a prior; see the module docstring for what is written.

    Args:
        config: the run's config (on resume it must equal the checkpoint's).
        run_dir: output folder; created if missing.
        data_paths: NIfTI files / DICOM folders / manifests for ``data.source == "files"``.
        resume: continue from ``run_dir/checkpoint`` exactly where it stopped.
        device: "auto" (CUDA if available), "cpu" or "cuda"; under torchrun each rank uses
            ``cuda:LOCAL_RANK``.
        max_minutes: stop after this much wall-clock training time, with a log row, a
            validation and a checkpoint at that step (a chunk of a longer run).
        workers: processes for loading / generating the training volumes.
        progress: show a tqdm progress bar on rank 0.
        pools: pre-built (train, val) volumes (tests); skips :func:`build_pools`.
        on_step: called as on_step(step, loss) after every step (tests, monitoring).
        dist_timeout: minutes a DDP collective waits for the other processes before it fails
            (None: ``$MEDRECON_DIST_TIMEOUT_MIN``, else :data:`DIST_TIMEOUT_MIN`); only used
            when this call starts the process group.
    """
    run_dir = Path(run_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available.")
    dist_info = init_distributed(device, dist_timeout)
    try:
        return _fit(config, run_dir, data_paths, resume, device, dist_info, max_minutes,
                    workers, progress, pools, on_step)
    finally:
        # on success every rank has passed the last collective; on an error shared by
        # on_every_rank every rank is raising; on any other error this rank leaves at once
        leave(dist_info)


def _fit(config: TrainConfig, run_dir: Path, data_paths: Sequence[str | Path], resume: bool,
         device: str, dist_info: DistInfo, max_minutes: float | None, workers: int,
         progress: bool, pools: tuple[list[TrainingVolume], list[TrainingVolume]] | None,
         on_step: Callable[[int, float], None] | None) -> TrainResult:
    """:func:`train` once the process group (if any) is up."""
    from medrecon.priors.checkpoint import (
        NEW_INPUT_PREFIXES,
        export_prior,
        save_training_checkpoint,
    )

    dev = torch.device(f"cuda:{dist_info.local_rank}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    main = dist_info.main

    # Resume state and data, per rank. An error on any rank is raised on every rank, so that
    # no rank is left waiting in the first collective for one that has given up.
    setup = on_every_rank(functools.partial(
        _prepare, config, run_dir, data_paths, resume, dist_info, dev, workers, pools),
        dist_info, "preparing the training data", dev)
    start_step, ckpt, sampler, val_batch = (setup.start_step, setup.ckpt, setup.sampler,
                                            setup.val_batch)
    data_seconds = setup.data_seconds
    log_csv, val_csv = setup.log_csv, setup.val_csv
    val_groups = (group_masks(val_batch, config.data.spacing_mm) if val_batch is not None
                  else None)

    # ---- model, EMA, optimiser
    model = make_denoiser(config, dev)
    if setup.init_weights is not None:
        missing, unexpected = model.load_state_dict(setup.init_weights, strict=False)
        odd = [k for k in missing if not k.startswith(NEW_INPUT_PREFIXES)] + list(unexpected)
        if odd:
            raise InputError(f"init_from {config.init_from!r} does not fit the network "
                             f"({len(odd)} tensors differ, e.g. {odd[0]}); export it again.")
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt_cfg = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg.lr, betas=opt_cfg.betas,
                                  weight_decay=opt_cfg.weight_decay)
    if ckpt is not None:
        msd, esd, osd = ckpt
        model.load_state_dict(msd)
        ema = {k: v.to(dev).float() for k, v in esd.items()}
        optimizer.load_state_dict(osd)
    fwd: Callable[..., torch.Tensor] = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    ema_model = make_denoiser(config, dev).eval().requires_grad_(False)

    def load_ema() -> EDMDenoiser:
        ema_model.load_state_dict(ema)
        return ema_model

    bands = sigma_bands()
    bar = None
    if main and progress:
        from medrecon.progress import progress_bar

        # In logs no bar: the rows logged every log_every steps say how training goes.
        bar = progress_bar(opt_cfg.steps, f"train {config.name}", initial=start_step,
                           unit="step", leave=True)

    use_bf16 = opt_cfg.bf16 and dev.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    result = TrainResult(run_dir=run_dir, step=start_step)
    acc_loss, acc_n = 0.0, 0
    band_acc: dict[str, list[float]] = {}
    t_window, samples_window = time.perf_counter(), 0
    t_start = time.perf_counter()
    last_val: dict[str, float] = {}
    step = start_step
    model.train()

    def checkpoint(step_done: int) -> None:
        """Write the exact-resume checkpoint and export the EMA prior (rank 0)."""
        meta = {"config": config.to_dict(), "step": step_done, "world_size": dist_info.world,
                "last_loss": result.losses[-1] if result.losses else None,
                "val": last_val, "lineage": setup.lineage}
        with _writing("the training checkpoint", run_dir / "checkpoint"):
            save_training_checkpoint(run_dir, model, ema, optimizer, meta)
        with _writing("the exported prior", run_dir / "prior" / f"{config.name}.json"):
            result.prior_json = export_prior(
                run_dir / "prior", config.name, load_ema().state_dict(),
                prior_info(config, step_done, {"last_loss": meta["last_loss"],
                                               "val_psnr": last_val},
                           spacing_range=setup.spacing_range, lineage=setup.lineage))

    def outputs(step_done: int, row: dict[str, Any] | None, val: bool, preview: bool,
                ckpt_due: bool) -> None:
        """Rank 0's log row, validation, preview and checkpoint of this step (if due)."""
        nonlocal last_val
        if not main:
            return
        if row is not None and log_csv is not None:
            log_csv.write(row)
        if val and val_batch is not None and val_csv is not None:
            last_val = validation_psnr(load_ema(), val_batch, config.log.val_sigmas,
                                       config.seed, val_groups)
            result.val_psnr = last_val
            val_csv.write({"step": step_done, **last_val})
        if preview:
            path = run_dir / "previews" / f"step_{step_done:07d}.png"
            with _writing("the preview", path):
                write_preview(load_ema(), config, path, dev)
        if ckpt_due:
            checkpoint(step_done)

    # Rendered batches on CUDA: batch step+1 is rendered on a side stream while step's kernels
    # run (rendering alone is about half as fast as a step on an H200; in sequence the loop
    # ran at 45 samples/s, the step alone at 70). A batch is a pure function of its step, so
    # the order of rendering changes no number.
    side = (torch.cuda.Stream(dev) if dev.type == "cuda"
            and isinstance(sampler, RenderedPatchSource) else None)
    ahead: tuple[int, PatchBatch] | None = None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(dev))  # whatever set-up left in flight
    try:
        while step < opt_cfg.steps:
            # -- one optimisation step, a pure function of (weights, seed, rank, step)
            if ahead is not None and ahead[0] == step and side is not None:
                batch = ahead[1]
                cur = torch.cuda.current_stream(dev)
                cur.wait_stream(side)
                for t in (batch.x, batch.modality, batch.position, batch.spacing):
                    t.record_stream(cur)
            else:
                batch = sampler.batch(step, opt_cfg.batch_size, dev)
            ahead = None
            gen = torch.Generator(device=dev).manual_seed(_seed_int(config.seed, dist_info.rank,
                                                                    step, 3))
            sigma = sample_training_sigmas(opt_cfg.batch_size, model.p_mean, model.p_std,
                                           torch.Generator().manual_seed(
                                               _seed_int(config.seed, dist_info.rank, step, 4)),
                                           dev)
            noise = torch.randn(batch.x.shape, generator=gen, device=dev)
            lr = opt_cfg.lr * min(1.0, (step + 1) / max(opt_cfg.warmup_steps, 1))
            for g in optimizer.param_groups:
                g["lr"] = lr
            with autocast:
                d = fwd(batch.x + sigma.view(-1, 1, 1, 1, 1) * noise, sigma,
                        modality=batch.modality, position=batch.position, spacing=batch.spacing)
            per = model.loss_weight(sigma) * ((d.float() - batch.x) ** 2).flatten(1).mean(1)
            loss = per.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip)
            optimizer.step()
            beta = min(opt_cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        ema[k].mul_(beta).add_(v.float(), alpha=1 - beta)
                    else:
                        ema[k].copy_(v)
            if side is not None and step + 1 < opt_cfg.steps:
                with torch.cuda.stream(side):
                    ahead = (step + 1, sampler.batch(step + 1, opt_cfg.batch_size, dev))
            step += 1

            # -- bookkeeping
            loss_v = mean_over_ranks(float(loss.detach()), dist_info, dev)
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"training loss became {loss_v} at step {step}")
            result.losses.append(loss_v)
            result.step = step
            if on_step is not None:
                on_step(step, loss_v)
            acc_loss, acc_n = acc_loss + loss_v, acc_n + 1
            samples_window += opt_cfg.batch_size * dist_info.world
            for s_, l_ in zip(sigma.tolist(), per.detach().tolist(), strict=True):
                for lo, hi in bands:
                    if lo <= s_ < hi:
                        band_acc.setdefault(_band_name(lo, hi), []).append(l_)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.4f}", refresh=False)

            last = step == opt_cfg.steps
            stop = False
            if max_minutes is not None:
                stop = any_rank((time.perf_counter() - t_start) / 60.0 >= max_minutes,
                                dist_info, dev)
            row: dict[str, Any] | None = None
            if step % config.log.log_every == 0 or last or stop:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                now = time.perf_counter()
                sps = samples_window / max(now - t_window, 1e-9)
                result.samples_per_s = sps
                row = {"step": step, "loss": acc_loss / acc_n, "lr": lr,
                       "grad_norm": float(gnorm), "samples_per_s": sps}
                row.update({k: float(np.mean(v)) for k, v in band_acc.items()})
                acc_loss, acc_n, band_acc = 0.0, 0, {}
                t_window, samples_window = now, 0

            # Rank 0 writes; whether it succeeded is shared at once (only at these intervals,
            # the same steps on every rank), so a full disk or a failed validation on rank 0
            # ends every rank with its error instead of leaving them in the next all-reduce.
            val = step % config.log.val_every == 0 or last or stop
            preview = step % config.log.preview_every == 0
            ckpt_due = step % config.log.ckpt_every == 0 or last or stop
            if row is not None or val or preview or ckpt_due:
                on_every_rank(functools.partial(outputs, step, row, val, preview, ckpt_due),
                              dist_info, f"validating or writing the outputs of step {step}", dev)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        # The DDP wrapper holds the process group and is freed only by the cyclic garbage
        # collector; unbound here, train() collects it before destroying the group (left to
        # interpreter exit, gloo's threads can abort the process).
        del fwd
    result.model = model

    def finish() -> None:
        """The last checkpoint (if the loop wrote none) and ``timing.txt`` (rank 0)."""
        if not main:
            return
        if result.prior_json is None and step > start_step:
            checkpoint(step)
        result.prior_json = result.prior_json or next(iter((run_dir / "prior").glob("*.json")),
                                                      None)
        with _writing("the timing summary", run_dir / "timing.txt"):
            (run_dir / "timing.txt").write_text(
                f"data_seconds {data_seconds:.2f}\n"
                f"train_seconds {time.perf_counter() - t_start:.2f}\n"
                f"steps {step - start_step}\nsamples_per_s {result.samples_per_s:.2f}\n")

    # also the last barrier: no rank leaves the process group before rank 0 has written
    on_every_rank(finish, dist_info, "writing the final checkpoint", dev)
    return result


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m medrecon.priors.train``: the same as ``medrecon train`` with only the
    standard library's argparse, for ``torchrun -m medrecon.priors.train`` on lean machines."""
    import argparse
    import sys

    from medrecon.errors import MedreconError
    from medrecon.priors.config import load_train_config

    ap = argparse.ArgumentParser(prog="python -m medrecon.priors.train")
    ap.add_argument("--data", action="append", default=[])
    ap.add_argument("--config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--dist-timeout", type=float, metavar="MINUTES",
                    help=f"DDP process-group timeout (default ${DIST_TIMEOUT_ENV} or "
                         f"{DIST_TIMEOUT_MIN:g}).")
    a = ap.parse_args(argv)
    try:
        overrides = list(a.overrides) + (["data.source=synthetic"] if a.synthetic else [])
        config = a.config
        if a.resume and config is None and (Path(a.out) / "config.yaml").is_file():
            config = Path(a.out) / "config.yaml"
        cfg = load_train_config(config, overrides)
        r = train(cfg, a.out, a.data, a.resume, a.device, a.max_minutes, a.workers,
                  dist_timeout=a.dist_timeout)
    except MedreconError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Trained {cfg.name} to step {r.step}; prior written to {r.prior_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
