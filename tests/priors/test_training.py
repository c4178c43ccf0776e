"""Training loop: loss decreases, resume is exact, checkpoints round-trip without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medrecon.errors import InputError
from medrecon.priors import load_prior, resolve_prior_path
from medrecon.priors.checkpoint import export_prior, read_prior_files
from medrecon.priors.data import build_pools
from medrecon.priors.train import make_denoiser, train


def _cfg(tiny_config, **optim):  # type: ignore[no-untyped-def]
    return tiny_config.replace(optim=optim) if optim else tiny_config


def test_loss_is_finite_and_decreases_when_fitting_one_batch(tiny_config) -> None:  # type: ignore[no-untyped-def]
    den = make_denoiser(tiny_config)
    pools = build_pools(tiny_config.data, tiny_config.normalisation)
    from medrecon.priors.data import PatchSampler

    batch = PatchSampler(pools[0], tiny_config.data, 0).batch(0, 2)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    sigma = torch.tensor([0.3, 0.6])
    noise = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(40):
        loss, per, _ = den.training_loss(batch.x, modality=batch.modality,
                                         position=batch.position, sigma=sigma, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config.replace(log={"val_every": 100, "preview_every": 100, "ckpt_every": 100})
    pools = build_pools(cfg.data, cfg.normalisation)
    full = train(cfg, tmp_path / "full", pools=pools, progress=False)
    # interrupted at step 2 (a log boundary, so the logged window means line up too)
    part = train(cfg.replace(optim={"steps": 2}), tmp_path / "part", pools=pools,
                 progress=False)
    assert part.step == 2
    rest = train(cfg, tmp_path / "part", resume=True, pools=pools, progress=False)
    assert rest.step == full.step == cfg.optim.steps
    # bit-identical losses and weights: all randomness is a function of (seed, rank, step)
    assert part.losses + rest.losses == full.losses
    for (k, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    # the CSV log of the resumed run equals the uninterrupted one (apart from timings)
    def rows(p: Path) -> list[list[str]]:
        lines = (p / "log.csv").read_text().splitlines()
        return [ln.split(",")[:4] for ln in lines]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    # exported priors agree too
    a = load_prior(tmp_path / "full")
    b = load_prior(tmp_path / "part")
    x = torch.rand(1, 1, 16, 16, 16)
    m = torch.tensor([1])
    assert torch.equal(a.denoiser(x, 0.3, modality=m), b.denoiser(x, 0.3, modality=m))


def test_a_run_folder_is_not_overwritten_and_resume_needs_a_checkpoint(tiny_config,
                                                                         tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config.replace(optim={"steps": 1})
    pools = build_pools(cfg.data, cfg.normalisation)
    with pytest.raises(InputError, match="no training checkpoint"):
        train(cfg, tmp_path / "r", resume=True, pools=pools, progress=False)
    train(cfg, tmp_path / "r", pools=pools, progress=False)
    with pytest.raises(InputError, match="already holds"):
        train(cfg, tmp_path / "r", pools=pools, progress=False)
    with pytest.raises(InputError, match="differs"):
        train(cfg.replace(optim={"lr": 1e-3}), tmp_path / "r", resume=True, pools=pools,
              progress=False)


def test_checkpoint_files_are_safetensors_and_json(tiny_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config.replace(optim={"steps": 2})
    res = train(cfg, tmp_path / "r", pools=build_pools(cfg.data, cfg.normalisation),
                progress=False)
    ck = tmp_path / "r" / "checkpoint"
    assert sorted(p.name for p in ck.iterdir()) == ["state.json", "state.safetensors"]
    raw = (ck / "state.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # safetensors: length + JSON header, no pickle
    assert any(k.startswith("optim/") for k in header)
    assert any(k.startswith("ema/") for k in header)
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["name"] == "tiny"
    assert b"\x80\x04" not in raw[:2]  # not a pickle protocol-4 stream
    assert res.prior_json == tmp_path / "r" / "prior" / "tiny.json"


def test_export_prior_sharded_bf16_round_trip(tiny_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medrecon.priors.train import prior_info

    den = make_denoiser(tiny_config)
    info = prior_info(tiny_config, 5)
    js = export_prior(tmp_path, "mine", den.state_dict(), info, torch.bfloat16,
                      max_shard_bytes=40_000)
    doc, tensors = read_prior_files(js)
    assert len(doc["weights"]) > 1 and doc["dtype"] == "bfloat16"
    for k, v in den.state_dict().items():
        assert torch.equal(tensors[k], v.to(torch.bfloat16).float()), k
    p = load_prior(js)
    assert p.name == "mine" and p.patch_size == (16, 16, 16) and p.uses_position
    assert not any(t.requires_grad for t in p.denoiser.parameters())
    assert resolve_prior_path(tmp_path) == js
    with pytest.raises(InputError, match="No prior named"):
        load_prior("no-such-prior")


def test_a_checkpoint_that_cannot_be_written_is_one_sentence_and_leaves_the_last_one(
        tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    import medrecon.priors.checkpoint as checkpoint

    cfg = tiny_config.replace(optim={"steps": 4}, log={"ckpt_every": 2, "val_every": 100,
                                                       "preview_every": 100})
    pools = build_pools(cfg.data, cfg.normalisation)
    real, calls = checkpoint._save_tensors, []

    def full_disk_after_the_first_checkpoint(tensors, path: Path) -> None:  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) > 2:  # the first checkpoint and its prior are written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)

    monkeypatch.setattr(checkpoint, "_save_tensors", full_disk_after_the_first_checkpoint)
    with pytest.raises(InputError) as info:
        train(cfg, tmp_path / "run", pools=pools, progress=False)
    msg = str(info.value)
    assert msg.startswith(f"Cannot write the training checkpoint {tmp_path / 'run' / 'checkpoint'}"
                          f" (No space left on device); ") and msg.count(". ") == 0
    # the step-2 checkpoint is intact, and nothing half-written is left
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert not [p.name for p in (tmp_path / "run").rglob(".*")]


def test_the_ddp_timeout_comes_from_the_argument_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from medrecon.priors.distributed import (
        DIST_TIMEOUT_ENV,
        DIST_TIMEOUT_MIN,
        dist_timeout_minutes,
    )

    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert dist_timeout_minutes() == DIST_TIMEOUT_MIN == 10.0
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "2.5")
    assert dist_timeout_minutes() == 2.5
    assert dist_timeout_minutes(45) == 45.0
    for bad in ("ten", "0", "-1", "nan"):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(InputError, match=f"{DIST_TIMEOUT_ENV} must be a positive number"):
            dist_timeout_minutes()
    with pytest.raises(InputError, match="positive number of minutes"):
        dist_timeout_minutes(0)
