#!/usr/bin/env bash
# The photographs model set on one GPU within a wall-clock budget: HieraTok and the single-scale baseline (stage 1,
# side by side on the one GPU), then a DiT on each. The multi-scale member trains the project's recipe (MS_VARIANT,
# default stopgrad-shared-context, stage 1's default; `hieratok` for the paper's method) and is named hieratok-* like
# the shipped one. With TOKENIZERS="MULTISCALE_DIR SINGLESCALE_DIR" (e.g. the shipped assets/hieratok-imagenette128
# and assets/singlescale-imagenette128) stage 1 is skipped and the whole budget goes to the two DiTs, on those
# tokenizers' latents (the DiTs the app serves must fit the latents it ships). An 80-step probe of each pair measures
# its speed on this machine and the step counts follow from the budget, so that the cosine schedules end where the
# time does; --time-limit stops a run that would overrun anyway (checkpointed, resumable). Both members of a pair get
# the same steps and batch (an equal budget: the slower one's speed sets it). The same recipe as
# train/reproduce_imagenette.sh (the CPU one) otherwise: the imagenette128 preset (with MS_VARIANT=hieratok, the
# finest scale weighted 1 against 0.25 for the others). The images are decoded once into memory (--cache-images): on the first run, reading
# files from 6 loader processes per run held each run to 3,300-4,000 images/s.
#   bash train/reproduce_imagenette_gpu.sh TRAIN_DATA RUNS [BUDGET_S] [VAL_DATA]
# BUDGET_S (default 420) is the training time of both phases together (STAGE1_SHARE percent for stage 1, 0 with
# TOKENIZERS); startup, probes and exports come on top, about 100 s. With VAL_DATA, `train/quick_eval.py` reads the
# stage-1 learning curve (exports at 1/4, 1/2 and the end) into RUNS/stage1-curve.txt. With PACK_TO=DIR, each run's
# folder (weights as float16, no checkpoints or caches) goes into DIR/<run>.tar, for a transfer that limits file
# sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
D=$1
R=$2
B=${3:-420}
VAL=${4:-}
PY=${PYTHON:-python}
P=imagenette128
S1_BATCH=${S1_BATCH:-256}
DIT_BATCH=${DIT_BATCH:-256}
PROBE=${PROBE_STEPS:-80}
W=${NUM_WORKERS:-6}
SHARE=${STAGE1_SHARE:-60}
MS_VARIANT=${MS_VARIANT:-stopgrad-shared-context}
read -r -a TOKS <<< "${TOKENIZERS:-}"
if [ ${#TOKS[@]} -gt 0 ]; then
  [ ${#TOKS[@]} -eq 2 ] || { echo "TOKENIZERS: two folders, the multi-scale one and the single-scale one" >&2; exit 2; }
  for t in "${TOKS[@]}"; do
    [ -f "$t/config.json" ] || { echo "TOKENIZERS: $t is not a tokenizer folder" >&2; exit 2; }
  done
  SHARE=0
fi
mkdir -p "$R"
log() { echo "[$(date +%T)] $*" | tee -a "$R/gpu_recipe.log"; }
ht_set=(--set "scale_loss_weights=[0.25,0.25,0.25,0.25,1.0]")

# images per second of a probe run: the mean of its metrics.csv rows from step 40 on (before: the start-up, and
# batches the loader's workers had prepared ahead, which overstated the speed 1.9x on the first try)
rate() {
  $PY - "$1/metrics.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rows = [r for r in rows if int(r["step"]) > 40] or rows[1:]
print(sum(float(r["images_per_s"]) for r in rows) / len(rows))
EOF
}
# steps that fit SECONDS at the slower of two rates (images/s) and BATCH, rounded down to a multiple of 50
steps_for() {
  $PY -c "import sys; s, b, r1, r2 = map(float, sys.argv[1:]); print(max(50, int(s * min(r1, r2) / b) // 50 * 50))" "$@"
}
stage1() {  # member (hieratok / singlescale) output steps extra-args...
  local v=$1 out=$2 steps=$3; shift 3
  local extra=()
  [ "$v" = hieratok ] && v=$MS_VARIANT
  [ "$v" = hieratok ] && extra=("${ht_set[@]}")  # the paper's method: the shipped paper-recipe scale weights
  $PY train/stage1.py --preset $P --variant "$v" --data "$D" --output-dir "$out" --steps "$steps" \
      --batch-size "$S1_BATCH" --num-workers "$W" --cache-images --sample-every 0 --ckpt-every 1000 --log-every 10 \
      "${extra[@]}" "$@"
}
tokenizer() {  # member -> the tokenizer folder its DiT trains on
  if [ ${#TOKS[@]} -gt 0 ]; then
    if [ "$1" = hieratok ]; then echo "${TOKS[0]}"; else echo "${TOKS[1]}"; fi
  else
    echo "$R/$1-$P-s1/final"
  fi
}
dit() {  # member output steps extra-args...
  local v=$1 out=$2 steps=$3; shift 3
  $PY train/dit.py --preset $P --tokenizer "$(tokenizer "$v")" --data "$D" --output-dir "$out" --steps "$steps" \
      --batch-size "$DIT_BATCH" --latent-cache "$R/dit-$v-$P/latents.safetensors" --sample-every 0 \
      --num-workers "$W" \
      --ckpt-every 1000 --log-every 10 "$@"
}

t1=$(( B * SHARE / 100 ))
t2=$(( B - t1 ))
log "budget ${B}s: stage 1 ${t1}s, DiT ${t2}s; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo no GPU)"

# ---- stage 1 ------------------------------------------------------------------------------------------------
# run a pair side by side and wait for both (a failed member stops the recipe)
pair() {
  local pids=() v
  for v in hieratok singlescale; do "$@" "$v" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
}
if [ ${#TOKS[@]} -gt 0 ]; then
  log "stage 1 skipped: the DiTs train on ${TOKS[*]}"
else
  probe1() { stage1 "$1" "$R/probe-$1" "$PROBE" > "$R/probe-$1.log" 2>&1; }
  pair probe1
  r_ht=$(rate "$R/probe-hieratok"); r_ss=$(rate "$R/probe-singlescale")
  n1=$(steps_for "$t1" "$S1_BATCH" "$r_ht" "$r_ss")
  log "stage-1 probe: hieratok ${r_ht} img/s, singlescale ${r_ss} img/s side by side -> $n1 steps of $S1_BATCH"
  train1() {
    mkdir -p "$R/$1-$P-s1"  # the patch-PCA codec the probe fitted (deterministic: the same fit)
    cp "$R/probe-$1/linear_codec.safetensors" "$R/$1-$P-s1/"
    stage1 "$1" "$R/$1-$P-s1" "$n1" --time-limit "$t1" --export-at $(( n1 / 4 )) $(( n1 / 2 )) \
        --sample-every 1000000000 > "$R/$1-$P-s1.log" 2>&1
  }
  pair train1
  log "stage 1 done: $(tail -c 300 "$R/hieratok-$P-s1/summary.json" | tr -d '\n ')"
  if [ -n "$VAL" ]; then  # the exports that exist (a --time-limit stop can come before them)
    shopt -s nullglob
    evals=("$R"/hieratok-$P-s1/exports/step-* "$R/hieratok-$P-s1" "$R"/singlescale-$P-s1/exports/step-* \
           "$R/singlescale-$P-s1")
    shopt -u nullglob
    $PY train/quick_eval.py --data "$VAL" --images 500 "${evals[@]}" > "$R/stage1-curve.txt" 2>&1 &
    curve=$!
  fi
fi

# ---- DiT ----------------------------------------------------------------------------------------------------
probe2() { dit "$1" "$R/probe-dit-$1" "$PROBE" > "$R/probe-dit-$1.log" 2>&1; }
pair probe2
r_ht=$(rate "$R/probe-dit-hieratok"); r_ss=$(rate "$R/probe-dit-singlescale")
n2=$(steps_for "$t2" "$DIT_BATCH" "$r_ht" "$r_ss")
log "DiT probe: ${r_ht} / ${r_ss} latents/s -> $n2 steps of $DIT_BATCH"
train2() { dit "$1" "$R/dit-$1-$P" "$n2" --time-limit "$t2" --sample-every 1000000000 > "$R/dit-$1-$P.log" 2>&1; }
pair train2
if [ -n "${curve:-}" ]; then
  wait "$curve" || log "quick_eval failed (see $R/stage1-curve.txt)"
  tee -a "$R/gpu_recipe.log" < "$R/stage1-curve.txt"
fi
if [ -n "${PACK_TO:-}" ]; then
  $PY - "$R" "$PACK_TO" <<'EOF'
import io, sys, tarfile
from pathlib import Path
from safetensors.torch import load_file, save
R, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
skip = {"checkpoints", "exports", "latents.safetensors"}
tars = {}  # a DiT run's tokenizer copy goes apart: with the DiT in one file, it would pass 16 MiB
runs = [d for d in R.iterdir() if d.is_dir() and not d.name.startswith("probe") and d.resolve() != out.resolve()]
for run in sorted(runs):
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(R)
        if f.is_dir() or skip & set(rel.parts):
            continue
        name = f"{run.name}-tokenizer" if rel.parts[1] == "tokenizer" else run.name
        tar = tars.get(name) or tars.setdefault(name, tarfile.open(out / f"{name}.tar", "w"))
        if f.name == "model.safetensors":  # float16 storage, as assets/ keeps it
            data = save({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()})
            info = tarfile.TarInfo(str(rel))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.add(str(f), str(rel))
for tar in tars.values():
    tar.close()
with tarfile.open(out / "logs.tar", "w") as tar:
    for f in sorted(R.glob("*.log")) + sorted(R.glob("*.txt")) + sorted(R.glob("probe-*/metrics.csv")):
        tar.add(str(f), str(f.relative_to(R)))
for f in sorted(out.iterdir()):
    print(f"{f}: {f.stat().st_size / 2**20:.1f} MiB")
EOF
fi
log "done"
