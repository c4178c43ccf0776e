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
