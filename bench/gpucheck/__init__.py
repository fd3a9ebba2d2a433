"""The LoDa GPU check (``bench/gpu_check.py``), split by what each part measures.

It runs with an INSTALLED ``loda`` (the wheel that ``bench/gpu_bundle.sh`` puts in
``out/gpu_bundle/wheels``, installed offline by ``bench/gpu_check.sh``) and imports everything it
measures from the package: preprocessing and normalisation, the comparator, atomic writes, ONNX
export, FP16 conversion, TensorRT engine builds and the runtime's TensorRT backend. What stays
here is the measuring: precision variants of the eager model, timing, the report.

- :mod:`.common`: the report (JSON rewritten after every section, time budget), small helpers;
- :mod:`.variants`: precision variants of the torch model and the block timer;
- :mod:`.images`: which images (bundle, demo set, folder, generated) and the decode worker;
- :mod:`.check`: the sections env, images, parity, throughput, decode;
- :mod:`.accel`: CUDA graphs, torch.compile and TensorRT (child processes), recommendation;
- :mod:`.workers`: the child processes' code;
- :mod:`.main`: arguments, the section plan, the printed summary.
"""

FORMAT = "loda-gpu-check/1"
BUNDLE_FORMAT = "loda-gpu-bundle/1"
