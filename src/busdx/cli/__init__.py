"""The `busdx` command line: one entry point (busdx.cli.main), one module per task."""

from busdx.errors import BusdxError


def name_value_pairs(texts: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise BusdxError(f"{flag} takes NAME=VALUE, not {text!r}")
        pairs[name] = value
    return pairs


def deprecated(parser, old: str, new: str, **kwargs) -> None:
    """Keep the old spelling ``old`` of the option ``new`` for one release: it still works,
    says what to type instead, and is not shown in --help."""
    import argparse
    import logging

    append = kwargs.pop("append", False)

    class _Alias(argparse.Action):
        def __call__(self, _parser, namespace, values, option_string=None):
            logging.getLogger("busdx").warning("%s is deprecated and will go: use %s",
                                               option_string, new)
            if append:
                values = [*(getattr(namespace, self.dest, None) or []), values]
            setattr(namespace, self.dest, True if self.nargs == 0 else values)

    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=kwargs.pop("dest", dest), action=_Alias, help=argparse.SUPPRESS,
                        **kwargs)


def writable_release(path: str, default: str):
    """The staging folder a command writes graphs or settings into (never models/); the
    default one starts as a copy of the bundled release."""
    from pathlib import Path

    from busdx.evaluation.model_card import staging
    from busdx.inference.models import default_models_dir

    seed = default_models_dir() if Path(path) == Path(default) else None
    return staging(path, seed=seed)


def config_with_file(build, args, parser, path: str | None):
    """The training config ``build(namespace)`` makes from the command line, on top of the
    recipe file ``path`` (``--config``): an option left at its default takes the file's value,
    an option given on the command line wins (one given equal to its default counts as not
    given). Without a file: the command line's config."""
    import argparse

    from busdx.training.config import as_json, merge

    config = build(args)
    if not path:
        return config
    defaults = build(argparse.Namespace(**{**vars(args), **{
        a.dest: a.default for a in parser._actions if a.dest in vars(args)}}))
    given = _changed(as_json(config), as_json(defaults))
    return merge(type(config), path, given)


def _changed(now: dict, default: dict) -> dict:
    out = {}
    for key, value in now.items():
        if isinstance(value, dict) and isinstance(default.get(key), dict):
            nested = _changed(value, default[key])
            if nested:
                out[key] = nested
        elif value != default.get(key):
            out[key] = value
    return out
