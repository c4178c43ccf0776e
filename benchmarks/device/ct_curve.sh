#!/bin/bash
# CT TV's self-tuning risk against the true PSNR (benchmarks/autotune_ct_curve.py) on the rows
# of RESULTS_autotune.md's quarter-octave table, each case a process of its own on the one
# GPU, then the GPU-marked tests (GPU_TESTS=1; needs the carried pytest wheels). Device tool,
# carry [".whl", ".devrun/real_cases"]. ROWS: a subset ("syn" or "real"; default both).
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-540}
C="timeout $(( LIMIT - 60 )) python3 benchmarks/autotune_ct_curve.py --device cuda --risk-span 4"
n=0
run() { n=$((n + 1)); $C "$@" --out $OUT/curve_$n.jsonl > $LOGS/curve_$n.log 2>&1 & }
if [ "${ROWS:-all}" != real ]; then
  for head in 0 1; do
    run --size 128 --spacing 1.0 --views 30 --head $head
    run --size 128 --spacing 1.0 --views 60 --head $head
    run --size 256 --spacing 0.75 --views 30 --head $head
  done
fi
if [ "${ROWS:-all}" != syn ]; then
  for v in ct_spine ct_abdomen ct_head_ect; do
    run --volume .devrun/real_cases/$v.nii.gz --slices 1 --views 30
  done
  run --volume .devrun/real_cases/ct_spine.nii.gz --slices 1 --views 60
  run --volume .devrun/real_cases/ct_abdomen.nii.gz --slices 1 --views 60
  run --volume .devrun/real_cases/ct_head_ect.nii.gz --slices 1 --views 60
fi
wait
echo "curves done at $(elapsed) s"
cat $OUT/curve_*.jsonl > $OUT/curves.jsonl
python3 benchmarks/autotune_ct_curve.py --score $OUT/curves.jsonl
if [ -n "${GPU_TESTS:-}" ] && [ $(( LIMIT - $(elapsed) )) -gt 90 ]; then
  timeout $(( LIMIT - $(elapsed) - 20 )) python3 -m pytest -q -m gpu tests -p no:cacheprovider \
    > $LOGS/gpu_tests.log 2>&1
  tail -3 $LOGS/gpu_tests.log
fi
pack
