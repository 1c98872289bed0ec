"""Exporting a trained network for deployment: TorchScript (traced) and ONNX.

Both formats are traced at one clip shape: the I3D's "SAME" padding and its final pooling window are
computed from the input's time and frame size, so those become constants of the exported graph. The
batch size stays free in ONNX (a dynamic first axis); a TorchScript trace replays its recorded
operations, which the convolutions and pools of ``mfcd_net`` and ``i3d`` do for any batch size.
``torch.jit.script`` cannot compile either network (``__getattr__`` forwarding, Python-side shape
arithmetic); tracing is the supported route. torch 2.14 marks TorchScript as deprecated in favour of
``torch.export``, which the ONNX path uses.

ONNX needs the ``export`` extra (``pip install brisk[export]``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from brisk.errors import UserError

FORMATS = {".pt": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}
ONNX_EXTRA = "pip install 'brisk[export]' (onnx, onnxscript, onnxruntime)"


def export_format(path: str | Path) -> str:
    """``torchscript`` for ``.pt``/``.ts``, ``onnx`` for ``.onnx``; a user error otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: expected a .pt or .ts (TorchScript) or .onnx file name")
    return fmt


@torch.no_grad()
def export_model(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Write ``model`` (put in eval mode) traced on ``example`` to ``path``; the suffix picks the
    format (:func:`export_format`). Returns the path."""
    path = Path(path)
    fmt = export_format(path)
    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            # shape arithmetic in Python becomes a constant of the trace: the documented contract
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
            traced = torch.jit.trace(model, example)
        traced.save(str(path))
        return path
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as exc:
        raise UserError(f"ONNX export needs onnx and onnxscript: {ONNX_EXTRA}") from exc
    name = next(iter(_forward_arguments(model)))
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["clips"],
        output_names=["logits"],
        dynamic_shapes={name: {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    return path


def _forward_arguments(model: nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(model.forward).parameters)


def run_exported(path: str | Path, clips: Tensor) -> Tensor:
    """Run an exported file on ``clips``: TorchScript with torch, ONNX with onnxruntime."""
    path = Path(path)
    if export_format(path) == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path))(clips)
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"running an ONNX file needs onnxruntime: {ONNX_EXTRA}") from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"clips": clips.detach().cpu().numpy()})
    return torch.from_numpy(logits)
