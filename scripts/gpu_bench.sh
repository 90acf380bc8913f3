#!/usr/bin/env bash
# One-shot GPU benchmark of SDVAR Explorer, for a lent H100/H200 (run from the repo root).
#
#   bash scripts/gpu_bench.sh                      # on the GPU machine: ≤ ~200 s, results under $OUT
#   SDVAR_BENCH_SMALL=1 bash scripts/gpu_bench.sh  # shrunk sizes: a quick try anywhere (automatic without CUDA)
#
# Runs `python -m sdvar_core.bench gpu` (see its --help), in three sections under one deadline:
#   (a) random official VAR-d16 and d30, batch 1 and 8, bf16: per-image transformer and decode times
#       against the weight-read floor (params × bytes × 10 scales ÷ measured copy bandwidth) and the
#       FLOP floor (÷ measured bf16 matmul rate);
#   (b) random official d16 → d30, batch 1 and 16: the transformer calls of every mode's call pattern,
#       run by the engine; speculative rows with forced per-scale acceptance (generate's accept_override),
#       fixed γ 1–4 and gamma="auto" (the planner, calibrated on the GPU first, knowing the acceptance);
#   (c) the embedded pair's modes table (skipped with a note when assets/tiny is absent).
# Everything is printed and written to $OUT/gpu_bench.md (markdown) and $OUT/gpu_bench.log.
# It only reads the GPU's state (nvidia-smi query); it changes no setting.
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
LOG="$OUT/gpu_bench.log"
MD="$OUT/gpu_bench.md"
DEADLINE=${SDVAR_BENCH_DEADLINE:-150}   # seconds for the benchmark itself; startup and CUDA init come on top

SMALL=${SDVAR_BENCH_SMALL:-0}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA device: running the shrunk sizes on the CPU" | tee -a "$LOG"
    SMALL=1
fi
ARGS=(--deadline-s "$DEADLINE" --out "$MD")
if [ "$SMALL" = 1 ]; then
    ARGS+=(--small --device cpu --threads 1)
fi

{
    echo "# GPU benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo '```'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo '```'
    echo
} > "$MD"
cat "$MD" | tee -a "$LOG"

start=$(date +%s)
PYTHONPATH=. timeout $((DEADLINE + 45)) "$PY" -u -m sdvar_core.bench gpu "${ARGS[@]}" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "gpu_bench.sh: exit $rc after $(( $(date +%s) - start )) s; results in $MD" | tee -a "$LOG"
exit "$rc"
