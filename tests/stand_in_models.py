"""Tiny ONNX models with the real models' interface (busdx.models.contract), for tests that must
not depend on trained weights, and helpers to find the real bundled models.

Segmenter: logits = 4 (1 - r^2 / R^2) + 8 (0.3 - local mean intensity), r the distance to the
centre of the 224 square: a dark, central region becomes one blob; a bright image gives nothing.
Classifier: cam = 4 (7x7 average of the crop - 0.4); logit = mean(cam) + 0.1, so darker crops
score lower and the CAM obeys the contract (mean plus bias is the logit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from busdx.models.contract import CLASSIFIER_FILE, MODEL_CARD_FILE, SEGMENTER_FILE

REPO = Path(__file__).resolve().parents[1]
REAL_MODELS = REPO / "models"
SIZE = 224
OPSET = 17

STAND_IN_CARD = {
    "version": "stand-in",
    "segmenter": {"input_size": SIZE},
    "classifier": {
        "temperature": 1.5,
        "threshold": 0.4,
        "input": "crop",
        "crop": {"size": SIZE, "context": 0.3},
    },
}


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _image_input():
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])


def segmenter_graph():
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    radius = 60.0
    prior = 4.0 * (1.0 - ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / radius**2) + 2.4
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["blur"], kernel_shape=[15, 15], pads=[7, 7, 7, 7],
            count_include_pad=0,
        ),
        helper.make_node("Mul", ["blur", "minus8"], ["dark"]),
        helper.make_node("Add", ["dark", "prior"], ["mask_logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(-8.0, np.float32), "minus8"),
        numpy_helper.from_array(prior[None, None].astype(np.float32), "prior"),
    ]
    out = helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    return helper.make_graph(nodes, "stand_in_segmenter", [_image_input()], [out], inits)


def classifier_graph():
    stride = SIZE // 7
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[stride, stride],
                         strides=[stride, stride]),
        helper.make_node("Sub", ["pooled", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["cam"]),
        helper.make_node("ReduceMean", ["cam"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Add", ["mean", "bias"], ["logit"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.4, np.float32), "centre"),
        numpy_helper.from_array(np.array(4.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(0.1, np.float32), "bias"),
    ]
    outs = [
        helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 1, 7, 7]),
    ]
    return helper.make_graph(nodes, "stand_in_classifier", [_image_input()], outs, inits)


def build_stand_in_models(directory: Path, card: dict | None = None) -> Path:
    """Write segmenter.onnx, classifier.onnx and model_card.json into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _save(segmenter_graph(), directory / SEGMENTER_FILE)
    _save(classifier_graph(), directory / CLASSIFIER_FILE)
    (directory / MODEL_CARD_FILE).write_text(json.dumps(card or STAND_IN_CARD, indent=2))
    return directory


def real_models_dir() -> Path | None:
    """The bundled models/ folder when it holds both models and a usable card, else None."""
    card = REAL_MODELS / MODEL_CARD_FILE
    if not all((REAL_MODELS / f).is_file() for f in (SEGMENTER_FILE, CLASSIFIER_FILE)):
        return None
    if not card.is_file():
        return None
    try:
        section = json.loads(card.read_text()).get("classifier", {})
    except (OSError, ValueError):
        return None
    return REAL_MODELS if "threshold" in section else None


REAL_MODELS_MISSING = (
    "the bundled models are not in models/ yet (segmenter.onnx, classifier.onnx and a card "
    "with a classifier threshold): train and export them first"
)
