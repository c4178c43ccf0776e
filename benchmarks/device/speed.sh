#!/bin/bash
# Issue 14: GPU tests, the sampler's per-step profile at 128^3 / 256^3 with `shift` and `fit`
# tiling (sampling_speed.py), then the network variants (network_speed.py), one after the other
# so that nothing shares the GPU with a timed run.
set -u
source benchmarks/device/common.sh
timeout 100 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$LOGS/gpu_tests.log" 2>&1
tail -n 2 "$LOGS/gpu_tests.log"
for t in shift fit; do
  timeout $(( 400 - $(elapsed) )) python3 benchmarks/sampling_speed.py --tiling $t \
      --out "$OUT/speed.jsonl" --cases mr128,ct256,mr256 >> "$LOGS/speed.log" 2>&1
done
echo "speed done at $(elapsed) s"
timeout $(( 560 - $(elapsed) )) python3 benchmarks/network_speed.py --out "$OUT/network.jsonl" \
    --batches 16 --variants eager_bf16,channels_last,compile,compile_cl,eager_fp32 \
    > "$LOGS/network.log" 2>&1
echo "network done at $(elapsed) s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
keep = ("variant", "batch", "tiling", "ms_per_pass", "first_pass_s", "network_share",
        "max_dev_from_first", "case", "seconds", "network_only_seconds", "tiling_seconds",
        "consistency_seconds", "patches", "peak_gib", "simulate_seconds", "residual", "error")
for name in ("speed.jsonl", "network.jsonl"):
    p = pathlib.Path(sys.argv[1]) / name
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep})
PY
pack
