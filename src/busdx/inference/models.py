"""The bundled models and their release file, loaded once: two ONNX Runtime sessions (no torch)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import busdx
from busdx.data.crop import CropConfig
from busdx.errors import BusdxError
from busdx.models.contract import (
    APPEARANCE_OUTPUT,
    CLASSIFIER_FILE,
    CLASSIFIER_OUTPUTS,
    INPUT_NAME,
    PRESENCE_OUTPUT,
    SEGMENTER_FILE,
    SEGMENTER_OUTPUT,
    input_views,
)
from busdx.release import RELEASE_FILE, Release, load_release

if TYPE_CHECKING:
    from busdx.inference.lesion import Agreement

log = logging.getLogger(__name__)

MODELS_ENV = "BUSDX_MODELS"
INPUTS = ("crop", "image", "both")


def default_models_dir() -> Path:
    """$BUSDX_MODELS, else the repository's models/ folder (next to src/)."""
    return busdx.repository_folder(MODELS_ENV, "models")


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
    def from_release(cls, release: Release) -> ClassifierSettings:
        c = release.classifier
        config = CropConfig(size=c.crop_size, context=c.context)
        from busdx.inference.lesion import Agreement  # lesion.py reads settings: no cycle at import

        agreement = None
        if c.lesion_threshold is not None and c.agreement is not None:
            agreement = Agreement(c.agreement.logit_spread, c.agreement.diameter_ratio)
        return cls(c.temperature, c.threshold, c.input, config, c.contexts or (c.context,),
                   c.logit_shift, c.lesion_threshold, agreement)


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


@dataclass
class Models:
    directory: Path
    segmenter: Any  # onnxruntime.InferenceSession; None when loaded without it
    classifier: Any
    release: Release
    settings: ClassifierSettings
    segmenter_size: int
    version: str
    mask_threshold: float = 0.5  # on the segmenter's sigmoid: the release's segmenter.threshold
    # statistic -> (low, high) spanned by the training images; an image outside gets a warning
    # (busdx.inference.quality). None: no check.
    input_ranges: dict[str, tuple[float, float]] | None = None
    # the long side the texture statistic is taken at
    input_texture_long_side: int | None = None
    # the release's appearance threshold, when its segmenter computes the appearance distance
    appearance_threshold: float | None = None
    # the release's presence threshold, when its segmenter computes the presence logit: below
    # it the image is reported as showing no lesion
    presence_threshold: float | None = None
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
        if not (directory / RELEASE_FILE).is_file():
            raise BusdxError(
                f"no {RELEASE_FILE} in {directory} (set ${MODELS_ENV} to a folder that holds a "
                "release, or write one with `busdx release`)"
            )
        release = load_release(directory / RELEASE_FILE)
        if release.classifier is None or (with_segmenter and release.segmenter is None):
            raise BusdxError(f"the release in {directory} lacks a segmenter or a classifier")
        release.check_files(directory)
        settings = ClassifierSettings.from_release(release)
        # Two cores are typical for the laptops this serves; more threads only add contention.
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        # One analysis runs the segmenter on one image and the classifier on one batch of the
        # release's crops; when that batch is 1 it is 1 without a lesion too (the whole image),
        # so both batch sizes are fixed. Several crops: the classifier's batch varies (1 without
        # a lesion) and stays dynamic.
        segmenter = (open_session(directory / release.segmenter.file, threads, batch=1)
                     if with_segmenter else None)
        classifier = open_session(directory / release.classifier.file, threads,
                                  batch=1 if settings.batch == 1 else None)
        appearance = release.input_check.appearance_threshold
        presence = release.segmenter.presence_threshold if release.segmenter else None
        if segmenter is not None:
            _check_io(segmenter, SEGMENTER_FILE, (SEGMENTER_OUTPUT,)
                      + ((APPEARANCE_OUTPUT,) if appearance is not None else ())
                      + ((PRESENCE_OUTPUT,) if presence is not None else ()))
        _check_io(classifier, CLASSIFIER_FILE, CLASSIFIER_OUTPUTS)
        channels = classifier.get_inputs()[0].shape[1]
        if isinstance(channels, int) and channels != settings.views:
            raise BusdxError(
                f"{CLASSIFIER_FILE} takes {channels} view(s) per image but the release's input "
                f"{settings.input!r} makes {settings.views}"
            )
        classifier_size = _static_size(classifier)
        if classifier_size is not None and classifier_size != settings.crop.size:
            raise BusdxError(
                f"{CLASSIFIER_FILE} takes {classifier_size} pixels but the release's crop size "
                f"is {settings.crop.size}"
            )
        segmenter_size = (_static_size(segmenter) if segmenter is not None else None) or (
            release.segmenter.input_size if release.segmenter is not None else 224)
        log.info("models loaded from %s (version %s)", directory, release.version)
        return cls(
            directory=directory,
            segmenter=segmenter,
            classifier=classifier,
            release=release,
            settings=settings,
            segmenter_size=segmenter_size,
            version=release.version,
            mask_threshold=release.segmenter.threshold if release.segmenter else 0.5,
            input_ranges=dict(release.input_check.ranges) or None,
            input_texture_long_side=release.input_check.texture_long_side,
            appearance_threshold=appearance if segmenter is not None else None,
            presence_threshold=presence if segmenter is not None else None,
        )
