#!/usr/bin/env bash
# Make out/gpu_bundle (demo images + manifest, optionally a small trained checkpoint, loda's wheel
# and the small dependency wheels) for bench/gpu_check.sh on a GPU machine without network or
# scikit-image/scikit-learn. Run it HERE (the wheels come from PyPI; --no-download: loda's only).
#   bash bench/gpu_bundle.sh [--checkpoint out/demo/train/model.safetensors] [--n 40]
# Builds the demo set first (out/demoset, 30-40 s) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEMO=${DEMO:-out/demoset}
if [ ! -f "$DEMO/demo.csv" ]; then
  echo "gpu_bundle: building the demo set in $DEMO" >&2
  "$PY" -c 'import sys; from loda.data.demo import make_demo_set; make_demo_set(sys.argv[1], seed=0)' "$DEMO"
fi
"$PY" bench/gpu_bundle.py --demo "$DEMO" "$@"
du -sh out/gpu_bundle >&2
