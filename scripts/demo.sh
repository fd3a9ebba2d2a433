#!/usr/bin/env bash
# `make demo`: the main job on built-in data, each step saying what it made and where.
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-out/demo}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
started=$(date +%s)
step() { printf '\n==> %s\n' "$*" >&2; }

mkdir -p "$DEMO_DIR"
step "1/3 build the small LoDa model (loda_tiny: ViT-Tiny/16 + ResNet18, random-init backbones)"
"$BIN/loda" create loda_tiny -o "$DEMO_DIR/loda_tiny.safetensors" --seed 0

step "2/3 reload the checkpoint and print its metadata record"
"$BIN/loda" info "$DEMO_DIR/loda_tiny.safetensors"

step "3/3 score a photograph that ships with scikit-learn (15 grid crops, PyTorch reference)"
"$PY" - "$DEMO_DIR/china.jpg" <<'PYEOF'
import sys
from PIL import Image
from sklearn.datasets import load_sample_image
Image.fromarray(load_sample_image("china.jpg")).save(sys.argv[1], quality=95)
print(f"wrote {sys.argv[1]}", file=sys.stderr)
PYEOF
"$BIN/loda" predict "$DEMO_DIR/loda_tiny.safetensors" "$DEMO_DIR/china.jpg" | tee "$DEMO_DIR/scores.csv"
echo "scores written to $DEMO_DIR/scores.csv" >&2

printf '\ndemo finished in %ss; outputs in %s\n' "$(( $(date +%s) - started ))" "$DEMO_DIR" >&2
