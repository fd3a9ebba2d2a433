#!/usr/bin/env python3
"""One GPU check of LoDa, written as ONE JSON report: precision parity, crops/s, decode speed.

Run it with ``bash bench/gpu_check.sh``, which installs the bundled loda wheel (offline) and
then runs this file with the INSTALLED package: this script imports nothing from the source
tree but its own parts (``bench/gpucheck``). Sections, each timed, each allowed to fail on its
own (its error goes into the report and the next runs), the report rewritten after each, and a
global time budget (``--budget``, default 440 s) that skips what no longer fits:

- ``env``: Python, torch/CUDA/cuDNN versions, GPU, CPU count, TF32/cuDNN flags as torch starts,
  optional packages, and where ``loda`` was imported from (with the install record);
- ``images``: ``--images DIR``, else ``out/gpu_bundle`` (``bench/gpu_bundle.sh``), else
  ``out/demoset``, else a demo set built here when it can be, else generated images (said so);
- ``parity``: per-image scores (mean of the grid crops) of every precision variant against
  strict FP32 (TF32 off) with :func:`loda.compare.compare_scores`: max/mean |d score|,
  Spearman vs FP32, SRCC vs MOS and dSRCC; models: ``--config`` random-init (seeded; adapter
  scale factors enlarged) and the bundle's trained checkpoint when it has one;
- ``throughput``: crops/s per variant and batch (default 15/60/240), input on the device,
  after warm-up; blocks timed with ``perf_counter`` after a synchronize and with CUDA events;
- ``decode``: images/s of ``loda.preprocess.preprocess_image`` on 1 core, a process pool and a
  thread pool;
- ``cuda_graphs``, ``torch_compile`` (child process, killed when its budget ends), ``tensorrt``
  (only when ``import tensorrt`` works: export, FP16 graph, engine build and the runtime's
  TensorRT backend, all from the package, in a child process);
- ``recommendation``: the fastest settings whose parity is acceptable (|dSRCC| <= --max-dsrcc,
  Spearman vs FP32 >= --min-spearman on every model, no inf/NaN), per batch size.

``--device cpu --smoke`` runs every section on ``loda_micro`` with tiny counts (the CUDA-only
ones are recorded as ``skipped: no CUDA``), so the code paths are tested without a GPU.
"""

from __future__ import annotations

import os
import sys

# Never touch the network (timm with pretrained=False does not, but be explicit).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gpucheck.main import main

if __name__ == "__main__":
    sys.exit(main())
