"""ONNX Runtime backend: CPU provider by default, CUDA provider with I/O binding on a GPU.

Opens the graphs ``loda-export onnx`` / ``loda-calib`` write (input ``crops`` uint8
``[batch, crop, crop, 3]``, output ``score`` float32 ``[batch]``) and reads the LoDa record from
the model's ``metadata_props`` through ONNX Runtime itself (no ``onnx`` parse of the file).

Device selection (``device=``): ``"cpu"`` uses ``CPUExecutionProvider``; ``"cuda"`` requires
``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` package and a GPU) and fails with one line
otherwise; ``"auto"`` (default) takes CUDA when ONNX Runtime offers it and CPU otherwise. On
CUDA the crops are copied into an ``OrtValue`` on the device and bound with ``io_binding`` so
ONNX Runtime does not stage them itself; the scores come back with ``copy_outputs_to_cpu``.

INT8 graphs: on CPUs whose u8s8 integer kernels saturate (x86 without VNNI/AMX), sessions use
ONNX Runtime's exact u8u8 kernels (:func:`loda.cpu_isa.int8_session_config`). An INT8 graph
records the CPU class it was verified on (``loda.int8`` -> ``verification.cpu``); opening it on
a CPU of another class logs one warning line per graph and process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from loda.cpu_isa import current_isa, int8_session_config
from loda.errors import one_line

from .backend import (
    ArtifactInfo,
    Backend,
    BackendError,
    BackendUnavailable,
    check_file,
    meta_from_json,
)

__all__ = ["INSTALL_HINT", "OnnxRuntimeBackend", "isa_warning"]

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (graph path, warning) already logged in this process

INSTALL_HINT = "pip install 'loda[cpu]' (onnxruntime) or 'loda[gpu]' (onnxruntime-gpu)"
_DEVICES = ("auto", "cpu", "cuda")


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    suffixes = (".onnx",)

    def __init__(self, info: ArtifactInfo, session: Any, *, cuda: bool) -> None:
        super().__init__(info, max_batch=None)
        self._session = session
        self._cuda = cuda
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        threads: int | None = None,
        device_id: int = 0,
        **_ignored: Any,
    ) -> OnnxRuntimeBackend:
        """Open an ONNX file; ``threads`` sets ``intra_op_num_threads`` (default: ORT's own)."""
        path = check_file(path, "ONNX model")
        if device not in _DEVICES:
            raise BackendError(f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
        ort = import_ort()
        available = ort.get_available_providers()
        use_cuda = "CUDAExecutionProvider" in available and device in ("auto", "cuda")
        if device == "cuda" and not use_cuda:
            raise BackendUnavailable(
                "ONNX Runtime has no CUDAExecutionProvider here (providers: "
                f"{', '.join(available)}): install onnxruntime-gpu instead of onnxruntime "
                "(pip install 'loda[gpu]', never both) on a machine with an NVIDIA GPU"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        int8_session_config(options)  # exact integer kernels where u8s8 ones saturate
        if threads is not None:
            if threads < 1:
                raise BackendError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        providers: list[Any] = ["CPUExecutionProvider"]
        if use_cuda:
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), *providers]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"ONNX Runtime cannot load {path}: {one_line(exc)}") from None
        custom = session.get_modelmeta().custom_metadata_map
        meta = meta_from_json(custom.get("loda"), path, "ONNX metadata_props 'loda'")
        cls._check_io(session, path, meta.preprocess.crop_size)
        cuda = "CUDAExecutionProvider" in session.get_providers()
        details: dict[str, Any] = {
            "providers": session.get_providers(),
            "io_binding": cuda,
            "onnxruntime": ort.__version__,
        }
        for key in ("loda.source_sha256", "loda.int8", "loda.fp16"):
            if key in custom:
                details[key.removeprefix("loda.")] = _maybe_json(custom[key])
        precision = custom.get("loda.precision", "fp32")
        if precision == "int8" and not cuda:
            _warn_once(path, isa_warning(details.get("int8")))
        info = ArtifactInfo(
            path=path,
            meta=meta,
            precision=precision,
            device=f"cuda:{device_id}" if cuda else "cpu",
            details=details,
        )
        return cls(info, session, cuda=cuda)

    @staticmethod
    def _check_io(session: Any, path: Path, crop: int) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{path}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
            )
        inp = inputs[0]
        shape = list(inp.shape)
        if inp.type != "tensor(uint8)" or len(shape) != 4 or shape[1:] != [crop, crop, 3]:
            raise BackendError(
                f"{path}: input {inp.name} is {inp.type} {shape}, expected uint8 "
                f"[batch, {crop}, {crop}, 3] (re-export with loda-export onnx)"
            )

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        if not self._cuda:
            (out,) = self._session.run([self._output], {self._input: crops})
            return out
        ort = import_ort()
        binding = self._session.io_binding()
        device_id = int(self.info.device.split(":")[1])
        value = ort.OrtValue.ortvalue_from_numpy(crops, "cuda", device_id)
        binding.bind_ortvalue_input(self._input, value)
        binding.bind_output(self._output, "cuda", device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _close(self) -> None:
        self._session = None


def isa_warning(record: Any, isa: Any = None) -> str | None:
    """Why an INT8 graph's verification may not hold on this CPU (``isa``: a
    :class:`loda.cpu_isa.CpuIsa`, default this one), or None when it was verified on this class.

    ``record`` is the graph's ``loda.int8`` record (parsed JSON)."""
    isa = isa or current_isa()
    verification = record.get("verification") if isinstance(record, dict) else None
    cpu = verification.get("cpu") if isinstance(verification, dict) else None
    here = f"{isa.model or isa.machine} ({isa.int8_class})"
    if not isinstance(cpu, dict) or not cpu.get("int8_class"):
        return (
            f"INT8 graph without a record of the CPU it was verified on, running on {here}: "
            "its accuracy is unchecked here (re-run loda-calib int8 on this machine to verify it)"
        )
    if cpu["int8_class"] == isa.int8_class:
        return None
    exact = " (ONNX Runtime's exact u8u8 kernels are on)" if isa.saturating else ""
    return (
        f"INT8 graph verified on {cpu.get('cpu') or cpu.get('machine')} ({cpu['int8_class']}), "
        f"running on {here}{exact}: its scores may differ from the verified ones "
        "(re-run loda-calib int8 on this machine to verify it)"
    )


def _warn_once(path: Path, message: str | None) -> None:
    key = (str(path.resolve()), message or "")
    if message and key not in _WARNED:
        _WARNED.add(key)
        log.warning(f"warning: {path.name}: {message}")


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
