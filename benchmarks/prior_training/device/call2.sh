#!/bin/bash
# Device call 2: the v2 prior after chunk 1 (bf16, as it would ship) against v1 (real scans,
# synthetic heads, held-out rendered patches), while training continues in the background.
set -u
source benchmarks/prior_training/device/common.sh
rm -rf /tmp/logs/* && nvidia-smi --query-gpu=name --format=csv > /tmp/logs/gpu.txt
NEW=/tmp/eval_prior/default.json
python3 -c "
import sys; sys.path.insert(0, 'benchmarks/prior_training')
from pathlib import Path; from train_chunk import export_compact
export_compact(Path('/tmp/prior_v2/prior/default.json'), Path('/tmp/eval_prior'))" || exit 1
( python3 benchmarks/prior_training/train_chunk.py --config configs/prior/default_v2.yaml \
      --run /tmp/prior_v2 --minutes 6.0 --out /tmp/chunk2 > /tmp/logs/train2.log 2>&1 ) &
TR=$!
timeout 120 python3 benchmarks/sampling_quality.py --out $OUT/synth_new.jsonl --cases mr8,ct30 \
    --skip-classical --prior $NEW > /tmp/logs/synth_new.log 2>&1
echo "synthetic done at $(elapsed) s"
timeout 230 python3 benchmarks/real_quality.py --cases-dir real_cases --cases $CASES --settings mr8,ct30 --samples 2 \
    --device cuda --prior $NEW --out $OUT/real_new.jsonl > /tmp/logs/real_new.log 2>&1
echo "real done at $(elapsed) s"
timeout 70 python3 benchmarks/prior_rendered_quality.py --prior default --prior $NEW --patches 64 \
    --device cuda --out $OUT/rendered_quality.json > /tmp/logs/rendered.log 2>&1
echo "rendered done at $(elapsed) s"
wait_bg $TR 420
mkdir -p "$OUT/prior" && cp /tmp/chunk2/prior/* "$OUT/prior/" 2>/dev/null
cp /tmp/chunk2/*.csv /tmp/chunk2/*.png /tmp/chunk2/chunks.jsonl /tmp/logs/ 2>/dev/null
tar czf "$OUT/call2_logs.tgz" -C /tmp logs
tail -n 3 /tmp/logs/*.log; cat /tmp/chunk2/chunks.jsonl 2>/dev/null
echo "end at $(elapsed) s"
