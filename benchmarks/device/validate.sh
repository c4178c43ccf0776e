#!/bin/bash
# The last call of a session: the default path on the real rows the session's CPU-only changes
# touch (PAIRS="case:setting ..."), then the default path of the 256^3 MR file end to end with
# its stage profile (issue 14) while time is left (E2E_FIRST=1: the end-to-end runs first;
# E2E_CASES, E2E_VARIANTS: end_to_end_speed.py's; RQ_SET="cg_iters=30 ...": diffusion
# settings for real_quality.py's --set). Device tool, carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
left() { echo $(( LIMIT - $(elapsed) )); }
RQ="python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases --device cuda --samples 4"
for kv in ${RQ_SET:-}; do RQ="$RQ --set $kv"; done
pairs() {
  for pair in ${PAIRS:-mr_dwi_b0:mr4 ct_spine:ct30 ct_spine:ct60 mr_brain_piesno:mr4}; do
    [ "$(left)" -lt 60 ] && break
    timeout $(( $(left) - 20 )) $RQ --out $OUT/real.jsonl --cases ${pair%%:*} \
      --settings ${pair##*:} >> $LOGS/real.log 2>&1
    echo "$pair done at $(elapsed) s"
  done
}
# E2E_VARIANTS: end_to_end_speed.py's variants (default "defaults=": what a user gets)
e2e() {
  E2E_CASES=${E2E_CASES-mr256}  # empty: no end-to-end run
  if [ -n "$E2E_CASES" ] && [ "$(left)" -gt 200 ]; then
    E2E="python3 benchmarks/end_to_end_speed.py --out $OUT/e2e.jsonl --work /tmp/e2e"
    timeout 100 $E2E --cases $E2E_CASES --variants "" > $LOGS/e2e.log 2>&1  # files
    timeout $(( $(left) - 10 )) $E2E --cases $E2E_CASES --variants "${E2E_VARIANTS:-defaults=}" \
      >> $LOGS/e2e.log 2>&1
    echo "e2e done at $(elapsed) s"
  fi
}
if [ -n "${E2E_FIRST:-}" ]; then e2e; pairs; else pairs; e2e; fi
real_rows real.jsonl e2e.jsonl
pack
