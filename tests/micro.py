"""Shared test artefacts, made once per test session: a tiny demo set, and a loda_micro checkpoint
(random init, perturbed so that every parameter matters) with its verified FP32 ONNX export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import perturb

from loda.checkpoint import save_checkpoint
from loda.data.demo import make_demo_set
from loda.export.onnx import ExportReport, export_onnx
from loda.model import create_model


@dataclass(frozen=True)
class MicroExport:
    demo_dir: Path
    checkpoint: Path
    onnx_path: Path
    report: ExportReport


_CACHE: dict[str, object] = {}


def tiny_demo_set(tmp_path_factory) -> Path:
    if "demo" not in _CACHE:
        d = tmp_path_factory.mktemp("demo") / "demo"
        make_demo_set(d, references=["astronaut", "coffee"], size=(96, 64))
        _CACHE["demo"] = d
    return _CACHE["demo"]  # type: ignore[return-value]


def micro_export(tmp_path_factory) -> MicroExport:
    if "micro" not in _CACHE:
        demo = tiny_demo_set(tmp_path_factory)
        d = tmp_path_factory.mktemp("export_micro")
        torch.manual_seed(0)
        ckpt = d / "micro.safetensors"
        save_checkpoint(perturb(create_model("loda_micro")).eval(), ckpt)
        out = d / "micro.onnx"
        report = export_onnx(ckpt, out, images=demo, verify_images=4)
        _CACHE["micro"] = MicroExport(demo, ckpt, out, report)
    return _CACHE["micro"]  # type: ignore[return-value]
