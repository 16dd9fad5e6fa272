"""Serving-side inference: ONNX Runtime only (no torch). See busdx.inference.pipeline."""

from busdx.inference.models import Models, default_models_dir
from busdx.inference.pipeline import Analysis, analyze

__all__ = ["Analysis", "Models", "analyze", "default_models_dir"]
