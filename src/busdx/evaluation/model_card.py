"""A release folder and its evidence, read and written as one nested dict (the card view).

The commands that fit settings (calibration, thresholds, input-check ranges) and those that
measure (evaluations, selections, studies) both speak of "the card": one dict with the sections
``segmenter``, ``classifier`` and ``input_check``. Here that dict is split on writing: what
serving reads goes to the folder's release.json (busdx.release), everything else becomes an
evidence record tied to the release's version (busdx.evaluation.evidence). Reading puts the two
back together.

The bundled models' evidence lives in the repository's evidence/ folder (only `busdx release`
writes models/); any other release folder keeps its evidence in its own ``evidence/``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from busdx.errors import BusdxError
from busdx.evaluation.evidence import (
    Record,
    card_view,
    default_evidence_dir,
    load_record,
    load_records,
    write_record,
)
from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE
from busdx.release import (
    RELEASE_FILE,
    Agreement,
    Classifier,
    InputCheck,
    Release,
    Segmenter,
    file_sha256,
    load_release,
    release_version,
    write_release,
)

KINDS = {
    "test": "evaluation", "test_gt_masks": "evaluation", "validation": "evaluation",
    "site_calibration": "calibration", "calibration": "calibration",
    "calibration_training": "calibration", "lesion_reading": "calibration",
    "training": "training", "members": "training", "recipe_cross_validation": "study",
    "appearance": "evaluation", "presence": "selection",
}
# the keys of each section that belong to the release, not to the evidence
RELEASE_KEYS = {
    "segmenter": {"file", "threshold", "input_size", "presence_threshold"},
    "classifier": {"file", "input", "crop", "temperature", "threshold", "logit_offset",
                   "logit_shift"},
    "input_check": {"ranges", "texture_long_side", "appearance_threshold"},
}


def _folder(where: str | Path) -> Path:
    where = Path(where)
    return where.parent if where.suffix == ".json" else where


def is_bundled(where: str | Path) -> bool:
    """Is ``where`` the bundled models' folder (which only `busdx release` writes)?"""
    from busdx.inference.models import default_models_dir

    return _folder(where).resolve() == default_models_dir().resolve()


def evidence_dir_for(where: str | Path) -> Path:
    """Where the evidence about the release in ``where`` lives."""
    folder = _folder(where)
    return default_evidence_dir() if is_bundled(folder) else folder / "evidence"


STAGING = "runs/release"


def staging(where: str | Path, seed: str | Path | None = None) -> Path:
    """A folder a command may write graphs and settings into: never the bundled models. Given
    ``seed`` (a release folder), an empty one starts as a copy of that release, so that
    replacing one graph or one setting gives a whole release to score and ship."""
    import shutil

    folder = _folder(where)
    if is_bundled(folder):
        raise BusdxError(
            f"{folder} holds the bundled models, which only `busdx release` writes: give a "
            "staging folder (e.g. runs/release) and ship it with `busdx release --from`")
    if seed is not None and not (folder / RELEASE_FILE).is_file():
        source = Path(seed)
        if (source / RELEASE_FILE).is_file():
            folder.mkdir(parents=True, exist_ok=True)
            release = load_release(source)
            for graph in release.graphs:
                if not (folder / graph.file).exists():
                    shutil.copy2(source / graph.file, folder / graph.file)
            write_release(release, folder)
    return folder


def load_folder_release(where: str | Path) -> Release | None:
    path = _folder(where) / RELEASE_FILE
    return load_release(path) if path.is_file() else None


def load_card(where: str | Path) -> dict[str, Any]:
    """The card view of the release in ``where`` (a folder) and its current evidence; {} when
    the folder holds no release."""
    release = load_folder_release(where)
    if release is None:
        return {}
    return card_view(release, load_records(evidence_dir_for(where)))


def _sha(folder: Path, name: str) -> str:
    return file_sha256(folder / name) if (folder / name).is_file() else ""


def _release_with(release: Release, folder: Path, section: str, values: dict) -> Release:
    if section == "segmenter":
        seg = release.segmenter or Segmenter(file=SEGMENTER_FILE, sha256="")
        seg = replace(seg, **{k: values[k] for k in ("file", "threshold", "input_size",
                                                     "presence_threshold") if k in values})
        return replace(release, segmenter=seg)
    if section == "input_check":
        check = release.input_check
        if "ranges" in values:
            check = replace(check, ranges={k: (float(v[0]), float(v[1]))
                                           for k, v in values["ranges"].items()})
        if "texture_long_side" in values:
            check = replace(check, texture_long_side=values["texture_long_side"])
        if "appearance_threshold" in values:
            check = replace(check, appearance_threshold=values["appearance_threshold"])
        return replace(release, input_check=check)
    if section != "classifier":
        return release
    c = release.classifier or Classifier(file=CLASSIFIER_FILE, sha256="", input="crop",
                                         crop_size=224, context=0.3, temperature=1.0,
                                         threshold=0.5)
    changes: dict[str, Any] = {k: values[k] for k in ("file", "input", "temperature",
                                                      "threshold", "logit_shift") if k in values}
    if "logit_offset" in values:
        changes["folded_intercept"] = float(values["logit_offset"])
    if "crop" in values:
        crop = values["crop"]
        changes["crop_size"] = int(crop.get("size", c.crop_size))
        changes["context"] = float(crop.get("context", c.context))
        changes["contexts"] = tuple(float(x) for x in crop.get("contexts") or ())
    calibration = values.get("calibration")
    if isinstance(calibration, dict) and "target_sensitivity" in calibration:
        changes["target_sensitivity"] = float(calibration["target_sensitivity"])
    lesion = values.get("lesion_reading")
    if isinstance(lesion, dict):
        offered = lesion.get("offered") and lesion.get("threshold") is not None
        changes["lesion_threshold"] = float(lesion["threshold"]) if offered else None
        agreement = lesion.get("agreement")
        changes["agreement"] = (Agreement(float(agreement["logit_spread"]),
                                          float(agreement["diameter_ratio"]))
                                if agreement else None)
    parts = [values.get("ensemble"), values.get("arch")]
    if any(parts) or "tta" in values:
        changes["made_of"] = classifier_made_of(values.get("ensemble"), values.get("arch", ""),
                                                values.get("tta", "none"))
    return replace(release, classifier=replace(c, **changes))


def classifier_made_of(ensemble: str | None, arch: str, tta: str) -> str:
    """The release's ``made_of`` line for a classifier graph: the only place a shipped release
    keeps which networks it holds and its mirror option (:func:`classifier_made_of_parts` reads
    them back)."""
    return f"{ensemble or 'one network'} ({arch}), mirror averaging: {tta}"


def classifier_made_of_parts(made_of: str) -> dict[str, Any]:
    """``arch`` ("lite1", or "lite1+lite2" for an ensemble), ``ensemble`` (truthy for several
    networks) and ``tta`` from a line :func:`classifier_made_of` wrote; {} from any other."""
    import re

    found = re.search(r"\(([\w+]+)\), mirror averaging: (\w+)$", made_of or "")
    if not found:
        return {}
    arch, tta = found.groups()
    return {"arch": arch, "tta": tta, "ensemble": "+" in arch or None}


def update_card(where: str | Path, section: str, values: dict[str, Any], command: str = ""
                ) -> dict[str, Any]:
    """Write ``values`` of ``section``: its serving settings into the folder's release (a new
    version whenever they change), everything else as evidence about that version. Returns the
    card view afterwards."""
    folder = _folder(where)
    if section not in RELEASE_KEYS:
        raise BusdxError(f"no card section {section!r}")
    release = load_folder_release(folder) or Release(version="", segmenter=None,
                                                    classifier=None)
    updated = _release_with(release, folder, section, values)
    seg, cls = updated.segmenter, updated.classifier
    if seg is not None:
        seg = replace(seg, sha256=_sha(folder, seg.file))
    if cls is not None:
        cls = replace(cls, sha256=_sha(folder, cls.file))
    updated = replace(updated, segmenter=seg, classifier=cls)
    updated = replace(updated, version=release_version(updated))
    if updated != release:
        if is_bundled(folder):
            raise BusdxError(
                f"this changes the release in {folder} ({section}): write it to a staging "
                "folder instead (--models runs/release) and ship that with `busdx release "
                "--from runs/release`, the one command that writes models/")
        write_release(updated, folder)
    evidence = evidence_dir_for(folder)
    about = {}
    for key, value in values.items():
        if key in RELEASE_KEYS[section]:
            continue
        if isinstance(value, (dict, list)):
            what = value.get("command", "") if isinstance(value, dict) else ""
            write_record(evidence, f"{section}.{key}", value, kind=KINDS.get(key, "selection"),
                         release=updated, command=str(what or command))
        else:
            about[key] = value
    if about:
        name = f"{section}.about"
        old = load_record(name, evidence)
        kept = old.results if isinstance(old, Record) and not old.stale(updated) else {}
        write_record(evidence, name, {**kept, **about}, kind="about", release=updated,
                     command=command, at=section)
    return card_view(updated, load_records(evidence))


def record_round(where: str | Path, section: str, key: str, record: dict[str, Any]
                 ) -> dict[str, Any]:
    """Write ``record`` as the evidence ``section.key``; the record it replaces stays in the
    evidence's history."""
    return update_card(where, section, {key: record})


def folder_evidence(where: str | Path) -> dict[str, Record]:
    return load_records(evidence_dir_for(where))


__all__ = ["InputCheck", "write_card", "evidence_dir_for", "folder_evidence", "load_card",
           "load_folder_release", "record_round", "update_card"]


def write_card(where: str | Path, card: dict[str, Any], command: str = "") -> dict[str, Any]:
    """Write every section of a whole card view (a test's stand-in card, a site's refit)."""
    view: dict[str, Any] = {}
    if card.get("version"):
        _rename(where, str(card["version"]))
    for section in ("segmenter", "classifier", "input_check"):
        if isinstance(card.get(section), dict):
            view = update_card(where, section, card[section], command=command)
    return view


def _rename(where: str | Path, name: str) -> None:
    folder = _folder(where)
    release = load_folder_release(folder) or Release(version="", segmenter=None,
                                                    classifier=None)
    write_release(replace(release, name=name), folder)
