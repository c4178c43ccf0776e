# Sourced by the device scripts, from the repository root on the GPU machine (device tool,
# carry [".whl", ".devrun"]): installs the carried wheels, records the card, keeps logs.
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
# once per machine: a command that sources this file first, then starts scripts side by side
# (each with its own OUT and LOGS), installs once for all of them
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; } || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOGS=${LOGS:-/tmp/logs}; mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOGS/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" >> "$LOGS/gpu.txt"
pack() { tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . ; }
# summary "KEY ..." FILE...: each JSON line of the files under $OUT, the named keys only
# (floats to 3 places), under a "## FILE" heading.
summary() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys, pathlib
out, keep = pathlib.Path(sys.argv[1]), sys.argv[2].split()
for name in sys.argv[3:]:
    p = out / name
    print("##", name)
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep})
PY
}
# real_rows FILE...: real_quality.py's rows under $OUT, one line each: the default against
# oracle TV and the guard's line (other rows, e.g. end_to_end_speed.py's, as they are)
real_rows() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys, pathlib
for name in sys.argv[2:]:
    p = pathlib.Path(sys.argv[1]) / name
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        if "diffusion" in r:
            d, c = r["diffusion"], r["classical"]
            print(r["case"], r["setting"], "K", d.get("samples"), "diffusion", round(d["psnr"], 2),
                  "oracle tv", round(c["tv"]["psnr"], 2), "| default - oracle TV",
                  round(d["psnr"] - c["tv"]["psnr"], 2), "|", d["guard_line"])
        else:
            print({k: v for k, v in r.items() if k not in ("command", "date", "torch")})
PY
}
