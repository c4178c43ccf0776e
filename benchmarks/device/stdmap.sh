#!/bin/bash
# Issue 13 item 3: coverage of the default path's std map (the guard, K = 4, 50 steps) on the
# real validation files, MR and CT side by side on the one GPU (std_calibration.py check
# --guarded: the map as written, and the same map without this measurement's held-out
# factor). CASES_MR / CASES_CT: the files, comma-separated, groups separated by spaces run as
# processes side by side (none: skipped); HEADS=N adds N synthetic test heads per setting;
# DUMP=1 writes each blend's or fallback's map inputs under $OUT/dump (check --dump); rows and
# dumps come back in $OUT/std_rows.tar.
# Device tool, carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
SC="python3 benchmarks/std_calibration.py check --guarded --steps 50 --samples 4 --device cuda"
[ -n "${DUMP:-}" ] && SC="$SC --dump $OUT/dump"
for m in MR CT; do
  [ $m = MR ] && groups=${CASES_MR:-mr_dwi_b0,mr_brain_piesno,mr_abdomen} \
              || groups=${CASES_CT:-ct_spine,ct_abdomen,ct_head_ect}
  g=0
  for group in $groups; do
    [ "$group" = none ] && break
    g=$((g + 1))
    ( timeout $LIMIT $SC --real --cases-dir .devrun/real_cases --modalities $m --heads 0 \
        --cases "$group" --out "$OUT/std_${m,,}$g.jsonl" ) > "$LOGS/std_${m,,}$g.log" 2>&1 &
  done
done
if [ "${HEADS:-0}" -gt 0 ]; then  # HEADS_MODALITIES: default MR,CT
  ( timeout $LIMIT $SC --shape 96,112,112 --heads "$HEADS" --modalities ${HEADS_MODALITIES:-MR,CT} \
      --out "$OUT/std_heads.jsonl" ) > "$LOGS/std_heads.log" 2>&1 &
fi
wait
echo "all done at $(elapsed) s"
summary "case setting guard weight lam alpha scale prior_alpha coverage_2std coverage_1std prior_coverage_2std std_over_error_rms seconds error" \
  $(cd "$OUT" && ls std_mr*.jsonl std_ct*.jsonl 2>/dev/null) std_heads.jsonl
tail -n 2 "$LOGS"/*.log; pack
# the device hands back at most 8 files: the rows and the dumps travel as one tar
( cd "$OUT" && tar -cf std_rows.tar $(ls std_*.jsonl 2>/dev/null) $(ls -d dump 2>/dev/null) \
    && rm -rf std_*.jsonl dump )
