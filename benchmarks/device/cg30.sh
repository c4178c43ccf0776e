#!/bin/bash
# 30 CG iterations per MR data-consistency step (RESULTS_autotune.md, "30 CG iterations: the
# fixed weight"): fixed-weight sweeps on validation heads, the default path on a test head
# with 10 and 30, the fastMRI-format brain with both, the std maps' coverage with 30; every
# process side by side on the one GPU. Device tool, carry [".whl", ".devrun/real_cases"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
SWEEP_LAMS=${SWEEP_LAMS:-0.1,0.2,0.4,0.8,1.6}
CG="python3 benchmarks/cg_iters.py --shape 96,112,112 --steps 50 --device cuda"
for s in mr4 mr8 mr12; do
  ( timeout $LIMIT $CG sweep --heads ${HEADS:-1} --settings $s --cg 30 --lams $SWEEP_LAMS --samples 2 \
      --out $OUT/sweep.jsonl; timeout $(( LIMIT - $(elapsed) )) $CG sweep --heads ${HEADS:-1} \
      --settings $s --cg 10 --lams 0.1 --samples 2 --out $OUT/sweep.jsonl ) > $LOGS/sweep_$s.log 2>&1 &
done
for c in 10 30; do
  ( timeout $LIMIT $CG default --heads 1 --settings mr8,mr4,mr12 --cg $c --samples 4 \
      --out $OUT/default.jsonl ) > $LOGS/default_$c.log 2>&1 &
  SET=""; [ $c = 30 ] && SET="--set cg_iters=30"
  ( timeout $LIMIT python3 benchmarks/kspace_fastmri.py --out /tmp/ks$c --accelerations 4 8 \
      --diffusion --device cuda --no-bart --no-grid $SET --json $OUT/fm$c.json ) > $LOGS/fm$c.log 2>&1 &
done
SC="python3 benchmarks/std_calibration.py check --guarded --steps 50 --samples 4 --device cuda --set cg_iters=30"
( timeout $LIMIT $SC --real --cases-dir .devrun/real_cases --modalities MR --heads 0 \
    --cases mr_dwi_b0,mr_brain_piesno --out $OUT/std.jsonl ) > $LOGS/std_real.log 2>&1 &
( timeout $LIMIT $SC --shape 96,112,112 --heads 1 --modalities MR --out $OUT/std.jsonl ) \
    > $LOGS/std_head.log 2>&1 &
wait
echo "all done at $(elapsed) s"
summary "action seed setting cg_iters fixed_lam psnr lam seconds guard_line" sweep.jsonl default.jsonl
summary "case setting guard weight lam alpha scale coverage_2std coverage_1std std_over_error_rms seconds error" std.jsonl
for c in 10 30; do echo "## fm$c"; cat $OUT/fm$c.json 2>/dev/null | head -c 3000; echo; done
tail -n 3 "$LOGS"/*.log; pack
