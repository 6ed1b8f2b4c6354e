#!/usr/bin/env bash
# The exact commands behind the photographs model set in assets/ (Imagenette at 128 px). Each step resumes, or is
# skipped when its output exists, so the script can be re-run after an interruption or in a later sitting.
#   bash train/reproduce_imagenette.sh [DATA_ROOT] [RUNS]          (defaults: ../shared/data/imagenette, runs)
#
# Stage 1 of the shipped tokenizers ran on one GPU (an H200, lent for one session), by the GPU recipe:
#   python train/pack_dataset.py --data $D/train --size 128 --output pack/train.tar   # 54 MiB, WebP q90
#   bash train/reproduce_imagenette_gpu.sh <unpacked train> $R 440 <500 unpacked val images>
# both tokenizers side by side, batch 256, a 5,800-step schedule that its time limit stopped at step 3,417 (264 s,
# 874,752 images). Its DiT phase did not run (the session's GPU time ran out); everything below ran on this
# project's 2-core CPU. Without a GPU run in RUNS, `chain` trains stage 1 here instead: the earlier CPU recipe
# (2,000 steps x 32 images, about 6 hours a tokenizer; a weaker tokenizer, see assets/notes/imagenette128.md).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/imagenette}
R=${2:-runs}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two chains side by side on a 2-core machine
P=imagenette128

done_() { [ -f "$1/final/model.safetensors" ]; }

# Stage 1 on the CPU (skipped when the GPU recipe's run is there): linear shortcut initialised to the patch-PCA
# codec of 2,000 training images; HieraTok's finest scale weighted 1 against 0.25 for each coarser one.
chain() {
  v=$1; shift
  done_ $R/$v-$P-s1 || $PY train/stage1.py --preset $P --variant $v --data $D/train --output-dir $R/$v-$P-s1 \
      --steps 2000 --batch-size 32 --ckpt-every 100 --sample-every 500 --log-every 25 "$@"
}
# Decoder-only anneal (no discriminator; encoder and downsampler frozen, so the latents -- and the DiT trained on
# them -- stay as they were): the GPU run stopped mid-schedule, this takes its decoder's learning rate to zero.
anneal() {
  v=$1
  done_ $R/$v-$P-s2rec || $PY train/stage2.py --init-from $R/$v-$P-s1/final --gan-weight 0 --data $D/train \
      --output-dir $R/$v-$P-s2rec --steps 400 --batch-size 32 --lr 1e-4 --ema-decay 0.99 --ckpt-every 100 \
      --sample-every 400 --log-every 25
}
classifier() {
  # ResNet-9 on the full 128 px (a stride-2 stem: a 64-px cost): FD-cls and sample accuracy. The earlier shipped one
  # saw 64-px copies (--image-size 64 --steps 1000): 80.9% val accuracy against this one's 88.1%.
  done_ $R/classifier-$P || $PY train/classifier.py --image-size 128 --set stem_stride=2 --data $D/train \
      --output-dir $R/classifier-$P --steps ${CLS_STEPS:-2000} --batch-size 64 --lr 2e-3 --ema-decay 0.999 \
      --ckpt-every 100 --log-every 50
}
# The shipped HieraTok tokenizer: the project's recipe (stopgrad-shared-context, docs/experiment.md) warm-started
# from the single-scale tokenizer (its encoder, decoder and finest head; the coarse scales' parts fresh), 2,000 steps x
# 32 images on the CPU. The shipped one started from assets/singlescale-$P, the float16 copy of that run's weights.
# The paper recipe's tokenizer (hieratok-$P-s2rec) ships as assets/hieratok-paper-$P, for the evaluation only.
recipe() {
  done_ $R/hieratok-$P-context || $PY train/stage1.py --preset $P --variant stopgrad-shared-context \
      --warm-start $R/singlescale-$P-s2rec/final --data $D/train --output-dir $R/hieratok-$P-context --steps 2000 \
      --batch-size 32 --lr 2e-4 --ema-decay 0.999 --ckpt-every 150 --export-at 500 1000 1500
}
# Then its coarse scales' own parts (downsampler, per-scale heads; stage 1 --train coarse), 3,000 steps x 32 at lr 1e-3
# on the coarse losses, the encoder and the shared decoder frozen: the latent, and so the DiT trained on it, stays
# as it was. The shipped one started from assets/hieratok-$P, the float16 copy its DiT trained on.
coarse() {
  done_ $R/hieratok-$P-context-coarse || $PY train/stage1.py --init-from $R/hieratok-$P-context/final --train coarse \
      --data $D/train --output-dir $R/hieratok-$P-context-coarse --steps 3000 --batch-size 32 --lr 1e-3 \
      --ckpt-every 100 --sample-every 1000 --log-every 50
}
# The shipped DiTs (6 x 256): one 22,000-step run per tokenizer, side by side (about 1.8 s a step each here); what
# ships is the export train/ship.py names (exports/step-N), taken while the runs go on. The shipped runs were given the
# float16 copies in assets/ (--tokenizer assets/<variant>-$P, the same weights rounded).
dit22k() {  # variant tokenizer
  done_ $R/dit-$1-22k || $PY train/dit.py --preset $P --tokenizer $2 --data $D/train --output-dir $R/dit-$1-22k \
      --steps 22000 --batch-size 128 --lr 3e-4 --ema-decay 0.9995 --ckpt-every 200 --sample-every 2000 \
      --export-at 2750 5500 11000 16500
}
{ chain hieratok --set "scale_loss_weights=[0.25,0.25,0.25,0.25,1.0]"; anneal hieratok; } &
{ chain singlescale; anneal singlescale; classifier; recipe; coarse; } &
wait
{ dit22k hieratok $R/hieratok-$P-context/final; } &
{ dit22k singlescale $R/singlescale-$P-s2rec/final; } &
wait

# What the app ships: fp16 copies (+ assets/expected.json), the latent map (1,200 val images), the evaluation of the
# tokenizers on all 3,925 val images, each finest scale paired per image against single-scale's and the linear codec's
$PY train/ship.py --family $P --runs $R --assets assets
$PY train/latent_map.py --data $D/val --num-images 1200 --tokenizer HieraTok=assets/hieratok-$P \
    --tokenizer Single-scale=assets/singlescale-$P --output assets/latent-map-$P
$PY train/evaluate.py --data $D/val --classifier assets/classifier-$P --tokenizer hieratok=assets/hieratok-$P \
    --tokenizer hieratok-paper=assets/hieratok-paper-$P --tokenizer singlescale=assets/singlescale-$P \
    --fit-data $D/train --output assets/eval/$P --update
# the DiTs: a guidance sweep with three seeds (its lowest mean gFD-cls at 10 Heun steps is the app's default guidance),
# then the report's entry of each DiT at that guidance
$PY train/generation.py --data $D/val --classifier assets/classifier-$P \
    --dit hieratok=assets/dit-hieratok-$P --tokenizer hieratok=assets/hieratok-$P \
    --dit singlescale=assets/dit-singlescale-$P --tokenizer singlescale=assets/singlescale-$P \
    --guidance 3 4 6 --sample-steps 10 --default-steps 10 --seeds 0 1 2 --num-samples 500 \
    --output assets/eval/generation-$P
for v in hieratok singlescale; do
  G=$($PY -c "import json; print(json.load(open('assets/eval/generation-$P.json'))['summary']['default_guidance']['$v'])")
  $PY train/evaluate.py --data $D/val --classifier assets/classifier-$P --dit $v=assets/dit-$v-$P \
      --dit-tokenizer $v=assets/$v-$P --num-samples 500 --sample-steps 10 --guidance $G --output assets/eval/$P --update
done
