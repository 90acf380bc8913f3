#!/usr/bin/env bash
# Retrain the whole embedded pair (classifier, VQ-VAE, target, draft), install it in assets/ and write its card.
# Resumable: run it again after a stop and it continues from the last checkpoint. Extra flags go to
# `python -m sdvar_core.train all` (e.g. --device cuda, --threads 2, --quick for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m sdvar_core.train all --work out/tiny-work --out assets/tiny --classifier assets/classifier --device auto "$@"
