#!/bin/bash
# Issue 14 item 1 (fewer network evaluations): can the auto weight be ranked on 20-step runs?
# On real MR validation files, each setting twice (weights ranked on 50-step runs, then on
# 20-step ones, `--tune-steps 20`): same chosen weight means the same result (the guard
# rescored at 50 steps); the diffusion seconds give the saving. Then the default path's end to
# end wall on the synthetic 256^3 CT and 128^3 MR with `--set tune_steps=20` (today's rows
# without it: RESULTS_sampling.md 3e), then REAL_EXTRA (e.g. the DWI pair) at the defaults.
# Device tool, carry [".whl", ".devrun"].
set -u
source benchmarks/device/common.sh
LIMIT=${LIMIT:-580}
left() { echo $(( LIMIT - $(elapsed) )); }
RQ="python3 benchmarks/real_quality.py --cases-dir .devrun/real_cases --device cuda --samples 4"
for pair in ${PAIRS:-mr_brain_piesno:mr8 mr_abdomen:mr8 mr_brain_piesno:mr4}; do
  case=${pair%%:*}; setting=${pair##*:}
  for t in 50 20; do
    [ "$(left)" -lt 60 ] && break
    timeout $(( $(left) - 20 )) $RQ --out $OUT/real.jsonl --cases $case --settings $setting \
      --tune-steps $t >> $LOGS/real.log 2>&1
    echo "$case $setting tune $t done at $(elapsed) s"
  done
done
if [ -n "${E2E_CASES:-}" ]; then
  E2E="python3 benchmarks/end_to_end_speed.py --out $OUT/e2e.jsonl --work /tmp/e2e"
  timeout 100 $E2E --cases $E2E_CASES --variants "" > "$LOGS/e2e.log" 2>&1  # files only
  timeout $(( $(left) - ${REAL_EXTRA_S:-0} )) $E2E --cases $E2E_CASES \
    --variants "${E2E_VARIANTS:-defaults=;defaults_t20=--set tune_steps=20}" >> "$LOGS/e2e.log" 2>&1
  echo "e2e done at $(elapsed) s"
fi
[ -n "${REAL_EXTRA:-}" ] && timeout $(( $(left) - 10 )) $RQ --out $OUT/real_extra.jsonl \
  --cases $REAL_EXTRA >> $LOGS/real.log 2>&1
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for name in ("real.jsonl", "e2e.jsonl", "real_extra.jsonl"):
    p = pathlib.Path(sys.argv[1]) / name
    print("##", name)
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        if "diffusion" in r:
            d, c = r["diffusion"], r["classical"]
            print(r["case"], r["setting"], "tune", d.get("tune_steps"), "lam", d["lam"],
                  [round(e, 4) for e in d["lam_heldout_errors"] or []], "psnr",
                  round(d["psnr"], 2), "s", d["seconds"], "tv", round(c["tv"]["psnr"], 2),
                  "best", r["best_classical"], round(c[r["best_classical"]]["psnr"], 2),
                  "|", d["guard_line"])
        else:
            print({k: v for k, v in r.items() if k not in ("command", "date", "torch")})
PY
pack
