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
