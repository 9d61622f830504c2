#!/usr/bin/env bash
# One prepared script for a lent GPU machine: short REALM and RETRO trainings on CUDA, with throughput.
# Run from the repository root with the venv built (bash scripts/setup.sh). Prints what each step measured;
# everything it writes lands under ${OUT:-/tmp/gpu-check}.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
. .venv/bin/activate
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY
# REALM: pre-training with MIPS refreshes, then query-tower fine-tuning and the gate, on requests.
timeout 420 python bench/realm.py --package requests --pretrain-steps 200 --refresh-every 50 \
  --finetune-steps 200 --device cuda --json "$OUT/realm.json" 2>&1 | grep -v "Loading weights" | tail -25
# RETRO: a 12-layer model (CCA at layers 6, 9, 12) under bf16 autocast and torch.compile on _pytest.
timeout 420 python bench/retro.py --package _pytest --layers 12 --d-model 512 --steps 300 --batch-size 16 \
  --chunks-per-sequence 16 --lr 6e-4 --device cuda --json "$OUT/retro.json" 2>&1 | grep -v "Loading weights" | tail -25
