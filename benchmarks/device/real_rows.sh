#!/bin/bash
# The default path on the real validation rows, groups side by side on the one GPU
# (real_quality.py; ROWS="case:setting,case:setting ..." -- each space-separated group is one
# process running its pairs in turn). RQ_SAMPLES: K (default 1, the CLI's default; the tables
# before 2026-12-07 used 4); RQ_TUNE_STEPS: steps of the weight's candidate runs (default 20,
# the CLI's; real_quality.py's own default is the run's steps); RQ_SET="key=value ...":
# diffusion settings. TESTS=1 also runs the GPU-marked tests beside them, FASTMRI=1 the
# fastMRI-format brain's classical methods. Device tool, carry [".whl", ".devrun/real_cases"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-560}
RQ="python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases --device cuda --samples ${RQ_SAMPLES:-1} \
    --tune-steps ${RQ_TUNE_STEPS:-20}"
for kv in ${RQ_SET:-}; do RQ="$RQ --set $kv"; done
ROWS=${ROWS:-"mr_dwi_b0:mr4,mr_dwi_b0:mr8,mr_brain_piesno:mr4,mr_brain_piesno:mr8 \
mr_abdomen:mr4 mr_abdomen:mr8 ct_spine:ct30,ct_spine:ct60 ct_abdomen:ct30,ct_abdomen:ct60 \
ct_head_ect:ct30,ct_head_ect:ct60"}
g=0
for group in $ROWS; do
  g=$((g + 1))
  ( for pair in ${group//,/ }; do
      left=$(( LIMIT - $(elapsed) - 10 )); [ $left -lt 30 ] && break
      timeout $left $RQ --out $OUT/real.jsonl --cases ${pair%%:*} --settings ${pair##*:}
      echo "$pair done at $(elapsed) s"
    done ) > $LOGS/real_$g.log 2>&1 &
done
[ -n "${TESTS:-}" ] && ( timeout $LIMIT python3 -m pytest -q -m gpu tests -p no:cacheprovider ) \
    > $LOGS/gpu_tests.log 2>&1 &
[ -n "${FASTMRI:-}" ] && ( timeout $LIMIT python3 benchmarks/kspace_fastmri.py --out /tmp/ks \
    --accelerations 4 8 --no-bart --no-grid --device cuda \
    --methods zero-filled cg-sense l1-wavelet tv --json $OUT/fastmri.jsonl ) > $LOGS/fastmri.log 2>&1 &
wait
echo "all done at $(elapsed) s"
real_rows real.jsonl
tail -n 3 $LOGS/*.log; pack
