#!/usr/bin/env bash
# The prepared GPU checks (benchmarks/gpu_check.py): trainer=gpu against a plain GPU loop on ResNet-18 per loss,
# bf16 autocast keeping losses and metrics in float32, trainer=ddp. One command, under 5 minutes on one GPU:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # writes OUT_DIR/gpu_check.json (default: $OUT, else .)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py --out "$out/gpu_check.json"
