"""Training recipes as small JSON files.

Each task's config is a dataclass with :class:`JsonConfig` mixed in
(:class:`~busdx.training.segmentation.SegTrainConfig`,
:class:`~busdx.training.classification.ClassifierTrainConfig`): ``config.save(path)`` writes it
as JSON and ``Config.load(path)`` reads it back, nested dataclasses (the segmenter's ``model``)
included. Every run writes its recipe to ``config.json`` in its folder; training again from that
file reproduces the run.

For the command line, :func:`merge` builds a config in three layers: the dataclass's defaults,
then a file's values (``--config FILE``), then the options given explicitly on the command line.
A key the config does not have is an error naming it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from busdx.errors import BusdxError

CONFIG_FILE = "config.json"  # a run's recipe, in its folder

T = TypeVar("T")


class JsonConfig:
    """``save``/``load`` as JSON for a dataclass config."""

    # settings of how a run is carried out rather than of what it learns: a resumed run may
    # change them (see busdx.training.loop.read_last)
    RUN_SETTINGS: ClassVar[tuple[str, ...]] = ()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(as_json(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return from_dict(cls, read(path), source=str(path))

    def recipe(self) -> dict:
        """The config as JSON values, without the settings a resumed run may change."""
        return {k: v for k, v in as_json(self).items() if k not in self.RUN_SETTINGS}


def as_json(config: Any) -> dict:
    """The config as JSON values (nested dataclasses as objects, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read(path: str | Path) -> dict:
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BusdxError(f"no config file at {path}") from None
    except json.JSONDecodeError as err:
        raise BusdxError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise BusdxError(f"{path} must hold a JSON object of settings")
    return values


def from_dict(cls: type[T], values: dict, source: str = "config", prefix: str = "") -> T:
    """``cls`` from ``values`` (JSON values, possibly a subset: the rest keep their defaults).
    Nested dataclasses come from nested objects; a key ``cls`` lacks is a :class:`BusdxError`
    naming it and ``source``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise BusdxError(f"{source}: unknown setting {prefix + key!r} "
                             f"(settings of {cls.__name__}: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise BusdxError(f"{source}: {prefix + key!r} must be an object of settings")
            value = from_dict(hint, value, source, f"{prefix}{key}.")
        else:
            value = _checked(value, hint, f"{source}: {prefix + key!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as err:  # a config's own checks (__post_init__)
        raise BusdxError(f"{source}: {err}") from err


def merge(config_cls: type[T], path: str | Path | None, overrides: dict | None = None) -> T:
    """A config from three layers, later ones winning: ``config_cls``'s defaults, the JSON file
    at ``path`` (if any), then ``overrides``.

    ``overrides`` holds only the options given explicitly on the command line (with argparse,
    ``default=argparse.SUPPRESS`` leaves the others out of the namespace); a nested config's
    options go in a nested dict (``{"model": {"encoder": "tf_efficientnet_lite1"}}``), which
    changes only those options of the file's.
    """
    values = read(path) if path is not None else {}
    from_dict(config_cls, values, source=str(path))  # the file's own errors name the file
    return from_dict(config_cls, _overlay(values, overrides or {}), source="command line")


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = as_json(value)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _overlay(out[key], value)
        out[key] = value
    return out


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type: JSON lists become tuples where the field is a tuple;
    a number where a string is expected (and the like) is an error naming the setting."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin in (str, list, dict) and isinstance(value, origin):
            return value
        if origin is Any:
            return value
    raise BusdxError(f"{where} must be {_type_name(hint)}, not {value!r}")


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))
