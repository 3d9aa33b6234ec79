"""Inference: load any checkpoint (or a training run folder) for evaluation and prediction; Grad-CAM."""

from .cam import GradCAM, cam_overlay, crop_box
from .loading import Loaded, display_names, load_for_inference
from .predict import Prediction, predict_paths

__all__ = [
    "GradCAM",
    "Loaded",
    "Prediction",
    "cam_overlay",
    "crop_box",
    "display_names",
    "load_for_inference",
    "predict_paths",
]
