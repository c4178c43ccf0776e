#!/bin/bash
# A training chunk (chunk.sh, MINUTES) then the evaluation of its bf16 export as it would ship,
# on the settings of RESULTS_v2.md (real validation files at R = 8 and 30 views, K = 2; the
# synthetic head at R = 8 and 30 views, K = 4), each evaluation cut by its own time limit.
# Needs the exported real cases in .devrun/real_cases (real_quality.py --export).
set -u
bash benchmarks/prior_training/device/chunk.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
NEW=$OUT/prior/default.json
CASES=mr_brain_piesno,mr_dwi_b0,mr_abdomen,ct_abdomen
timeout "${REAL_S:-150}" python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases \
    --cases $CASES --settings mr8,ct30 --samples 2 --device cuda --prior "$NEW" \
    --out "$OUT/real_new.jsonl" > /tmp/logs/real_new.log 2>&1
timeout "${SYNTH_S:-70}" python3 benchmarks/sampling_quality.py --out "$OUT/synth_new.jsonl" \
    --cases mr8,ct30 --skip-classical --prior "$NEW" > /tmp/logs/synth_new.log 2>&1
tail -n 3 /tmp/logs/real_new.log /tmp/logs/synth_new.log
cp /tmp/logs/*.log "$OUT/" 2>/dev/null
