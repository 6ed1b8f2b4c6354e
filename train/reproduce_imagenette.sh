#!/usr/bin/env bash
# The exact commands behind the photographs model set in assets/ (Imagenette at 128 px, this project's 2-core CPU
# budget). Each step resumes, or is skipped when its output exists, so the script can be re-run after an
# interruption or in a later sitting.
#   bash train/reproduce_imagenette.sh [DATA_ROOT] [RUNS]          (defaults: ../shared/data/imagenette, runs)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/imagenette}
R=${2:-runs}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two chains side by side on a 2-core machine
P=imagenette128

done_() { [ -f "$1/final/model.safetensors" ]; }

# Stage 1 for both tokenizers at the same budget (2,000 steps x 32 = 64,000 images), linear shortcut initialised
# to the patch-PCA codec of 2,000 training images; HieraTok's finest scale carries half the reconstruction loss
# (the calibration in assets/notes/imagenette128.md: with equal weights the finest scale drifted below the codec).
chain() {
  v=$1; shift
  done_ $R/$v-$P-s1 || $PY train/stage1.py --preset $P --variant $v --data $D/train --output-dir $R/$v-$P-s1 \
      --steps 2000 --batch-size 32 --ckpt-every 100 --sample-every 500 --log-every 25 "$@"
}
dit() {
  v=$1
  done_ $R/dit-$v-$P || $PY train/dit.py --preset $P --tokenizer $R/$v-$P-s1/final --data $D/train \
      --output-dir $R/dit-$v-$P --steps ${DIT_STEPS:-600} --batch-size 128 --ckpt-every 100 --sample-every 400 \
      --log-every 25
}
classifier() {
  # ResNet-9 on 64-px copies of the photographs (it resizes any input to 64 px): FD-cls and sample accuracy
  done_ $R/classifier-$P || $PY train/classifier.py --image-size 64 --data $D/train --output-dir $R/classifier-$P \
      --steps ${CLS_STEPS:-1000} --batch-size 64 --lr 2e-3 --ckpt-every 250 --log-every 50
}
dit_long() {
  # a second sitting: the DiT continued from its 600-step export on the same cached latents, planned for 3,500 more
  # steps (a fresh warm-up and cosine schedule) with exports at 1,000 / 2,000 / 3,000 for the learning curve. The
  # shipped one was stopped at 2,500 for lack of session time: interrupted after its step-2500 checkpoint and
  # resumed with DIT_LONG_STEPS=2500, which only exports (the schedule stays the 3,500-step one).
  v=$1
  done_ $R/dit-$v-$P-long || $PY train/dit.py --init-from $R/dit-$v-$P/final --tokenizer $R/$v-$P-s1/final \
      --latent-cache $R/dit-$v-$P/latents.safetensors --data $D/train --output-dir $R/dit-$v-$P-long \
      --steps ${DIT_LONG_STEPS:-3500} --batch-size 128 --ckpt-every 100 --sample-every 500 --log-every 25 \
      --export-at 1000 2000 3000
}
{ chain hieratok --set "scale_loss_weights=[0.25,0.25,0.25,0.25,1.0]"; dit hieratok; dit_long hieratok; } &
{ chain singlescale; classifier; dit singlescale; } &
wait
