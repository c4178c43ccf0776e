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
