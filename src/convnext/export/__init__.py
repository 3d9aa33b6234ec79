"""Export a trained ConvNeXt for deployment: ONNX, OpenVINO IR (fp32 / bf16 / int8) and torch.export (pt2).

``export_model`` writes and verifies one file; each format's writer and the runner that executes its files
live in ``convnext.runtimes`` (predict, evaluate, benchmark and serve share them).
"""

from .calibration import Calibration, load_calibration
from .core import FORMATS, PARITY_RTOL, PRECISIONS, SUPPORTED, ExportResult, export_model

__all__ = [
    "FORMATS",
    "PARITY_RTOL",
    "PRECISIONS",
    "SUPPORTED",
    "Calibration",
    "ExportResult",
    "export_model",
    "load_calibration",
]
