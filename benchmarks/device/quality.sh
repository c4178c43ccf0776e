#!/bin/bash
# Issues 13 and 14: quality runs that share the one GPU (none of them is timed): the steps and
# schedule sweep on the synthetic test head (sampling_quality.py), the real validation files on
# the default path and plain at several step counts (real_quality.py, exported cases in
# .devrun/real_cases), and the std calibration fit at 20 and 50 steps (std_calibration.py).
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-540}
SQ="python3 benchmarks/sampling_quality.py --cases mr8,ct30 --skip-classical --samples 4"
( timeout $LIMIT $SQ --out "$OUT/steps.jsonl" --configs \
  "steps=10;steps=15;steps=20;steps=25;steps=50;steps=20,rho=3;steps=20,rho=5;steps=15,eta=0.5;steps=20,cg_iters=5" \
  > "$LOGS/steps.log" 2>&1 ) &
( for t in roll fit; do timeout $LIMIT $SQ --tiling $t --out "$OUT/steps.jsonl" --configs "steps=20;steps=50"; done \
  > "$LOGS/steps_roll.log" 2>&1 ) &
( timeout $LIMIT python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases \
  --out "$OUT/real.jsonl" --device cuda --samples 4 --plain --plain-steps 10,20,50 \
  --cases mr_brain_piesno,mr_dwi_b0,mr_abdomen,ct_abdomen,ct_head_ect,ct_spine \
  > "$LOGS/real.log" 2>&1 ) &
cp medrecon/priors/weights/default.json "$OUT/default.json"
( for n in 20 50; do timeout $(( LIMIT / 2 )) python3 benchmarks/std_calibration.py fit \
  --size 64 --steps $n --heads 4 --chains 8 --device cuda --write "$OUT/default.json" \
  --out "$OUT/calib.jsonl"; done > "$LOGS/calib.log" 2>&1 ) &
wait
echo "all done at $(elapsed) s"
tail -n 2 "$LOGS"/*.log; pack
