#!/bin/bash
# The default path on the real validation rows, groups side by side on the one GPU
# (real_quality.py; ROWS="case:setting,case:setting ..." -- each space-separated group is one
# process running its pairs in turn). RQ_SAMPLES: K (default 1, the CLI's default; the tables
# before 2026-12-07 used 4); RQ_TUNE_STEPS: steps of the weight's candidate runs (default 20,
# the CLI's; real_quality.py's own default is the run's steps); RQ_SET="key=value ...": diffusion settings. TESTS=1 also runs the
# GPU-marked tests beside them. Device tool, carry [".whl", ".devrun/real_cases"].
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
python3 - "$OUT" <<'PY'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]) / "real.jsonl"
for line in (p.read_text().splitlines() if p.exists() else []):
    r = json.loads(line)
    if "diffusion" in r:
        d, c = r["diffusion"], r["classical"]
        print(r["case"], r["setting"], "K", r.get("samples"), "default", round(d["psnr"], 2),
              "oracle tv", round(c["tv"]["psnr"], 2), "| default - oracle TV",
              round(d["psnr"] - c["tv"]["psnr"], 2), "|", d["guard_line"][:160])
    else:
        print({k: v for k, v in r.items() if k not in ("command", "date", "torch")})
PY
tail -n 3 $LOGS/*.log; pack
