#!/usr/bin/env bash
# One prepared script for a lent GPU machine (under 10 minutes on one H100/H200): REALM pre-training with the
# reader warm-up and MIPS refreshes, then query-tower fine-tuning and the gate; a RETRO training; each prints
# steps/s, tokens/s, MFU, peak memory, and for REALM whether the utility of retrieved documents rose.
# Run from the repository root with the venv built (bash scripts/setup.sh); everything it writes lands under
# ${OUT:-/tmp/gpu-check}. GPU_CHECK_TINY=1 runs the same steps at a tiny size on the CPU (the test suite does,
# so that the script is known to work before a GPU is lent).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
. .venv/bin/activate
# One GROUNDING_HOME (and embedded database) for both benches, outside $OUT (its database is not to come back);
# when they read the same package, the second's ingest finds everything unchanged (tiny: 14 s -> 8 s).
HOME_DIR=$(mktemp -d /tmp/gpu-check-home-XXXXXX)
trap 'rm -rf "$HOME_DIR"' EXIT
if [[ "${GPU_CHECK_TINY:-0}" == 1 ]]; then
  DEVICE=cpu; LIMIT=300; REALM_PACKAGE=itsdangerous; RETRO_PACKAGE=itsdangerous  # 8 files: ~65 s, not ~135 s
  REALM=(--pretrain-steps 3 --refresh-every 2 --reader-warmup-steps 4 --pretrain-batch-size 2 --top-k 2
         --max-doc-tokens 64 --finetune-steps 4 --batch-size 4)
  RETRO=(--layers 2 --d-model 64 --steps 3 --batch-size 2 --chunks-per-sequence 4 --vocab-size 512)
else
  DEVICE=cuda; LIMIT=270; REALM_PACKAGE=requests; RETRO_PACKAGE=_pytest
  python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY
  REALM=(--pretrain-steps 200 --refresh-every 50 --reader-warmup-steps 200 --finetune-steps 200)
  RETRO=(--layers 12 --d-model 512 --steps 300 --batch-size 16 --chunks-per-sequence 16 --lr 6e-4)
fi
# REALM on requests (itsdangerous when tiny): reader warm-up, pre-training with MIPS refreshes, fine-tuning, the gate.
timeout "$LIMIT" python bench/realm.py --home "$HOME_DIR" --package "$REALM_PACKAGE" "${REALM[@]}" --device "$DEVICE" \
  --json "$OUT/realm.json" 2>&1 | grep -v "Loading weights" | tail -25 || echo "REALM step failed (rc ${PIPESTATUS[0]})"
# RETRO on _pytest (itsdangerous when tiny): CCA at every third layer, bf16 autocast and torch.compile on CUDA.
timeout "$LIMIT" python bench/retro.py --home "$HOME_DIR" --package "$RETRO_PACKAGE" "${RETRO[@]}" --device "$DEVICE" \
  --json "$OUT/retro.json" 2>&1 | grep -v "Loading weights" | tail -25 || echo "RETRO step failed (rc ${PIPESTATUS[0]})"
test -s "$OUT/realm.json" && test -s "$OUT/retro.json"
