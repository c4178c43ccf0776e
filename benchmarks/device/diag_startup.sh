#!/bin/bash
# Issue 14: what load_prior's 11-18 s in a fresh process is (startup_speed.py, H100,
# 2026-12-06): import times of torch, MONAI and medrecon in fresh processes, MONAI's slowest
# imports (-X importtime), the CUDA context, and load_prior profiled once MONAI is imported.
# Device tool, carry [".whl"].
set -u
source benchmarks/device/common.sh
nproc; python3 -c "import h5py; print('h5py', h5py.__version__, hasattr(h5py.h5d.DatasetID, 'chunk_iter'))"
for m in torch monai.networks.nets.diffusion_model_unet medrecon medrecon.priors; do
  python3 -c "import time; t=time.perf_counter(); import torch; t1=time.perf_counter(); import $m; print('$m', round(t1-t,2), round(time.perf_counter()-t1,2))"
done
python3 -c "import time; t=time.perf_counter(); import torch; t1=time.perf_counter(); torch.zeros(1, device='cuda'); torch.cuda.synchronize(); print('cuda ctx', round(time.perf_counter()-t1,2))"
python3 -X importtime -c "import monai.networks.nets.diffusion_model_unet" 2> /tmp/imp.txt
sort -t'|' -k2 -n -r /tmp/imp.txt | head -40
python3 - <<'PY'
import cProfile, pstats, time, torch
import monai.networks.nets.diffusion_model_unet
torch.zeros(1, device="cuda")
from medrecon.priors import load_prior
pr = cProfile.Profile(); t = time.perf_counter(); pr.enable()
p = load_prior("default", device="cuda"); torch.cuda.synchronize()
pr.disable(); print("load_prior after imports", round(time.perf_counter() - t, 2))
pstats.Stats(pr).sort_stats("cumtime").print_stats(25)
PY
