"""Evidence: what each evaluation, selection, calibration or study found, one record per file.

A record says which command made it, at which commit, when, on which release (the release's
``version``) and what it measured. Records live in ``evidence/`` beside models/; the model card
and the docs are rendered from the release and these records. A record made on another release
is stale by construction: it stays on file, but nothing presents it as describing the models
served now. Writing a record of a name already on file moves the old one to
``evidence/history/NAME.jsonl``, so nothing is lost and no code ever deletes a result by hand.

The *card view* puts a release and its records back together into one nested dict (the layout
the card and the report read): each record's ``results`` is merged in at its ``at`` path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from busdx.errors import BusdxError
from busdx.release import Release

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVIDENCE_ENV = "BUSDX_EVIDENCE"
KINDS = ("evaluation", "selection", "calibration", "training", "study", "about", "history")
_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


# an absolute path on the machine that made a record: never worth printing
_ABSOLUTE = re.compile(r"(?<![\w.:/])(?:/(?:work|home|tmp|mnt|data|Users|root|srv|opt|var|scratch)"
                       r"|\.\./shared/data)(?:/[\w.-]+)+/?")


def without_machine_paths(text: str) -> str:
    """``--data /home/me/busbra`` as ``--data DATA``: the paths of the machine a command ran on
    say nothing to a reader."""
    return _ABSOLUTE.sub("DATA", text)


def default_evidence_dir() -> Path:
    """$BUSDX_EVIDENCE, else the repository's evidence/ folder (next to models/)."""
    from busdx import repository_folder

    return repository_folder(EVIDENCE_ENV, "evidence")


@dataclass(frozen=True)
class Record:
    name: str  # the file's name without .json: "classifier.test"
    kind: str
    at: str  # where ``results`` goes in the card view: "classifier.test", or "classifier"
    release: str | None  # the version of the release it scored; None: about no one release
    command: str
    commit: str
    date: str
    results: Any
    schema_version: int = SCHEMA_VERSION

    def stale(self, release: Release | str) -> bool:
        version = release if isinstance(release, str) else release.version
        return self.release is not None and self.release != version


def current_commit(cwd: Path | None = None) -> str:
    """The checkout's commit (with "+changes" when files differ from it), "" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd,
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.strip() + ("+changes" if dirty.strip() else "")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=_plain)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a file to share
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, paths and tuples as JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_record(directory: str | Path | None, name: str, results: Any, *, kind: str,
                 release: Release | str | None, command: str = "", at: str | None = None,
                 date: str | None = None, commit: str | None = None) -> Record:
    """Write (or replace) the record ``name``; a replaced record moves to history/."""
    if not _NAME.match(name):
        raise BusdxError(f"bad evidence name {name!r}: lower-case words joined by dots")
    if kind not in KINDS:
        raise BusdxError(f"bad evidence kind {kind!r}: one of {KINDS}")
    directory = Path(directory) if directory is not None else default_evidence_dir()
    version = release.version if isinstance(release, Release) else release
    record = Record(
        # the data's folder on the machine that ran it says nothing to a reader: DATA
        name=name, kind=kind, at=at or name, release=version,
        command=without_machine_paths(command),
        commit=current_commit() if commit is None else commit,
        date=date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        results=json.loads(json.dumps(results, default=_plain)),
    )
    path = directory / f"{name}.json"
    if path.is_file():
        history = directory / "history" / f"{name}.jsonl"
        history.parent.mkdir(parents=True, exist_ok=True)
        with history.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(json.loads(path.read_text(encoding="utf-8")), sort_keys=True)
                     + "\n")
    _write_json(path, asdict(record))
    log.info("evidence: wrote %s", path)
    return record


def read_record(path: Path) -> Record:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if int(data.get("schema_version", 0)) != SCHEMA_VERSION:
            raise BusdxError(f"{path}: evidence schema {data.get('schema_version')}")
        return Record(**data)
    except (OSError, ValueError, TypeError) as err:
        raise BusdxError(f"{path} is not an evidence record: {err}") from err


def load_records(directory: str | Path | None = None) -> dict[str, Record]:
    """Every record on file (not the history), by name."""
    directory = Path(directory) if directory is not None else default_evidence_dir()
    if not directory.is_dir():
        return {}
    return {p.stem: read_record(p) for p in sorted(directory.glob("*.json"))}


def load_record(name: str, directory: str | Path | None = None) -> Record | None:
    directory = Path(directory) if directory is not None else default_evidence_dir()
    path = directory / f"{name}.json"
    return read_record(path) if path.is_file() else None


def history(name: str, directory: str | Path | None = None) -> list[Record]:
    """The records ``name`` replaced, oldest first."""
    directory = Path(directory) if directory is not None else default_evidence_dir()
    path = directory / "history" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [Record(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def release_view(release: Release) -> dict[str, Any]:
    """The release's settings in the card view's layout."""
    c, s = release.classifier, release.segmenter
    view: dict[str, Any] = {
        "version": release.version,
        "input_check": {"ranges": {k: list(v) for k, v in release.input_check.ranges.items()},
                        "texture_long_side": release.input_check.texture_long_side},
    }
    if s is not None:
        view["segmenter"] = {"file": s.file, "onnx_sha256": s.sha256,
                             "input_size": s.input_size, "threshold": s.threshold}
        if s.presence_threshold is not None:
            view["segmenter"]["presence_threshold"] = s.presence_threshold
    if c is not None:
        lesion: dict[str, Any] = {"offered": c.lesion_threshold is not None}
        if c.lesion_threshold is not None:
            lesion["threshold"] = c.lesion_threshold
        if c.agreement is not None:
            lesion["agreement"] = asdict(c.agreement)
        view["classifier"] = {
            "file": c.file, "input": c.input, "temperature": c.temperature,
            "threshold": c.threshold, "logit_offset": c.folded_intercept,
            "logit_shift": c.logit_shift,
            "crop": {"size": c.crop_size, "context": c.context,
                     "contexts": list(c.contexts or (c.context,))},
            "lesion_reading": lesion,
        }
    return view


def _merge(into: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    node = into
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        merged = dict(value)
        for k, v in node[last].items():  # the release's settings win over what a record says
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        node[last] = merged
    else:
        node[last] = value


def card_view(release: Release, records: dict[str, Record] | None = None, *,
              include_stale: bool = False, evidence: str | Path | None = None) -> dict[str, Any]:
    """The release and its current records as one nested dict (see the module's docstring)."""
    if records is None:
        records = load_records(evidence)
    view = release_view(release)
    # broad records first, so that a record at "classifier.test" lands inside "classifier"
    for record in sorted(records.values(), key=lambda r: (r.at.count("."), r.name)):
        if record.kind == "history" or (record.stale(release) and not include_stale):
            continue
        _merge(view, record.at, record.results)
    return view


def stale_records(release: Release, records: dict[str, Record] | None = None,
                  evidence: str | Path | None = None) -> list[Record]:
    records = load_records(evidence) if records is None else records
    return [r for r in records.values() if r.kind != "history" and r.stale(release)]
