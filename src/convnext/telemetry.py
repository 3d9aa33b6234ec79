"""No dependency phones home: every verb opens only the connections its user asked for.

OpenVINO sends usage events to Google Analytics on ``import openvino`` and on every ``convert_model`` (and
NNCF on every ``quantize``), and writes a client id to ``~/intel/openvino_ga_cid``, unless the user opted out
with ``opt_in_out --opt_out`` (which writes ``~/intel/openvino_telemetry``: not ours to write) or the
process looks like CI. Both OpenVINO's converter and NNCF fall back to their own no-op stubs when the
``openvino_telemetry`` package cannot be imported, so that is the switch used here; a user who opted in
(``~/intel/openvino_telemetry`` holding ``1``) keeps their choice. Hugging Face Hub, transformers and MLflow
read the ``DO_NOT_TRACK`` convention and their own variables, which are set unless the user set them.

Stdlib only and importable from every layer: it must run before the packages it silences are imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# variable -> value meaning "off"; a value the user already set is kept
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",  # https://donottrack.sh: huggingface_hub, MLflow
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub, transformers, timm's hub downloads
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow >= 3.2 usage events
    "WANDB_ERROR_REPORTING": "false",  # W&B's crash reports to Sentry (its run logging is what was asked)
}
OPENVINO_TELEMETRY = "openvino_telemetry"


def openvino_opted_in() -> bool:
    """Whether the user opted in to OpenVINO's telemetry themselves (``opt_in_out --opt_in``)."""
    try:
        return (Path.home() / "intel" / "openvino_telemetry").read_text().strip() == "1"
    except (OSError, RuntimeError):  # no file, no HOME
        return False


def disable_telemetry() -> None:
    """Switch off the usage reporting of OpenVINO, NNCF, Hugging Face, MLflow; idempotent, call it before
    importing them. A package already imported keeps its state (its import has already reported)."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    if openvino_opted_in():
        return
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's own switch to its telemetry stub
    if OPENVINO_TELEMETRY not in sys.modules:
        # ``import openvino_telemetry`` now raises ImportError, on which openvino.tools.ovc and nncf use stubs
        sys.modules[OPENVINO_TELEMETRY] = None  # type: ignore[assignment]
