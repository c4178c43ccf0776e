#!/bin/bash
# Issue 13 item 3: coverage of the default path's std map (the guard, K = 4, 50 steps) on the
# real validation files, MR and CT side by side on the one GPU (std_calibration.py check
# --guarded: the map as written, and the same map without this measurement's held-out
# factor). CASES_MR / CASES_CT: the files (none: skipped); HEADS=N adds N synthetic test heads per setting.
# Device tool, carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
SC="python3 benchmarks/std_calibration.py check --guarded --steps 50 --samples 4 --device cuda"
# CASES_MR=none / CASES_CT=none: no such run
[ "${CASES_MR:-}" != none ] && ( timeout $LIMIT $SC --real --cases-dir .devrun/real_cases \
    --modalities MR --heads 0 --cases ${CASES_MR:-mr_dwi_b0,mr_brain_piesno,mr_abdomen} \
    --out "$OUT/std_mr.jsonl" ) > "$LOGS/std_mr.log" 2>&1 &
# CASES_CT: comma-separated files; groups separated by spaces run as processes side by side
g=0
for group in ${CASES_CT:-ct_spine,ct_abdomen,ct_head_ect}; do
  [ "$group" = none ] && break
  g=$((g + 1))
  ( timeout $LIMIT $SC --real --cases-dir .devrun/real_cases --modalities CT --heads 0 \
      --cases "$group" --out "$OUT/std_ct$g.jsonl" ) > "$LOGS/std_ct$g.log" 2>&1 &
done
if [ "${HEADS:-0}" -gt 0 ]; then  # HEADS_MODALITIES: default MR,CT
  ( timeout $LIMIT $SC --shape 96,112,112 --heads "$HEADS" --modalities ${HEADS_MODALITIES:-MR,CT} \
      --out "$OUT/std_heads.jsonl" ) > "$LOGS/std_heads.log" 2>&1 &
fi
wait
echo "all done at $(elapsed) s"
summary "case setting guard weight lam alpha scale prior_alpha coverage_2std coverage_1std prior_coverage_2std std_over_error_rms seconds error" \
  std_mr.jsonl $(cd "$OUT" && ls std_ct*.jsonl 2>/dev/null) std_heads.jsonl
tail -n 2 "$LOGS"/*.log; pack
