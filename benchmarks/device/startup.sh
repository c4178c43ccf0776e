#!/bin/bash
# Issue 14 item 3: where a fresh process spends its time. GPU_TESTS=1: the GPU tests first
# (pytest -m gpu, needs the carried pytest wheel). The three end_to_end_speed.py cases'
# files (written, not timed), the import diagnosis (diag_startup.sh), startup_speed.py on each
# (TRACE=1: then --trace on two), the end to end wall of the default path (self-tuned weight +
# guard) until QUALITY_S seconds are left, then real validation cases REAL_CASES (issue 13;
# not timed). NO_STAGES=1 skips the import diagnosis and the stages; FILE_CASES picks the files.
# Device tool, carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-580}
left() { echo $(( LIMIT - $(elapsed) )); }
E2E="python3 benchmarks/end_to_end_speed.py --out $OUT/e2e.jsonl --work /tmp/e2e"
[ -n "${GPU_TESTS:-}" ] && timeout 150 python3 -m pytest -q -m gpu tests -p no:cacheprovider \
  > "$LOGS/gpu_tests.log" 2>&1; [ -n "${GPU_TESTS:-}" ] && tail -n 3 "$LOGS/gpu_tests.log"
timeout 150 $E2E --cases ${FILE_CASES:-mr128,ct256,mr256} --variants "" > "$LOGS/e2e.log" 2>&1
[ -z "${NO_STAGES:-}" ] && source benchmarks/device/diag_startup.sh > "$LOGS/diag.log" 2>&1; cat "$LOGS/diag.log"
echo "files done at $(elapsed) s"
ST="python3 benchmarks/startup_speed.py --out $OUT/startup.jsonl"
[ -z "${NO_STAGES:-}" ] && for c in ct256 mr128 mr256; do timeout 90 $ST /tmp/e2e/$c.h5; done \
  > "$LOGS/startup.log" 2>&1
echo "startup done at $(elapsed) s"
[ -n "${TRACE:-}" ] && for c in ct256 mr128; do timeout 120 $ST /tmp/e2e/$c.h5 --trace; done \
  >> "$LOGS/startup.log" 2>&1
echo "trace done at $(elapsed) s"
timeout $(( $(left) - ${QUALITY_S:-200} )) $E2E --cases ${E2E_CASES:-ct256} --variants "defaults=" \
  >> "$LOGS/e2e.log" 2>&1
echo "e2e defaults done at $(elapsed) s"
timeout $(( $(left) - 10 )) python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases \
  --out "$OUT/real.jsonl" --device cuda --samples 4 --cases ${REAL_CASES:-mr_abdomen} \
  > "$LOGS/real.log" 2>&1
echo "real done at $(elapsed) s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for name in ("startup.jsonl", "e2e.jsonl", "real.jsonl"):
    p = pathlib.Path(sys.argv[1]) / name
    print("##", name)
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        t = r.pop("trace", None)
        print({k: v for k, v in r.items() if k not in ("command", "date", "torch")})
        if t:
            print(" by kind", t["by_kind"], "signatures", t["signatures"])
            for s in t["by_signature"][:12]:
                print("  ", s)
            print("\n".join("   " + ln[:150] for ln in t["profile_tottime"][:22]))
PY
pack
