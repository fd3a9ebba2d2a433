#!/usr/bin/env bash
# `make demo`: the main job on the built-in demo data, each step saying what it made and where.
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-out/demo}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
started=$(date +%s)
step() { printf '\n==> [%ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

# The demo recipe (README, "Demo training recipe"): loda_micro with random-init backbones, all
# weights training, lr 1e-3, batch 32, 3 crops per image, 8 epochs, split 0 of the seeded splits.
DEMO_TRAIN_ARGS=${DEMO_TRAIN_ARGS:---config loda_micro --random-init --train-backbones all --lr 1e-3 --batch-size 32 --crops-per-image 3 --epochs 8}

mkdir -p "$DEMO_DIR"
step "1/3 build the demo IQA set (15 reference photos from scikit-image/scikit-learn x 8 distortions x 5 levels, pseudo-MOS from SSIM) -> $DEMO_DIR/data"
"$BIN/loda-data" demo "$DEMO_DIR/data" --seed 0

step "2/3 train the small model on the training references, evaluate untrained and trained on the held-out references -> $DEMO_DIR/train"
# shellcheck disable=SC2086
"$BIN/loda-train" --data "$DEMO_DIR/data/demo.csv" --out "$DEMO_DIR/train" --baseline $DEMO_TRAIN_ARGS

step "3/3 the trained checkpoint's metadata (score calibration to the demo MOS scale, provenance)"
"$BIN/loda" info "$DEMO_DIR/train/model.safetensors"

printf '\ndemo finished in %ss; outputs in %s\n' "$(( $(date +%s) - started ))" "$DEMO_DIR" >&2
