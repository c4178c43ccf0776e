#!/bin/bash
# One device call when only one fits the device time left: throughput split, v1 evaluation in
# the background, a short first chunk of v2, then the v2 evaluation (bf16, as it would ship).
set -u
source benchmarks/prior_training/device/common.sh
python3 benchmarks/prior_throughput.py --config configs/prior/default_v2.yaml --steps 30 \
    > /tmp/logs/throughput.json 2> /tmp/logs/throughput.err
echo "throughput done at $(elapsed) s"
( timeout 150 python3 benchmarks/real_quality.py --cases-dir real_cases --cases $CASES \
      --settings mr8,ct30 --samples 2 --device cuda --out $OUT/real_old.jsonl \
      > /tmp/logs/real_old.log 2>&1
  timeout 70 python3 benchmarks/sampling_quality.py --out $OUT/synth_old.jsonl --cases mr8,ct30 \
      --skip-classical > /tmp/logs/synth_old.log 2>&1 ) &
BG=$!
MIN=$(python3 -c "print(max(1.0, (285 - $(elapsed)) / 60))")
python3 benchmarks/prior_training/train_chunk.py --config configs/prior/default_v2.yaml \
    --run /tmp/prior_v2 --minutes "$MIN" --out /tmp/chunk > /tmp/logs/train.log 2>&1
echo "training done at $(elapsed) s"
mkdir -p "$OUT/prior" && cp /tmp/chunk/prior/* "$OUT/prior/" 2>/dev/null
wait_bg $BG 320
NEW=$OUT/prior/default.json
timeout 70 python3 benchmarks/sampling_quality.py --out $OUT/synth_new.jsonl --cases mr8,ct30 \
    --skip-classical --prior $NEW > /tmp/logs/synth_new.log 2>&1
echo "synthetic done at $(elapsed) s"
timeout 150 python3 benchmarks/real_quality.py --cases-dir real_cases --cases $CASES \
    --settings mr8,ct30 --samples 2 --device cuda --prior $NEW --out $OUT/real_new.jsonl \
    > /tmp/logs/real_new.log 2>&1
echo "real done at $(elapsed) s"
cp /tmp/chunk/*.csv /tmp/chunk/*.png /tmp/chunk/chunks.jsonl /tmp/logs/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C /tmp logs
tail -n 2 /tmp/logs/*.log /tmp/logs/throughput.json; cat /tmp/chunk/chunks.jsonl
echo "end at $(elapsed) s"
