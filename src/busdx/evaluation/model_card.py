"""models/model_card.json: read, and update one section at a time (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def load_card(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def update_card(path: str | Path, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into ``card[section]`` (shallow) and write the card back."""
    path = Path(path)
    card = load_card(path)
    card.setdefault(section, {}).update(values)
    _write(path, card)
    return card


def record_round(path: str | Path, section: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` as ``card[section][key]``; the record it replaces moves to the end of
    ``card[section][key + "_history"]``, so earlier rounds stay on record: what was tried, and
    why."""
    previous = load_card(path).get(section, {})
    values = {key: record}
    if previous.get(key):
        values[f"{key}_history"] = _history_with(previous, key)
    return update_card(path, section, values)


def _history_with(section: dict[str, Any], key: str) -> list:
    """``section[key + "_history"]`` with ``section[key]`` appended."""
    return [*section.get(f"{key}_history", []), section[key]]


def retire_record(path: str | Path, section: str, key: str) -> bool:
    """Move ``card[section][key]`` to the end of its ``_history`` list, as ``record_round``
    would on replacing it; returns whether there was one. For a record that no longer
    describes what ships but still says what was tried."""
    card = load_card(path)
    if not card.get(section, {}).get(key):
        return False
    card[section][f"{key}_history"] = _history_with(card[section], key)
    del card[section][key]
    _write(Path(path), card)
    return True


def drop_keys(path: str | Path, section: str, keys: list[str]) -> list[str]:
    """Remove ``keys`` from ``card[section]``; returns those that were there."""
    path = Path(path)
    card = load_card(path)
    present = [k for k in keys if k in card.get(section, {})]
    for key in present:
        del card[section][key]
    if present:
        _write(path, card)
    return present


def _write(path: Path, card: dict[str, Any]) -> None:
    """Atomically: a reader sees the old card or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600: the card is meant to be read by everyone
    os.replace(tmp, path)
