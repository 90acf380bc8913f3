#!/usr/bin/env bash
# Train the embedded pair on a lent GPU — VQ-VAE, target VAR, draft VAR — measure it, write the card,
# then run the GPU benchmark. The classifier (assets/classifier) was trained on the CPU.
# Usage: OUT=folder bash scripts/gpu_train.sh   (QUICK=1 shrinks everything for a CPU dry run)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TQDM_MININTERVAL=20
OUT=${OUT:-/tmp/gpu_train_out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
PY=${PY:-python3}
if [ "${QUICK:-0}" = 1 ]; then
  VQ_STEPS=4; POOL=200; T_STEPS=4; D_STEPS=4; IMAGES=400; EVAL=200; BS=8; WORKERS=2
  TL_V=1; TL_T=1; TL_D=1; PER_CLASS=1; REAL=50; CB=10
else
  VQ_STEPS=6000; POOL=60000; T_STEPS=4000; D_STEPS=3000; IMAGES=120000; EVAL=2000; BS=256; WORKERS=16
  TL_V=1.75; TL_T=2.5; TL_D=1.0; PER_CLASS=100; REAL=1000; CB=250
fi
quiet() { tr '\r' '\n' | grep -vE "it/s|s/it"; }
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -m sdvar_core.train vqvae --out "$WORK/vqvae" --steps $VQ_STEPS --batch-size 64 --lr 2e-3 --pool $POOL \
  --workers $WORKERS --ckpt-every 2000 --time-limit $TL_V --seed 0 2>&1 | quiet
train() {  # name depth width heads steps lr time-limit seed
  $PY -m sdvar_core.train var --vqvae "$WORK/vqvae" --out "$WORK/$1" --depth $2 --width $3 --heads $4 --steps $5 \
    --batch-size $BS --lr $6 --warmup 200 --images $IMAGES --eval-images $EVAL --workers $WORKERS \
    --data-cache "$WORK/tokens.pt" --ckpt-every 1000 --time-limit $7 --seed $8 2>&1 | quiet
}
train target 6 192 3 $T_STEPS 1e-3 $TL_T 1
train draft 2 128 2 $D_STEPS 2e-3 $TL_D 2
mkdir -p "$WORK/tiny" assets/tiny
cp "$WORK"/{vqvae,target,draft}.{safetensors,json} "$WORK/tiny/"
cp "$WORK"/{vqvae,target,draft}.{safetensors,json} "$OUT/"
$PY scripts/make_card.py --folder "$WORK/tiny" --per-class $PER_CLASS --real $REAL --batch $CB --grid "$OUT/grid.png"
cp "$WORK/tiny/card.json" "$OUT/"
cp "$WORK/tiny"/* assets/tiny/
[ "${SKIP_BENCH:-0}" = 1 ] || OUT="$OUT" bash scripts/gpu_bench.sh
ls -la "$OUT"
