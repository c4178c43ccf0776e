"""DDP: two gloo processes on CPU train the tiny prior with the same command semantics."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.priors.conftest import TINY_CONFIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from medrecon.priors.config import load_train_config
    from medrecon.priors.train import train

    cfg = load_train_config(TINY_CONFIG, ["optim.steps=3", "log.val_every=3",
                                          "log.preview_every=100", "log.ckpt_every=3"])
    res = train(cfg, run_dir, device="cpu", progress=False)
    assert res.model is not None
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
              str(Path(out_dir) / f"rank{rank}.safetensors"))
    (Path(out_dir) / f"losses{rank}.txt").write_text(" ".join(map(repr, res.losses)))


@pytest.mark.slow
@pytest.mark.timeout(600)  # a wedged collective must fail the test, not stall CI
def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    # spawn, not fork: a child forked from a pytest process whose OpenMP pool has already run
    # can deadlock inside native code (seen here: one rank hung in train() for 20 minutes).
    mp.start_processes(_worker, args=(2, _free_port(), str(run_dir), str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    # DDP averages gradients, so both replicas hold identical weights after every step ...
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # ... which moved away from the common initialisation
    from medrecon.priors.config import load_train_config
    from medrecon.priors.train import make_denoiser

    init = make_denoiser(load_train_config(TINY_CONFIG)).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0 if w0[k].is_floating_point())
    # the logged (all-reduced) loss is the same number on both ranks, and finite
    l0 = [float(x) for x in (tmp_path / "losses0.txt").read_text().split()]
    l1 = [float(x) for x in (tmp_path / "losses1.txt").read_text().split()]
    assert l0 == l1 and len(l0) == 3 and all(torch.isfinite(torch.tensor(l0)))
    # rank 0 alone wrote the run: one checkpoint at step 3 recording a world size of 2
    import json

    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2
    assert sorted(p.name for p in (run_dir / "prior").iterdir()) == ["tiny.json",
                                                                     "tiny.safetensors"]
    assert not list(run_dir.glob(".*tmp"))
    # the checkpoint holds rank 0's weights
    ck = load_file(str(run_dir / "checkpoint" / "state.safetensors"))
    assert torch.equal(ck["model/network.conv_in.conv.weight"], w0["network.conv_in.conv.weight"])


def _setup_error_worker(rank: int, world: int, port: int, data_dir: str, run_dir: str,
                        out_dir: str) -> None:
    """One DDP rank training on ``data_dir``; writes the error it ended with (or "ok")."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from medrecon.priors.config import load_train_config
    from medrecon.priors.train import train

    cfg = load_train_config(TINY_CONFIG, ["data.source=files", "data.val_fraction=0",
                                          "optim.steps=1", "log.preview_every=100"])
    try:
        train(cfg, run_dir, [data_dir], device="cpu", progress=False)
        outcome = "ok"
    except Exception as exc:  # the test compares what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    (Path(out_dir) / f"outcome{rank}.txt").write_text(outcome)


@pytest.mark.timeout(120)  # backstop; the join below fails sooner
def test_an_unreadable_study_on_one_rank_ends_every_rank(tmp_path: Path) -> None:
    """The rank whose shard holds a corrupt study fails while reading it; the other rank must
    not wait forever in the first collective: both raise the same one-sentence InputError."""

    import numpy as np

    from medrecon.io import Volume, save_volume

    data = tmp_path / "data"
    data.mkdir()
    vol = np.random.default_rng(0).uniform(0, 100, (20, 20, 20)).astype(np.float32)
    good = save_volume(Volume(vol, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"),
                       data / "good.nii.gz")
    (data / "bad.nii.gz").write_bytes(good.read_bytes()[:200])  # one study per rank
    ctx = mp.start_processes(_setup_error_worker, nprocs=2, join=False, start_method="spawn",
                             args=(2, _free_port(), str(data), str(tmp_path / "run"),
                                   str(tmp_path)))
    _join_or_fail(ctx, 60, "a DDP rank hung after another rank failed to read its study")
    outcomes = [(tmp_path / f"outcome{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("InputError: Cannot read NIfTI file")
    assert "bad.nii.gz" in outcomes[0] and outcomes[0].count(". ") == 0  # one sentence
    assert not (tmp_path / "run" / "checkpoint").exists()



def _join_or_fail(ctx: mp.ProcessContext, seconds: float, message: str) -> None:
    """Wait for spawned ranks; kill them and fail the test if they outlive ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(message)

def _io_error_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    """One DDP rank of a run whose rank 0 cannot write files larger than 256 KiB (as on a full
    disk): its first checkpoint fails. Writes the error the rank ended with (or "ok")."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from medrecon.priors.config import load_train_config
    from medrecon.priors.train import train

    if rank == 0:  # config.yaml and log.csv fit; the ~1.8 MB checkpoint does not
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    cfg = load_train_config(TINY_CONFIG, ["optim.steps=4", "log.ckpt_every=2", "log.log_every=1",
                                          "log.val_every=100", "log.preview_every=100"])
    try:
        train(cfg, run_dir, device="cpu", progress=False)
        outcome = "ok"
    except Exception as exc:  # the test compares what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    import torch.distributed as dist

    outcome += f"\ngroup left: {not dist.is_initialized()}"
    (Path(out_dir) / f"outcome{rank}.txt").write_text(outcome)


@pytest.mark.timeout(120)  # backstop; the join below fails sooner
def test_a_checkpoint_rank_0_cannot_write_ends_every_rank(tmp_path: Path) -> None:
    """Rank 0 alone writes checkpoints; when that fails (a full disk), rank 1 must not wait in
    the next step's gradient all-reduce until the process-group timeout: both processes end
    promptly with the same one-sentence InputError, leave the process group, and no partial
    checkpoint is left behind."""

    run_dir = tmp_path / "run"
    ctx = mp.start_processes(_io_error_worker, nprocs=2, join=False, start_method="spawn",
                             args=(2, _free_port(), str(run_dir), str(tmp_path)))
    _join_or_fail(ctx, 45, "a DDP rank hung after rank 0 failed to write a checkpoint")
    outcomes = [(tmp_path / f"outcome{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == outcomes[1], outcomes
    error, left = outcomes[0].split("\n")
    assert error.startswith(f"InputError: Cannot write the training checkpoint "
                            f"{run_dir / 'checkpoint'} (File too large)"), error
    assert error.count(". ") == 0 and error.endswith(".")  # one sentence
    assert left == "group left: True"
    # the steps before the failure were logged; nothing half-written is left
    assert (run_dir / "log.csv").read_text().count("\n") == 1 + 2
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "prior").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
