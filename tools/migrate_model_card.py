"""One-off: split models/model_card.json into models/release.json and evidence/*.json.

Run once (it refuses to overwrite a release): the serving settings go to the release, every
other section of the card becomes an evidence record that keeps its command, and the card's
``*_history`` lists become history records. Kept for the record of how the history moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from busdx.evaluation.evidence import current_commit, write_record
from busdx.evaluation.model_card import KINDS, RELEASE_KEYS
from busdx.release import (
    RELEASE_FILE,
    Agreement,
    Classifier,
    InputCheck,
    Release,
    Segmenter,
    file_sha256,
    with_graphs,
    write_release,
)

PREPROCESSING = {
    "decode": "PNG, JPEG, TIFF, BMP or DICOM; EXIF rotation applied; colour to gray "
              "(0.299 R + 0.587 G + 0.114 B); 16-bit and other depths scaled to [0, 1]",
    "scan_area": "the scanner's screen is cut to its scan area (busdx.inference.scan_area); "
                 "dual-pane screens are split into panes",
    "segmenter_input": "the gray image in [0, 1], letterboxed (aspect kept, zero padding) to "
                       "input_size x input_size with Pillow's antialiased bilinear filter",
    "classifier_input": "lesion crops: the square around the mask's bounding box, widened on "
                        "every side by context times its longer side, resized to crop_size with "
                        "Pillow's bilinear filter; input both adds the whole letterboxed image "
                        "as a second channel",
    "normalisation": "inside the graphs (the networks take [0, 1])",
}


def main(root: Path) -> None:
    models, evidence = root / "models", root / "evidence"
    card = json.loads((models / "model_card.json").read_text())
    if (models / RELEASE_FILE).exists():
        sys.exit(f"{models / RELEASE_FILE} exists: the migration has run")
    seg, clf, check = card["segmenter"], card["classifier"], card["input_check"]
    lesion = clf.get("lesion_reading") or {}
    agreement = lesion.get("agreement")
    crop = clf["crop"]
    release = Release(
        version="",
        segmenter=Segmenter(
            file=seg["file"], sha256=file_sha256(models / seg["file"]),
            input_size=int(seg.get("input_size", 224)), threshold=float(seg.get("threshold", 0.5)),
            made_of=f"U-Net, {seg.get('ensemble', 'one network')} ({seg.get('encoder', '')})"),
        classifier=Classifier(
            file=clf["file"], sha256=file_sha256(models / clf["file"]), input=clf["input"],
            crop_size=int(crop["size"]), context=float(crop["context"]),
            contexts=tuple(float(c) for c in crop.get("contexts") or ()),
            temperature=float(clf["temperature"]), threshold=float(clf["threshold"]),
            logit_shift=float(clf.get("logit_shift", 0.0)),
            folded_intercept=float(clf.get("logit_offset", 0.0)),
            target_sensitivity=float(clf["calibration"].get("target_sensitivity", 0.9)),
            lesion_threshold=float(lesion["threshold"]) if lesion.get("offered") else None,
            agreement=Agreement(float(agreement["logit_spread"]),
                                float(agreement["diameter_ratio"])) if agreement else None,
            made_of=f"{clf.get('ensemble', 'one network')} ({clf.get('arch', '')}), mirror "
                    f"averaging: {clf.get('tta', 'none')}"),
        input_check=InputCheck(
            ranges={k: (float(v[0]), float(v[1])) for k, v in check["ranges"].items()},
            texture_long_side=check.get("texture_long_side")),
        preprocessing=PREPROCESSING,
    )
    release = with_graphs(release, models)
    version = release.version
    write_release(release, models)
    commit = f"migrated from models/model_card.json at {current_commit(root)}"
    for section, values in card.items():
        about = {}
        for key, value in values.items():
            if key in RELEASE_KEYS.get(section, ()):
                continue
            if key.endswith("_history"):
                write_record(evidence, f"{section}.{key}", value, kind="history", release=None,
                             commit=commit, at=f"{section}.{key}")
            elif isinstance(value, (dict, list)):
                command = value.get("command", "") if isinstance(value, dict) else ""
                write_record(evidence, f"{section}.{key}", value, release=version,
                             kind=KINDS.get(key, "selection"), command=command, commit=commit)
            else:
                about[key] = value
        if about:
            write_record(evidence, f"{section}.about", about, kind="about", release=version,
                         command=str(about.get("command", "")), commit=commit, at=section)
    # the old version: the fingerprint of the two graphs' bytes
    import hashlib

    old = hashlib.sha256((models / seg["file"]).read_bytes()
                         + (models / clf["file"]).read_bytes()).hexdigest()[:12]
    rename_version(root, old, version)
    print(f"release {version}: {models / RELEASE_FILE}; evidence in {evidence}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])


def rename_version(root: Path, old: str, new: str) -> list[Path]:
    """The studies' and benchmarks' records name the release they scored by its old version
    (the graphs' fingerprint); the release is the same, so they follow it to its new name."""
    changed = []
    for path in [*(root / "reports" / "studies").glob("*.json"),
                 *(root / "benchmarks" / "results").glob("*.json")]:
        text = path.read_text(encoding="utf-8")
        if old in text:
            path.write_text(text.replace(old, new), encoding="utf-8")
            changed.append(path)
    return changed
