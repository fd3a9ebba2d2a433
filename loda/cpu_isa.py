"""The CPU's instruction-set class for ONNX Runtime's integer (INT8) kernels.

ONNX Runtime's x86 CPU kernels multiply u8 activations by s8 weights (Q/DQ graphs with s8
activations are shifted to u8 first). With VNNI (``vpdpbusd``) or AMX the products are summed in
32 bits: exact. Without them, on AVX2 and AVX-512 CPUs, each pair of products is summed with
``vpmaddubsw`` into a SATURATING 16-bit integer (255 x 127 x 2 > 32767), so the same graph gives
other, sometimes much worse, scores (onnxruntime's ``session.x64quantprecision`` session option:
"x64 SSE4.1/AVX2/AVX512 (with no VNNI) has overflow problem with quantized matrix
multiplication with U8S8"). That option makes ONNX Runtime convert s8 weights outside
[-64, 64] to u8 and run its exact u8u8 kernels instead; :func:`int8_session_config` turns it on
where the u8s8 kernels saturate, and only there (elsewhere it would only cost speed).

The class of a CPU (:func:`int8_class`) is what decides INT8 numerics; an INT8 graph records the
class it was verified on (``loda.int8`` metadata) and the runtime warns when it runs on another.
Flags come from ``/proc/cpuinfo`` (Linux); elsewhere the class is ``<machine>-unknown``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXACT_CLASSES",
    "ISA_FLAGS",
    "SATURATING_CLASSES",
    "X64_QUANT_PRECISION",
    "CpuIsa",
    "current_isa",
    "int8_class",
    "int8_session_config",
    "read_cpuinfo",
]

#: Flags (as /proc/cpuinfo names them) that decide which integer kernels ONNX Runtime uses.
ISA_FLAGS = ("sse4_1", "avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
#: x86 classes whose u8s8 kernels saturate (no VNNI, no AMX).
SATURATING_CLASSES = frozenset({"x86-avx2", "x86-avx512"})
#: x86 classes whose integer kernels sum in 32 bits.
EXACT_CLASSES = frozenset({"x86-vnni", "x86-amx", "x86-sse4"})
#: ONNX Runtime's session config key for exact u8u8 kernels on CPUs whose u8s8 kernels saturate.
X64_QUANT_PRECISION = "session.x64quantprecision"

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuIsa:
    """A CPU as far as INT8 numerics go."""

    machine: str  # platform.machine(): x86_64, aarch64, arm64, AMD64, ...
    model: str  # "model name" from /proc/cpuinfo, or "" when unknown
    flags: tuple[str, ...]  # the ISA_FLAGS it has
    int8_class: str

    @property
    def saturating(self) -> bool:
        """True where ONNX Runtime's u8s8 kernels can saturate."""
        return self.int8_class in SATURATING_CLASSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_class": self.int8_class,
            "cpu": self.model,
            "machine": self.machine,
            "flags": list(self.flags),
        }


def int8_class(machine: str, flags: set[str] | frozenset[str] | None) -> str:
    """The INT8 class of a CPU from its machine name and /proc/cpuinfo flags (None: unknown).

    In the order ONNX Runtime's MLAS picks its u8s8 kernels: AMX, then VNNI (AVX-512 or AVX),
    then AVX-512 (BW) or AVX2 without either (saturating), then SSE4.1 (16-bit widening: exact).
    """
    arch = machine.lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        if flags is None:
            return "x86-unknown"
        if "amx_int8" in flags:
            return "x86-amx"
        if "avx512_vnni" in flags or "avx_vnni" in flags:
            return "x86-vnni"
        if "avx512bw" in flags:
            return "x86-avx512"
        if "avx2" in flags:
            return "x86-avx2"
        return "x86-sse4"
    if arch in ("aarch64", "arm64"):
        return "arm64"
    return f"{arch or 'unknown'}-unknown"


def read_cpuinfo(path: Path = _CPUINFO) -> tuple[str, set[str] | None]:
    """(model name, flags) of the first CPU in ``path``; ("", None) when it cannot be read."""
    model, flags = "", None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and flags is None:
                flags = set(value.split())
    return model, flags


@functools.cache
def current_isa() -> CpuIsa:
    """This machine's :class:`CpuIsa` (read once per process)."""
    machine = platform.machine()
    model, flags = read_cpuinfo()
    present = tuple(f for f in ISA_FLAGS if flags and f in flags)
    return CpuIsa(machine, model or platform.processor(), present, int8_class(machine, flags))


def int8_session_config(options: Any, isa: CpuIsa | None = None) -> bool:
    """Ask ONNX Runtime for its exact u8u8 kernels where its u8s8 kernels saturate.

    ``options`` is an ``onnxruntime.SessionOptions``; returns whether the option was set. A
    no-op for graphs without integer ops, and left off elsewhere: VNNI/AMX kernels are exact and
    faster than the u8u8 ones.
    """
    isa = isa or current_isa()
    if not isa.saturating:
        return False
    options.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return True
