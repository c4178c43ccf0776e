#!/bin/bash
# Issue 14: what load_prior's 11-18 s in a fresh process is (startup_speed.py, H100,
# 2026-12-06): import times of torch, MONAI and medrecon in fresh processes, MONAI's slowest
# imports (-X importtime), the same MONAI import with the optional packages medrecon never
# uses made unimportable, the CUDA context, and load_prior once MONAI is imported.
# Sourced by startup.sh after common.sh, or run alone with it: carry [".whl"].
[ -n "${LOGS:-}" ] || source benchmarks/device/common.sh
nproc; python3 -c "import h5py; print('h5py', h5py.__version__, h5py.version.hdf5_version)"
for m in monai.networks.nets.diffusion_model_unet medrecon.cli.main; do
  python3 -c "import time; t=time.perf_counter(); import torch; t1=time.perf_counter(); import $m; print('import torch', round(t1-t,2), '$m', round(time.perf_counter()-t1,2))"
done
python3 - <<'PY'
import sys, time
t = time.perf_counter(); import torch; t1 = time.perf_counter()
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
print("cuda context", round(time.perf_counter() - t1, 2))
before = {m.split(".")[0] for m in sys.modules}
t = time.perf_counter(); import monai.networks.nets.diffusion_model_unet  # noqa
print("monai", round(time.perf_counter() - t, 2), "new top-level packages:",
      sorted({m.split(".")[0] for m in sys.modules} - before))
from medrecon.priors import load_prior
t = time.perf_counter(); p = load_prior("default", device="cuda"); torch.cuda.synchronize()
print("load_prior after the imports", round(time.perf_counter() - t, 2))
PY
python3 - <<'PY'
import sys, time
import torch
from medrecon.monai_import import lean_monai_import, monai_import_context
lean_monai_import()
t = time.perf_counter()
with monai_import_context():
    import monai.networks.nets.diffusion_model_unet  # noqa
print("monai, lean (the command line's import)", round(time.perf_counter() - t, 2))
PY
python3 -X importtime -c "import torch; import monai.networks.nets.diffusion_model_unet" 2> /tmp/imp.txt
sort -t'|' -k2 -n -r /tmp/imp.txt | grep -v "torch\b" | head -30 | cut -c1-120
