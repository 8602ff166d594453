"""The ONNX format of `swarmnode export`: writing a network as ONNX and running one.

The file is written by torch's TorchScript-based exporter (it needs no package beyond
``onnx`` to read back; the newer exporter needs onnxscript) without constant folding, so
every merged tensor stays an initializer under its state-dict name: `onnx_parameters`
reads them back, and `swarmnode.export` checks them against the card's final model hash
exactly as for the torch formats. `OnnxModule` runs the graph with onnxruntime when it is
installed and otherwise with onnx's reference evaluator (pure numpy: slow, exact enough
for `swarmnode predict`'s metrics).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path
from typing import Any, final

import numpy as np
import torch
from torch import nn


class OnnxExportError(Exception):
    """The network cannot be written as, or read back from, ONNX with its parameters by name."""


def write_onnx(module: nn.Module, n_features: int, path: Path) -> None:
    """Write `module` (eval mode) taking (batch, n_features) float32 rows as ONNX to `path`."""
    example = torch.zeros(1, n_features)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but kept
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(path), input_names=["features"], output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False, do_constant_folding=False,
        )  # fmt: skip
    stored = onnx_parameters(path)
    missing = [
        name for name, t in module.state_dict().items() if t.is_floating_point() and name not in stored
    ]
    if missing:
        path.unlink()
        raise OnnxExportError(
            f"{path}: the ONNX exporter renamed or folded the tensors {', '.join(missing[:5])}: this model "
            "cannot be exported to ONNX with its parameters checkable; use torch, safetensors or torchscript"
        )


def onnx_parameters(path: Path) -> dict[str, torch.Tensor]:
    """The graph's initializers by name (copies, as torch tensors)."""
    onnx = importlib.import_module("onnx")
    numpy_helper = importlib.import_module("onnx.numpy_helper")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises its own DecodeError types
        raise OnnxExportError(f"{path}: not an ONNX model ({exc})") from None
    return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}


@final
class OnnxModule(nn.Module):
    """An ONNX file run as a torch module: float32 rows in, logits out (CPU, no grad)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._run: Any
        if importlib.util.find_spec("onnxruntime") is not None:
            session = importlib.import_module("onnxruntime").InferenceSession(str(path))
            self._run = lambda x: session.run(None, {"features": x})[0]
        else:
            evaluator = importlib.import_module("onnx.reference").ReferenceEvaluator(str(path))
            self._run = lambda x: evaluator.run(None, {"features": x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.asarray(self._run(features), dtype=np.float32))
