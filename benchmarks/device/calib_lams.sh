#!/bin/bash
# Issue 13 item 3: std calibration entries for every weight the self-tuned diffusion weight can
# pick (x1/16..x16 of the modality default), written into the shipped prior JSON (copied to
# $OUT); the fastMRI-format brain after the per-part noise fix; the GPU-marked tests.
# Device tool, carry [".whl"].
set -u
source benchmarks/device/common.sh
timeout 270 python3 benchmarks/std_calibration.py fit --size 64 --steps 50 --heads 2 --chains 4 --lam-factors 0.0625,0.25,4,16 --device cuda --write medrecon/priors/weights/default.json --out $OUT/fit.jsonl > $LOGS/fit.log 2>&1; echo "fit rc $? $(elapsed)"; cp medrecon/priors/weights/default.json $OUT/default.json
timeout 170 python3 benchmarks/kspace_fastmri.py --out /tmp/ksd --accelerations 8 4 --diffusion --device cuda --no-bart --no-grid --json $OUT/fastmri.jsonl > $LOGS/fastmri.log 2>&1; echo "fastmri rc $? $(elapsed)"
L=$((560 - $(elapsed))); timeout $L python3 -m pytest -q -m gpu -p no:cacheprovider tests > $LOGS/gpu_tests.log 2>&1; echo "gpu tests rc $? $(elapsed)"; tail -3 $LOGS/gpu_tests.log
grep fit-summary $OUT/fit.jsonl | python3 -c "
import json,sys
for l in sys.stdin: r=json.loads(l); print(r['modality'], r['lam'], round(r['alpha'],3), {k: round(v,3) for k,v in r['coverage_by_samples'].items()})"
python3 -c "
import json
for l in open('$OUT/fastmri.jsonl'): r=json.loads(l); print(r.get('case'), r.get('method'), r.get('psnr'), r.get('seconds'))"
pack
