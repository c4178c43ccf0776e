#!/bin/bash
# Issue 14, before and after on one card in one call (device tool, carry [".whl", ".devrun"];
# .devrun/before holds `git archive <before-commit> medrecon benchmarks`, weights copied here):
# the sampler's per-step profile (sampling_speed.py) of the code before and after, the network
# variants (network_speed.py), then medrecon reconstruct end to end (end_to_end_speed.py).
# One timed job at a time; each step is cut to what is left of LIMIT seconds.
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-570}
left() { echo $(( LIMIT - $(elapsed) )); }
cp medrecon/priors/weights/*.safetensors .devrun/before/medrecon/priors/weights/
SS="python3 benchmarks/sampling_speed.py --cases mr128,ct256,mr256"
( cd .devrun/before && PYTHONPATH=/tmp/site:$PWD timeout 130 $SS --tiling shift \
    --out "$OUT/speed_before.jsonl" ) > "$LOGS/speed_before.log" 2>&1
echo "before done at $(elapsed) s"
timeout 100 $SS --tiling fit --precision bf16-full --out "$OUT/speed_after.jsonl" > "$LOGS/speed_after.log" 2>&1
timeout 90 $SS --tiling fit --out "$OUT/speed_after.jsonl" >> "$LOGS/speed_after.log" 2>&1
echo "after fit done at $(elapsed) s"
timeout 60 python3 benchmarks/network_speed.py --out "$OUT/network.jsonl" --batches 16 \
    --variants eager_bf16,bf16_full,eager_bf16+bench,bf16_full+bench > "$LOGS/network.log" 2>&1
echo "network done at $(elapsed) s"
timeout $(( $(left) - 110 )) python3 benchmarks/end_to_end_speed.py --out "$OUT/e2e.jsonl" \
    --work /tmp/e2e --cases mr128,ct256,mr256 \
    --variants "fit_bf16full=--set tiling=fit --set precision=bf16-full" > "$LOGS/e2e.log" 2>&1
echo "e2e done at $(elapsed) s"
timeout $(( $(left) - 5 )) $SS --tiling shift --out "$OUT/speed_after.jsonl" >> "$LOGS/speed_after.log" 2>&1
echo "after shift done at $(elapsed) s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
keep = ("variant", "batch", "tiling", "precision", "ms_per_pass", "first_pass_s", "network_share",
        "max_dev_from_first", "case", "seconds", "network_only_seconds", "tiling_seconds",
        "consistency_seconds", "patches", "network_calls", "peak_gib", "simulate_seconds",
        "residual", "error", "wall_seconds", "reconstruct_seconds")
for name in ("speed_before.jsonl", "speed_after.jsonl", "network.jsonl", "e2e.jsonl"):
    p = pathlib.Path(sys.argv[1]) / name
    print("##", name)
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep})
PY
pack
