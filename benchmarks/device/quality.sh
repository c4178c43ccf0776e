#!/bin/bash
# Issues 13 and 14: quality runs that share the one GPU (none of them is timed): the GPU tests,
# the tiling / precision sweep on the synthetic test head at 50 steps (sampling_quality.py), the
# real validation files on the default path (real_quality.py, K = 4, the guard), and the lesion
# check (lesion.py) at 50 steps, the std coverage check at 50 steps (std_calibration.py, MR
# with today's cg_iters_high, synthetic heads and the real files). Carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
timeout 120 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$LOGS/gpu_tests.log" 2>&1 &
SQ="python3 benchmarks/sampling_quality.py --cases mr8,ct30 --skip-classical --samples 4 --configs steps=50"
( for v in "shift auto" "fit auto" "fit bf16-full"; do set -- $v
  timeout $(( LIMIT / 3 )) $SQ --tiling $1 --precision $2 --out "$OUT/tiling.jsonl"; done \
  > "$LOGS/tiling.log" 2>&1 ) &
( timeout $LIMIT python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases \
  --out "$OUT/real.jsonl" --device cuda --samples 4 \
  --cases mr_brain_piesno,ct_abdomen,mr_dwi_b0,mr_abdomen,ct_head_ect,ct_spine \
  > "$LOGS/real.log" 2>&1 ) &
( timeout $LIMIT python3 benchmarks/lesion.py --cases-dir .devrun/real_cases --out "$OUT/lesion.jsonl" \
  --cases synth_mr,synth_ct,mr_brain_piesno --settings mr8,mr12,ct30 --radii 2,3,4,6 \
  --contrasts 0.2,0.1,0.5 --steps 50 --samples 4 --device cuda > "$LOGS/lesion.log" 2>&1 ) &
( SC="python3 benchmarks/std_calibration.py check --steps 50 --samples 4 --device cuda"
  timeout $(( LIMIT / 2 )) $SC --size 64 --heads 1 --settings mr4,mr8,ct30 --out "$OUT/std.jsonl"
  timeout $(( LIMIT / 2 )) $SC --real --cases-dir .devrun/real_cases --out "$OUT/std.jsonl"
) > "$LOGS/std.log" 2>&1 &
wait
echo "all done at $(elapsed) s"
tail -n 3 "$LOGS"/*.log; pack
