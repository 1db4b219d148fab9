#!/usr/bin/env bash
# The queue benchmark again, on the fine-tune with stratified CV folds, its feature cache and
# held-out results read from the extracted rows (README, "Re-run on the stratified-fold
# fine-tune": the rule was fixed before any of these runs). Resumable: run it again after an
# interruption and it keeps every finished run (<run>/row.json) and the trained bases.
#
#   bash scripts/queue_benchmark_rerun.sh            # ~3 h on 2 CPU cores, two lanes at once
#
# 1. the three leave-one-corpus-out bases (v7 recipe without the corpus: scripts/loco_base.py),
#    one after another (they share the frozen-feature cache runs/features);
# 2. every setting: coverage (the default order, deterministic: one run), spread and random
#    (seeds 0-9), n = 50 / 100 (nEMO, EMOVO) and 25 / 50 (Korean, a 140-clip pool), in two
#    lanes of one torch thread each; results in runs/qb7-*/results-*.json and the logs beside.
set -euo pipefail
cd "$(dirname "$0")/.."
export EMODEMO_TORCH_THREADS=1
for corpus in nemo emotiontts-ko emovo; do
  if [ ! -f "runs/loco-$corpus/bundle/replay.safetensors" ]; then
    EMODEMO_TORCH_THREADS=2 python scripts/loco_base.py "$corpus"
  fi
done
SEEDS="0 1 2 3 4 5 6 7 8 9"
HOW="queue queue-spread random"
lane_a() {
  python scripts/queue_benchmark.py --base runs/loco-nemo/bundle --corpus nemo --pool-every 2 \
    --test-every 4 --work runs/qb7-nemo --how $HOW --seeds $SEEDS --resume
}
lane_b() {
  python scripts/queue_benchmark.py --base runs/loco-emotiontts-ko/bundle --corpus emotiontts-ko \
    --work runs/qb7-ko --n 25 50 --how $HOW --seeds $SEEDS --resume
  python scripts/queue_benchmark.py --base runs/loco-emovo/bundle --corpus emovo --test-every 2 \
    --work runs/qb7-emovo --how $HOW --seeds $SEEDS --resume
}
mkdir -p runs
lane_a > runs/qb7-lane-a.log 2>&1 &
a=$!
lane_b > runs/qb7-lane-b.log 2>&1
wait "$a"
echo "done: runs/qb7-nemo runs/qb7-ko runs/qb7-emovo"
