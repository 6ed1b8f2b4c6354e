#!/usr/bin/env bash
# The exact commands behind the weights in assets/ (CIFAR-10, this project's CPU budget). Each step resumes or
# skips when its output exists, so the script can be re-run after an interruption.
#   bash train/reproduce_cifar10.sh [DATA_ROOT] [RUNS]          (defaults: ../shared/data/cifar10, runs)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10}
R=${2:-runs}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two runs side by side on a 2-core machine

done_() { [ -f "$1/final/model.safetensors" ]; }

# One chain per tokenizer (stage 1 -> stage 2 -> DiT), the two chains side by side, the same budget each; the
# single-scale chain also trains the classifier between its stage 2 and its DiT.
chain() {
  v=$1
  # 1. stage 1, reconstruction: 1000 steps x 64 images
  done_ $R/$v-s1 || $PY train/stage1.py --variant $v --data $D/train --output-dir $R/$v-s1 \
      --steps 1000 --batch-size 64 --ckpt-every 100 --sample-every 250 --log-every 50
  # 2. stage 2, GAN fine-tuning of the decoder (encoder and downsampler frozen): 300 steps x 64
  done_ $R/$v-s2 || $PY train/stage2.py --init-from $R/$v-s1/final --data $D/train --output-dir $R/$v-s2 \
      --steps 300 --batch-size 64 --gan-start 100 --ckpt-every 100 --sample-every 150 --log-every 25
  # the classifier behind FD-cls and the class accuracy of samples (in the single-scale chain): 3000 steps x 128
  [ "$v" = singlescale ] && { done_ $R/classifier || $PY train/classifier.py --data $D/train \
      --output-dir $R/classifier --steps 3000 --batch-size 128 --ckpt-every 500 --log-every 100; }
  # 3. the DiT on the stage-2 tokenizer's latents: 700 steps x 128 (what the first session had time for) ...
  done_ $R/dit-$v || $PY train/dit.py --tokenizer $R/$v-s2/final --data $D/train --output-dir $R/dit-$v \
      --steps 700 --batch-size 128 --ckpt-every 100 --sample-every 350 --log-every 50
  # ... then 3000 steps more from its weights (a second session: fresh optimizer, 100 warm-up steps, same latents)
  done_ $R/dit-$v-long || $PY train/dit.py --tokenizer $R/$v-s2/final --data $D/train --output-dir $R/dit-$v-long \
      --latent-cache $R/dit-$v/latents.safetensors --init-from $R/dit-$v/final --steps 3000 --batch-size 128 \
      --warmup 100 --ckpt-every 250 --sample-every 1000 --log-every 50
}
chain hieratok &
chain singlescale &
wait

# 4. the shipped HieraTok: the project's recipe (docs/experiment.md) as phases on the single-scale tokenizer, whose
#    encoder -- and so latent -- it keeps bit for bit. (a) Its coarse scales' own parts (downsampler, per-scale heads)
#    start fresh and learn from the coarse losses alone, everything else frozen: 1,500 steps x 64 at lr 1e-3. The
#    finest tokens attend to the new coarse ones, which cost the finest scale 3.7 dB (32.43 -> 28.74 on 1,000 test
#    images) ... (b) so stage 2 as the chains ran it (the decoder re-adapts on the reconstruction terms for 100 steps,
#    then the GAN term) gives it back (32.41 dB on all 10,000, single-scale 32.29: assets/notes/cifar10.md). The
#    paper recipe's chain (hieratok-s1 -> hieratok-s2 and its DiT) ships as hieratok-paper-cifar10 and as the HieraTok
#    DiT with its own copy of that tokenizer (the app's Generate view); the shipped one started from
#    assets/singlescale-cifar10, the float16 copy of dit-singlescale/tokenizer.
export OMP_NUM_THREADS=2   # one run at a time now
done_ $R/hieratok-warm-coarse || $PY train/stage1.py --warm-start $R/dit-singlescale/tokenizer --train coarse \
    --data $D/train --output-dir $R/hieratok-warm-coarse --steps 1500 --batch-size 64 --lr 1e-3 --ckpt-every 100 \
    --sample-every 500 --log-every 50 --export-at 500 1000
done_ $R/hieratok-warm-s2 || $PY train/stage2.py --init-from $R/hieratok-warm-coarse/final --data $D/train \
    --output-dir $R/hieratok-warm-s2 --steps 300 --batch-size 64 --gan-start 100 --ckpt-every 100 --sample-every 150 \
    --log-every 25

# 5. what the app ships: fp16 copies (+ assets/expected.json for the asset test), the latent map, examples
$PY train/ship.py --runs $R --assets assets
$PY train/latent_map.py --data $D/test --num-images 3000 --tokenizer HieraTok=assets/hieratok-cifar10 \
    --tokenizer Single-scale=assets/singlescale-cifar10 --output assets/latent-map-cifar10
$PY train/make_examples.py --output assets/examples

# 6. evaluation on the full test split (10,000 images)
$PY train/evaluate.py --data $D/test --classifier assets/classifier-cifar10 \
    --tokenizer hieratok=assets/hieratok-cifar10 --tokenizer hieratok-paper=assets/hieratok-paper-cifar10 \
    --tokenizer singlescale=assets/singlescale-cifar10 --dit hieratok=assets/dit-hieratok-cifar10 \
    --dit singlescale=assets/dit-singlescale-cifar10 --num-samples 500 --sample-steps 15 --guidance 2.0 \
    --output assets/eval/cifar10
