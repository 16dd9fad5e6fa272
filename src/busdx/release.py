"""``models/release.json``: everything serving needs to know about the bundled networks.

One small file with a schema version: each ONNX file with its sha256, how images are prepared,
the thresholds, the calibration, the crops and the input check's ranges. It says nothing about
how the networks were chosen or how well they do: that is evidence (busdx.evaluation.evidence),
kept beside the release and tied to it by ``version``.

A leaf module (standard library only), so that serving reads it without torch, and every layer
may import it. ``busdx release`` is the one command that writes it into models/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from busdx.errors import BusdxError

SCHEMA_VERSION = 1
RELEASE_FILE = "release.json"
CLASSIFIER_INPUTS = ("crop", "image", "both")
STATISTICS = ("brightness", "contrast", "texture")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_version(release: Release) -> str:
    """The version a release's content makes: 12 hex digits of the sha256 of its graphs'
    digests and its settings. Any change to a graph, a threshold, the calibration or a range
    makes a new version, so evidence about the old one is stale by construction."""
    content = release.to_dict()
    for key in ("version", "schema_version", "preprocessing", "name"):
        content.pop(key, None)
    for part in ("segmenter", "classifier"):
        if content.get(part):
            content[part].pop("made_of", None)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Segmenter:
    file: str
    sha256: str
    input_size: int = 224  # the letterboxed square the graph takes
    threshold: float = 0.5  # on the sigmoid of the graph's logits: above it is lesion
    # below this logit of the graph's ``presence`` output the image is reported as showing no
    # lesion, whatever the mask; None: no such check (busdx.evaluation.presence fits it)
    presence_threshold: float | None = None
    # how the graph was put together, in a few words (members, mirror averaging)
    made_of: str = ""


@dataclass(frozen=True)
class Agreement:
    """How far two views of one lesion may differ before the lesion reading warns."""

    logit_spread: float
    diameter_ratio: float


@dataclass(frozen=True)
class Classifier:
    file: str
    sha256: str
    # "crop" (the lesion crop), "image" (the whole letterboxed image) or "both" (the crop and
    # the whole image as channels 0 and 1)
    input: str
    crop_size: int
    context: float  # the crop's margin around the lesion, as a share of its size
    temperature: float  # probability = sigmoid((logit + logit_shift) / temperature)
    threshold: float  # on the probability: at or above it the call is "malignant"
    # crops at these contexts are classified together and their logits averaged
    contexts: tuple[float, ...] = ()
    # added to the graph's logit: 0 for the bundled models (Platt's intercept is folded into
    # the graph), set by a site recalibration
    logit_shift: float = 0.0
    # Platt's intercept as folded into the graph (b / a): what undoes the calibration, for the
    # uncalibrated calibration error
    folded_intercept: float = 0.0
    # the sensitivity the threshold was chosen to keep on validation
    target_sensitivity: float = 0.90
    # the threshold for the mean logit of several views of one lesion; None: no lesion reading
    lesion_threshold: float | None = None
    agreement: Agreement | None = None
    made_of: str = ""


@dataclass(frozen=True)
class InputCheck:
    """The ranges of image statistics the training images span: outside them, a warning."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the long side the texture statistic is measured at; None: the file's own resolution
    texture_long_side: int | None = None
    # above this distance of the segmenter's encoder features from the training images' (its
    # graph's ``appearance`` output), an image may not be a breast ultrasound at all; None: no
    # such check (busdx.evaluation.appearance fits it)
    appearance_threshold: float | None = None


@dataclass(frozen=True)
class Release:
    version: str
    # None only while a release is being put together (a folder with one graph so far)
    segmenter: Segmenter | None
    classifier: Classifier | None
    input_check: InputCheck = field(default_factory=InputCheck)
    # how an image becomes the networks' input: fixed by the code, recorded so that a reader
    # (or another implementation) knows without reading it
    preprocessing: dict[str, str] = field(default_factory=dict)
    # what the release is, in a word or two ("stand-in", "site recalibration"): not part of
    # its version
    name: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def graphs(self) -> tuple[Segmenter | Classifier, ...]:
        return tuple(g for g in (self.segmenter, self.classifier) if g is not None)

    @property
    def complete(self) -> bool:
        return self.segmenter is not None and self.classifier is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.classifier is not None:
            data["classifier"]["contexts"] = list(self.classifier.contexts)
        data["input_check"]["ranges"] = {k: list(v) for k, v in self.input_check.ranges.items()}
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        try:
            schema = int(data.get("schema_version", 0))
            if schema != SCHEMA_VERSION:
                raise BusdxError(f"release.json has schema version {schema}; this busdx reads "
                                 f"version {SCHEMA_VERSION}")
            seg = Segmenter(**data["segmenter"]) if data.get("segmenter") else None
            classifier = None
            if data.get("classifier"):
                c = dict(data["classifier"])
                c["contexts"] = tuple(float(x) for x in c.get("contexts") or ())
                if c.get("agreement") is not None:
                    c["agreement"] = Agreement(**c["agreement"])
                classifier = Classifier(**c)
            check = dict(data.get("input_check") or {})
            check["ranges"] = {k: (float(v[0]), float(v[1]))
                               for k, v in (check.get("ranges") or {}).items()}
            release = cls(version=str(data["version"]), segmenter=seg, classifier=classifier,
                          input_check=InputCheck(**check),
                          preprocessing=dict(data.get("preprocessing") or {}),
                          name=str(data.get("name", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise BusdxError(f"release.json is not a valid release: {err}") from err
        release.validate()
        return release

    def validate(self) -> None:
        problems = []
        if self.classifier is not None:
            problems += _classifier_problems(self.classifier)
        s = self.segmenter
        if s is not None and not 0.0 < s.threshold < 1.0:
            problems.append(f"segmenter threshold {s.threshold} is not in (0, 1)")
        if s is not None and (s.input_size < 32 or s.input_size % 32):
            problems.append(f"segmenter input size {s.input_size} is not a multiple of 32")
        for name, (low, high) in self.input_check.ranges.items():
            if name not in STATISTICS or not low <= high:
                problems.append(f"input check range {name}: [{low}, {high}]")
        long_side = self.input_check.texture_long_side
        if long_side is not None and (not isinstance(long_side, int) or long_side < 3):
            problems.append(f"input check texture_long_side {long_side} is not a pixel count")
        if problems:
            raise BusdxError("release.json: " + "; ".join(problems))

    def check_files(self, directory: Path) -> None:
        """Every graph is there and is the one this release describes."""
        for graph in self.graphs:
            path = directory / graph.file
            if not path.is_file():
                raise BusdxError(f"{path} is missing: release.json names it")
            if file_sha256(path) != graph.sha256:
                raise BusdxError(f"{path} is not the graph release.json describes (sha256 "
                                 "differs): write the release again with `busdx release`")


def _classifier_problems(c: Classifier) -> list[str]:
    problems = []
    if c.input not in CLASSIFIER_INPUTS:
        problems.append(f"classifier input {c.input!r} is not one of {CLASSIFIER_INPUTS}")
    if not 0.0 < c.threshold < 1.0:
        problems.append(f"classifier threshold {c.threshold} is not in (0, 1)")
    if not (c.temperature > 0 and math.isfinite(c.temperature)):
        problems.append(f"classifier temperature {c.temperature} is not positive")
    if not math.isfinite(c.logit_shift):
        problems.append(f"classifier logit_shift {c.logit_shift} is not finite")
    if any(not 0.0 <= x <= 2.0 for x in (c.context, *c.contexts)):
        problems.append(f"classifier crop contexts {(c.context, *c.contexts)} not in [0, 2]")
    if c.lesion_threshold is not None and not 0.0 < c.lesion_threshold < 1.0:
        problems.append(f"lesion threshold {c.lesion_threshold} is not in (0, 1)")
    if c.agreement is not None and not (c.agreement.logit_spread > 0
                                        and c.agreement.diameter_ratio >= 1):
        problems.append(f"bad lesion agreement {c.agreement}")
    return problems


def load_release(path: str | Path) -> Release:
    """The release described by ``path`` (a release.json, or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RELEASE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BusdxError(f"no {RELEASE_FILE} in {path.parent}") from None
    except (OSError, ValueError) as err:
        raise BusdxError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise BusdxError(f"{path} is not a JSON object")
    return Release.from_dict(data)


def write_release(release: Release, directory: str | Path) -> Path:
    """Write ``directory/release.json`` atomically (a reader never sees half a file)."""
    release.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(release.to_dict(), indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".release-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a file to share
        os.replace(tmp, directory / RELEASE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / RELEASE_FILE


def with_graphs(release: Release, directory: Path) -> Release:
    """``release`` with the sha256 of the graphs now in ``directory`` and the version its
    content makes."""
    seg, cls = release.segmenter, release.classifier
    if seg is not None:
        seg = replace(seg, sha256=file_sha256(directory / seg.file))
    if cls is not None:
        cls = replace(cls, sha256=file_sha256(directory / cls.file))
    updated = replace(release, segmenter=seg, classifier=cls)
    return replace(updated, version=release_version(updated))
