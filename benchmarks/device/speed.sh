#!/bin/bash
# Issue 14: GPU tests, the network variants (network_speed.py) and the sampler's per-step
# profile at 128^3 / 256^3 (sampling_speed.py), one after the other so nothing shares the GPU.
set -u
source benchmarks/device/common.sh
timeout 120 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$LOGS/gpu_tests.log" 2>&1
tail -n 3 "$LOGS/gpu_tests.log"
timeout 220 python3 benchmarks/network_speed.py --out "$OUT/network.jsonl" --batches 16 \
    > "$LOGS/network.log" 2>&1
timeout 60 python3 benchmarks/network_speed.py --out "$OUT/network.jsonl" --batches 8,32 \
    --variants eager_bf16,channels_last >> "$LOGS/network.log" 2>&1
echo "network done at $(elapsed) s"
timeout $(( 560 - $(elapsed) )) python3 benchmarks/sampling_speed.py --out "$OUT/speed.jsonl" \
    --cases mr128,ct256,mr256 > "$LOGS/speed.log" 2>&1
echo "speed done at $(elapsed) s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for name in ("network.jsonl", "speed.jsonl"):
    p = pathlib.Path(sys.argv[1]) / name
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        keep = ("variant", "batch", "tiling", "ms_per_pass", "first_pass_s", "network_share",
                "max_dev_from_first", "case", "seconds", "network_only_seconds",
                "tiling_seconds", "consistency_seconds", "peak_gib", "simulate_seconds", "error")
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep})
PY
pack
