#!/usr/bin/env bash
# The controlled experiment (train/experiment.py) on one GPU in one go: every arm at seeds 0, 1 and 2, then the
# generation half (a DiT on the hieratok and on the singlescale latent, seeds 0 and 1; DIT_ARMS adds others, e.g. the
# recipe's "hieratok singlescale stopgrad-shared-context"). Seed by seed, the arms of a
# seed side by side on the GPU, evaluation on the GPU: a time limit leaves whole seeds recorded, and every finished
# run is in RESULTS.json at once (the runs themselves stay in RUNS). TIER (default cpu) picks the models and the
# budget: the CPU tier's are the CPU grid's (the same images seen, batch and schedule).
#   bash train/experiment_gpu.sh TRAIN VAL RUNS RESULTS [PARALLEL]
# A remote GPU gets the data packed (train/pack_dataset.py; its transfer limit is 64 MiB for everything carried:
# train and all of val at quality 85, 39 + 15 MiB, leave room for the code and the classifier, 3 MB). WebP costs
# 35-37 dB against the loader's pixels, which moves a 27-dB PSNR by 0.1-0.2 dB: results on packed data are their
# own table (RESULTS apart from assets/eval/experiment), not more seeds of the CPU grid's. On a lent GPU, with the
# packs unpacked into a folder D and the classifier carried as .devdata/classifier:
#   PYTHON=python3 EXPERIMENT_ARGS="--classifier .devdata/classifier" \
#       bash train/experiment_gpu.sh D/train D/val RUNS $OUT/experiment-gpu 8
# Environment: SEEDS (default "0 1 2"), DIT_SEEDS ("0 1"; empty: no generation half), DIT_ARMS ("hieratok
# singlescale": the tokenizers given a DiT, each compared with singlescale's), ARMS (all eight), TIER,
# WORKERS (loader processes per run, 2), EXPERIMENT_ARGS (more driver options, e.g. a tiny --steps for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { echo "usage: $0 TRAIN VAL RUNS RESULTS [PARALLEL]" >&2; exit 2; }
TRAIN=$1 VAL=$2 RUNS=$3 RESULTS=$4 P=${5:-8}
PY=${PYTHON:-python}
W=${WORKERS:-2}
ARMS=${ARMS:-hieratok singlescale singlescale-flopmatched no-mss interp full-attn independent-attn finest-weighted}
# shellcheck disable=SC2206  # word splitting wanted: EXPERIMENT_ARGS is a list of options
common=(--data "$TRAIN" --val "$VAL" --output-dir "$RUNS" --results "$RESULTS" --tier "${TIER:-cpu}" --parallel "$P"
        --num-workers "$W" ${EXPERIMENT_ARGS:-})
for seed in ${SEEDS-0 1 2}; do
  # shellcheck disable=SC2086
  $PY train/experiment.py "${common[@]}" --arms $ARMS --seeds "$seed" \
      --stage1-args --cache-images --num-workers "$W"
done
if [ -n "${DIT_SEEDS-0 1}" ]; then
  DA=${DIT_ARMS:-hieratok singlescale}
  # shellcheck disable=SC2086
  $PY train/experiment.py "${common[@]}" --arms $DA --seeds ${DIT_SEEDS-0 1} \
      --dit-seeds ${DIT_SEEDS-0 1} --dit-arms $DA --dit-args="--num-workers $W" \
      --stage1-args --cache-images --num-workers "$W"
fi
