#!/bin/bash
# One training chunk of configs/prior/default_v2.yaml, run from the repository root of the
# device's copy (wheels in .whl/). It resumes /tmp/prior_v2 exactly on a warm machine, else
# starts from `default` (or from INIT=path/to/prior.json, the weights a lost machine's last
# chunk brought back). MINUTES sets the training wall clock (default 8.5).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/logs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/prior_training/train_chunk.py --config configs/prior/default_v2.yaml \
    --run /tmp/prior_v2 --minutes "${MINUTES:-8.5}" --out "$OUT" ${INIT:+--init-from "$INIT"} \
    > /tmp/logs/train.log 2>&1
tail -n 4 /tmp/logs/train.log
cp /tmp/logs/train.log "$OUT/" 2>/dev/null
