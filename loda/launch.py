"""Console entry points: each command's module is imported here, so a missing optional
dependency is one line naming the extra to install, not an ``ImportError`` traceback.

The base install is what scoring needs (numpy, Pillow, click, tqdm); training, export, the demo
data and each inference engine come with extras (see ``pyproject.toml``). A command module may
import its dependencies at the top (``loda-train`` needs torch before it can parse an option), so
the check has to sit outside it, around the import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["EXTRA_OF_MODULE", "missing_extra", "missing_extra_message"]

# Top-level module -> the extra that installs it.
EXTRA_OF_MODULE = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "scipy": "train",
    "safetensors": "train",
    "openpyxl": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxconverter_common": "export",
    "onnxslim": "export",
    "onnxruntime": "cpu",
    "skimage": "demo",
    "sklearn": "demo",
    "tensorrt": "gpu",
    "cuda": "gpu",
    "tensorrt_rtx": "rtx",
    "ray": "ray",
    "pyarrow": "ray",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``exc`` could not find, or None when it is not one of
    ours (then it is a bug or a broken install, and keeps its traceback)."""
    top = (exc.name or "").split(".")[0]
    return EXTRA_OF_MODULE.get(top)


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    extra = missing_extra(exc)
    if extra is None:
        return None
    top = (exc.name or "").split(".")[0]
    alt = " (or 'loda[gpu]' on a CUDA machine)" if extra == "cpu" else ""
    return (
        f"this needs the '{extra}' extra (module '{top}' is not installed): "
        f"pip install 'loda[{extra}]'{alt}"
    )


def _entry(target: str, prog: str) -> Callable[[], None]:
    module_name, func_name = target.split(":")

    def main() -> None:
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except ModuleNotFoundError as exc:
            message = missing_extra_message(exc)
            if message is None:
                raise
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(1)
        func()

    main.__name__ = prog.replace("-", "_")
    return main


loda = _entry("loda.cli:main", "loda")
loda_data = _entry("loda.data.cli:main", "loda-data")
loda_train = _entry("loda.train.cli:train_main", "loda-train")
loda_eval = _entry("loda.train.cli:eval_main", "loda-eval")
loda_eval_splits = _entry("loda.train.cli:eval_splits_main", "loda-eval-splits")
loda_export = _entry("loda.export.cli:main", "loda-export")
loda_calib = _entry("loda.calib.cli:main", "loda-calib")
loda_trt = _entry("loda.export.trt_cli:main", "loda-trt")
loda_parity = _entry("loda.parity_cli:main", "loda-parity")
loda_score = _entry("loda.runtime.cli:main", "loda-score")
loda_score_ray = _entry("loda.runtime.ray_cli:main", "loda-score-ray")
