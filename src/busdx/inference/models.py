"""The exported models and their card, loaded once: two ONNX Runtime sessions (no torch)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import busdx
from busdx.data.crop import CropConfig
from busdx.errors import BusdxError
from busdx.evaluation.model_card import load_card
from busdx.models.contract import (
    CLASSIFIER_FILE,
    CLASSIFIER_OUTPUTS,
    INPUT_NAME,
    MODEL_CARD_FILE,
    SEGMENTER_FILE,
    SEGMENTER_OUTPUT,
    input_views,
)

if TYPE_CHECKING:
    from busdx.inference.lesion import Agreement

log = logging.getLogger(__name__)

MODELS_ENV = "BUSDX_MODELS"
INPUTS = ("crop", "image", "both")


def default_models_dir() -> Path:
    """$BUSDX_MODELS, else the repository's models/ folder (next to src/)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    return Path(busdx.__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ClassifierSettings:
    """What the card's ``classifier`` section says about using the classifier."""

    temperature: float
    threshold: float
    # "crop" (the lesion crop), "image" (the whole letterboxed image) or "both" (the two as
    # channels 0 and 1 of one input: the crop, then the whole image)
    input: str
    crop: CropConfig
    # Crops at these contexts are classified together and their logits averaged; the heatmap
    # comes from the crop at ``crop.context``. One context: one crop.
    contexts: tuple[float, ...] = ()
    # Added to the graph's logit before the temperature: 0 for the bundled models, whose Platt
    # intercept is folded into the graph; a site recalibration (busdx.evaluation.site) sets it.
    logit_shift: float = 0.0
    # The threshold for the mean logit of several views of one lesion (busdx.inference.lesion),
    # from the card's ``lesion_reading`` where rule X offered it; None: no lesion reading.
    lesion_threshold: float | None = None
    # how far views of one lesion may differ before the reading warns (busdx.inference.lesion)
    lesion_agreement: Agreement | None = None

    @property
    def all_contexts(self) -> tuple[float, ...]:
        return self.contexts or (self.crop.context,)

    @property
    def views(self) -> int:
        return input_views(self.input)

    @property
    def batch(self) -> int:
        """The classifier's batch for an image with a lesion: one input per crop context, or
        one whole image."""
        return 1 if self.input == "image" else len(self.all_contexts)

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> ClassifierSettings:
        section = card.get("classifier")
        if not isinstance(section, dict):
            raise BusdxError("the model card has no 'classifier' section: export and evaluate it")
        if "threshold" not in section:
            raise BusdxError("the model card's classifier section has no validated 'threshold'")
        threshold = float(section["threshold"])
        temperature = float(section.get("temperature", 1.0))
        if "temperature" not in section:
            log.warning("the model card has no temperature: probabilities are uncalibrated")
        if not 0.0 < threshold < 1.0 or temperature <= 0:
            raise BusdxError(f"bad classifier settings: threshold {threshold}, T {temperature}")
        kind = str(section.get("input", "crop"))
        if kind not in INPUTS:
            raise BusdxError(f"classifier input {kind!r} is not one of {INPUTS}")
        crop = section.get("crop") or {}
        config = CropConfig(
            size=int(crop.get("size", 224)), context=float(crop.get("context", 0.3))
        )
        contexts = tuple(float(c) for c in crop.get("contexts") or (config.context,))
        if any(not 0.0 <= c <= 2.0 for c in contexts):
            raise BusdxError(f"bad classifier crop contexts {contexts}")
        shift = float(section.get("logit_shift", 0.0))
        if not math.isfinite(shift):
            raise BusdxError(f"bad classifier logit_shift {shift}")
        lesion = section.get("lesion_reading") or {}
        lesion_threshold = float(lesion["threshold"]) if lesion.get("offered") else None
        if lesion_threshold is not None and not 0.0 < lesion_threshold < 1.0:
            raise BusdxError(f"bad classifier lesion threshold {lesion_threshold}")
        from busdx.inference.lesion import Agreement  # lesion.py reads settings: no cycle at import

        agreement = Agreement.from_card(lesion.get("agreement")) if lesion_threshold else None
        return cls(temperature, threshold, kind, config, contexts, shift, lesion_threshold,
                   agreement)


def _batch_axis_name(path: Path) -> str | None:
    """The name of the model's symbolic batch axis (None when it has none), read from an
    unoptimised session, which opens in a fraction of the real one's time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = _open(path, options)
    first = session.get_inputs()[0].shape[0] if session.get_inputs() else None
    return first if isinstance(first, str) and first else None


def open_session(path: Path, threads: int, batch: int | None = None):
    """An ONNX Runtime session. ``batch``: the only batch size this session will be run with.
    Fixing it lets ONNX Runtime fold the graph's shape arithmetic when it loads (timm's
    TF-style "same" padding computes its pads from the input's shape at every run): the
    outputs are the same and the product's two models run faster (benchmarks/latency.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if batch is not None:
        name = _batch_axis_name(path)
        if name is not None:
            options.add_free_dimension_override_by_name(name, batch)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting: each session has its own thread pool, and a pool spinning after its run
    # steals the cores the other model (or a second request) needs next. On 2 cores this makes
    # both one analysis and two at once faster (benchmarks/tune_ort.py, BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return _open(path, options)


def _open(path: Path, options):
    import onnxruntime as ort

    if os.environ.get("ORT_DISABLE_TELEMETRY") == "1":  # see busdx/__init__.py
        ort.disable_telemetry_events()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise BusdxError(f"cannot load {path.name}: {err}") from err


def _check_io(session, name: str, outputs: tuple[str, ...]) -> None:
    inputs = [i.name for i in session.get_inputs()]
    have = [o.name for o in session.get_outputs()]
    if INPUT_NAME not in inputs or any(o not in have for o in outputs):
        raise BusdxError(
            f"{name} does not follow busdx.models.contract: inputs {inputs}, outputs {have}"
        )


def _static_size(session) -> int | None:
    shape = session.get_inputs()[0].shape
    return shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def segmenter_threshold(card: dict[str, Any]) -> float:
    """The served mask threshold on the segmenter's sigmoid: the card's
    ``segmenter.threshold`` (moved only by a validation sweep), 0.5 when it has none."""
    section = card.get("segmenter")
    value = section.get("threshold") if isinstance(section, dict) else None
    return 0.5 if value is None else float(value)


def input_texture_long_side(card: dict[str, Any]) -> int | None:
    """The card's ``input_check.texture_long_side``; None (texture at the file's resolution)
    for cards fitted before it was recorded."""
    section = card.get("input_check")
    value = section.get("texture_long_side") if isinstance(section, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or value < 3:
        raise BusdxError(f"the card's input_check.texture_long_side is not a pixel count: {value}")
    return value


def input_ranges(card: dict[str, Any]) -> dict[str, list[float]] | None:
    """The card's ``input_check.ranges``, None when the card has none."""
    section = card.get("input_check")
    ranges = section.get("ranges") if isinstance(section, dict) else None
    if not ranges:
        return None
    if not all(isinstance(v, list) and len(v) == 2 and v[0] <= v[1] for v in ranges.values()):
        raise BusdxError(f"the card's input_check.ranges are not [low, high] pairs: {ranges}")
    return {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}


@dataclass
class Models:
    directory: Path
    segmenter: Any  # onnxruntime.InferenceSession; None when loaded without it
    classifier: Any
    card: dict[str, Any]
    settings: ClassifierSettings
    segmenter_size: int
    version: str
    mask_threshold: float = 0.5  # on the segmenter's sigmoid; the card's segmenter.threshold
    # statistic -> [low, high] spanned by the training images (card: input_check.ranges); an
    # image outside gets a warning (busdx.inference.quality). None: no check.
    input_ranges: dict[str, list[float]] | None = None
    # the long side the texture statistic is taken at (card: input_check.texture_long_side)
    input_texture_long_side: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        directory: str | Path | None = None,
        threads: int | None = None,
        with_segmenter: bool = True,
    ) -> Models:
        """``with_segmenter=False`` (evaluation on ground-truth masks) loads the classifier only;
        ``segmenter`` is then None."""
        directory = Path(directory) if directory is not None else default_models_dir()
        files = [directory / SEGMENTER_FILE, directory / CLASSIFIER_FILE]
        if not with_segmenter:
            files = files[1:]
        missing = [p.name for p in files + [directory / MODEL_CARD_FILE] if not p.is_file()]
        if missing:
            raise BusdxError(
                f"models missing in {directory}: {', '.join(missing)} "
                f"(set ${MODELS_ENV} or train and export the models)"
            )
        card = load_card(directory / MODEL_CARD_FILE)
        settings = ClassifierSettings.from_card(card)
        # Two cores are typical for the laptops this serves; more threads only add contention.
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        # One analysis runs the segmenter on one image and the classifier on one batch of the
        # card's crops; when that batch is 1 it is 1 without a lesion too (the whole image), so
        # both batch sizes are fixed. Several crops: the classifier's batch varies (1 without a
        # lesion) and stays dynamic.
        segmenter = open_session(files[0], threads, batch=1) if with_segmenter else None
        classifier = open_session(files[-1], threads, batch=1 if settings.batch == 1 else None)
        if segmenter is not None:
            _check_io(segmenter, SEGMENTER_FILE, (SEGMENTER_OUTPUT,))
        _check_io(classifier, CLASSIFIER_FILE, CLASSIFIER_OUTPUTS)
        channels = classifier.get_inputs()[0].shape[1]
        if isinstance(channels, int) and channels != settings.views:
            raise BusdxError(
                f"{CLASSIFIER_FILE} takes {channels} view(s) per image but the card's input "
                f"{settings.input!r} makes {settings.views}"
            )
        classifier_size = _static_size(classifier)
        if classifier_size is not None and classifier_size != settings.crop.size:
            raise BusdxError(
                f"{CLASSIFIER_FILE} takes {classifier_size} pixels but the card's crop size is "
                f"{settings.crop.size}"
            )
        section = card.get("segmenter") if isinstance(card.get("segmenter"), dict) else {}
        segmenter_size = (_static_size(segmenter) if segmenter is not None else None) or int(
            section.get("input_size", 224)
        )
        version = str(card.get("version") or card.get("model_version") or "")
        fingerprint = _fingerprint(files)
        version = f"{version}+{fingerprint}" if version else fingerprint
        log.info("models loaded from %s (version %s)", directory, version)
        return cls(
            directory=directory,
            segmenter=segmenter,
            classifier=classifier,
            card=card,
            settings=settings,
            segmenter_size=segmenter_size,
            version=version,
            mask_threshold=segmenter_threshold(card),
            input_ranges=input_ranges(card),
            input_texture_long_side=input_texture_long_side(card),
        )
