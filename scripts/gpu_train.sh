#!/usr/bin/env bash
# Train the embedded draft/target VARs on a lent GPU (one run; the VQ-VAE was trained on CPU).
# Usage: OUT=folder bash scripts/gpu_train.sh   (QUICK=1 shrinks everything for a CPU dry run)
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/gpu_train_out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
PY=${PY:-python3}
if [ "${QUICK:-0}" = 1 ]; then
  T_STEPS=4; D_STEPS=4; IMAGES=400; EVAL=200; BS=8; WORKERS=2; TL=1
else
  T_STEPS=${T_STEPS:-4000}; D_STEPS=${D_STEPS:-3000}; IMAGES=120000; EVAL=2000; BS=256; WORKERS=16; TL=${TL:-4}
fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -m sdvar_core.train var --vqvae assets/tiny/vqvae --out "$WORK/target" --depth 6 --width 192 --heads 3 \
  --steps $T_STEPS --batch-size $BS --lr 1e-3 --warmup 200 --images $IMAGES --eval-images $EVAL \
  --workers $WORKERS --ckpt-every 1000 --time-limit $TL --seed 1 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" || true
$PY -m sdvar_core.train var --vqvae assets/tiny/vqvae --out "$WORK/draft" --depth 2 --width 128 --heads 2 \
  --steps $D_STEPS --batch-size $BS --lr 2e-3 --warmup 200 --images $IMAGES --eval-images $EVAL \
  --workers $WORKERS --ckpt-every 1000 --time-limit $TL --seed 2 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" || true
cp "$WORK"/target.safetensors "$WORK"/target.json "$WORK"/draft.safetensors "$WORK"/draft.json "$OUT"/
ls -la "$OUT"
