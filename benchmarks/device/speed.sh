#!/bin/bash
# Issue 14, before and after on one card in one call (device tool, carry [".whl", ".devrun"];
# .devrun/before holds `git archive <before-commit> medrecon benchmarks`, weights copied here):
# the sampler's per-step profile (sampling_speed.py) of the code before and after, then
# medrecon reconstruct end to end (end_to_end_speed.py), then the variants that tell the
# changes apart. One timed job at a time, in order of importance; each is cut to what is left.
# AFTER: the extra sampling_speed.py flags of the configuration under test.
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-570}
AFTER=${AFTER:---tiling fit --precision bf16-full}
left() { echo $(( LIMIT - $(elapsed) )); }
cp medrecon/priors/weights/*.safetensors .devrun/before/medrecon/priors/weights/
SS="python3 benchmarks/sampling_speed.py --cases mr128,ct256,mr256"
( cd .devrun/before && PYTHONPATH=/tmp/site:$PWD timeout 130 $SS --tiling shift \
    --out "$OUT/speed_before.jsonl" ) > "$LOGS/speed_before.log" 2>&1
echo "before done at $(elapsed) s"
timeout 100 $SS $AFTER --out "$OUT/speed_after.jsonl" > "$LOGS/speed_after.log" 2>&1
echo "after done at $(elapsed) s"
E2E="python3 benchmarks/end_to_end_speed.py --out $OUT/e2e.jsonl --work /tmp/e2e"
timeout $(( $(left) - 5 )) $E2E --cases mr128,ct256,mr256 --variants "after=${E2E_ARGS:-}" \
    > "$LOGS/e2e.log" 2>&1
echo "e2e done at $(elapsed) s"
timeout $(( $(left) - 5 )) $SS $AFTER --no-cuda-graphs --out "$OUT/speed_after.jsonl" \
    >> "$LOGS/speed_after.log" 2>&1
echo "no graphs done at $(elapsed) s"
timeout $(( $(left) - 5 )) $E2E --cases mr128 --variants "defaults=${E2E_ARGS:-}" \
    >> "$LOGS/e2e.log" 2>&1
echo "e2e defaults done at $(elapsed) s"
summary "variant tiling precision cuda_graphs case seconds network_only_seconds tiling_seconds
  consistency_seconds patches network_calls peak_gib simulate_seconds residual error
  wall_seconds reconstruct_seconds guard_line" speed_before.jsonl speed_after.jsonl e2e.jsonl
pack
