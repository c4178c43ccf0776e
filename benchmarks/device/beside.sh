#!/bin/bash
# Issue 14: the default path before and after a change, one card, one call (device tool, carry
# [".whl", ".devrun"]; .devrun/before holds `git archive <before> medrecon benchmarks`, the
# weights are copied in here). GPU tests first (GPU_TESTS: their files), then per case of
# CASES the default path end to end, before then after, then AFTER_VARIANTS (end_to_end_speed.py
# variants of the after tree) while time is left.
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
left() { echo $(( LIMIT - $(elapsed) )); }
cp medrecon/priors/weights/*.safetensors .devrun/before/medrecon/priors/weights/
if [ -n "${GPU_TESTS:-}" ]; then
  timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS > "$LOGS/gpu_tests.log" 2>&1
  echo "gpu tests rc $? at $(elapsed) s: $(tail -1 $LOGS/gpu_tests.log)"
fi
E2E="python3 benchmarks/end_to_end_speed.py --work /tmp/e2e"
for case in ${CASES:-mr128 ct256 mr256}; do
  [ "$(left)" -lt 100 ] && break
  timeout 100 $E2E --out "$OUT/e2e.jsonl" --cases $case --variants "" >> "$LOGS/e2e.log" 2>&1
  ( cd .devrun/before && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 10 )) $E2E \
      --out "$OUT/e2e_before.jsonl" --cases $case --variants "defaults=" ) >> "$LOGS/e2e.log" 2>&1
  echo "$case before at $(elapsed) s"
  timeout $(( $(left) - 10 )) $E2E --out "$OUT/e2e.jsonl" --cases $case --variants "defaults=" \
    >> "$LOGS/e2e.log" 2>&1
  echo "$case after at $(elapsed) s"
done
for v in ${AFTER_VARIANTS:-}; do  # CASE:NAME=ARGS, ARGS with ',' for spaces
  [ "$(left)" -lt 60 ] && break
  c=${v%%:*}; nv=${v#*:}
  timeout $(( $(left) - 10 )) $E2E --out "$OUT/e2e.jsonl" --cases $c --variants "${nv//,/ }" \
    >> "$LOGS/e2e.log" 2>&1
  echo "$v at $(elapsed) s"
done
summary "variant case wall_seconds reconstruct_seconds psnr ssim guard_line stage_seconds" \
  e2e_before.jsonl e2e.jsonl
pack
