#!/usr/bin/env bash
# The LoDa GPU check: one JSON report (parity, crops/s, decode speed; TensorRT when importable).
# Runs on a machine with torch (CUDA), timm, onnx, onnxruntime, numpy and Pillow and no network,
# from a copy of the repository: make out/gpu_bundle HERE first (bash bench/gpu_bundle.sh). This
# installs the bundle's loda wheel (and the bundled dependencies the machine lacks) offline into
# a temporary folder put on PYTHONPATH (bench/gpu_install.py; the machine's own packages are not
# touched), then runs bench/gpu_check.py with that INSTALLED package.
#   bash bench/gpu_check.sh [--out PATH] [more bench/gpu_check.py options]
#   PY=/path/to/python bash bench/gpu_check.sh ...        (default: python3)
#   GPU_CHECK_WHEELS=DIR (default out/gpu_bundle/wheels); GPU_CHECK_INSTALL=0: use the loda
#   that $PY already imports (no install)
# A hard `timeout 470` guards the run; the report is rewritten after every section, so a killed
# run still leaves one. Exit status: 0 when a report was written, 1 when none could be.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $PY, else the first of python3 / python that imports torch.
if [ -z "${PY:-}" ]; then
  PY=python3
  for cand in python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then
      PY=$cand
      break
    fi
  done
fi
REPORT=${GPU_CHECK_OUT:-out/gpu_check.json}
LIMIT=${GPU_CHECK_TIMEOUT:-470}

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) REPORT=$2; shift 2 ;;
    --out=*) REPORT=${1#--out=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
mkdir -p "$(dirname "$REPORT")"
rm -f "$REPORT"

if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
  WHEELS=${GPU_CHECK_WHEELS:-out/gpu_bundle/wheels}
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/loda_gpu_site.XXXXXX")
  trap 'rm -rf "$SITE"' EXIT
  if ! record=$("$PY" bench/gpu_install.py --wheels "$WHEELS" --target "$SITE"); then
    echo "gpu_check: no report written (installing loda from $WHEELS failed)" >&2
    exit 1
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export GPU_CHECK_INSTALL_RECORD=$record
fi

runner=()
if command -v timeout >/dev/null 2>&1; then
  runner=(timeout -k 10 "$LIMIT")
fi
set +e
${runner[@]+"${runner[@]}"} "$PY" bench/gpu_check.py --out "$REPORT" ${args[@]+"${args[@]}"}
rc=$?
set -e

if [ ! -s "$REPORT" ]; then
  echo "gpu_check: no report written (exit status $rc)" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  # Killed (124/137: the timeout) or crashed: say so in the report itself.
  "$PY" - "$REPORT" "$rc" <<'EOF' || true
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
with open(path, encoding="utf-8") as f:
    data = json.load(f)
data["complete"] = False
data["exit_status"] = rc
data["killed_by_timeout"] = rc in (124, 137)
with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
EOF
  echo "gpu_check: exit status $rc (124/137: killed by the timeout); partial report $REPORT" >&2
fi
echo "gpu_check: report $REPORT" >&2
