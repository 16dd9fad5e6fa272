"""Errors whose message is meant for the user: the CLI prints it without a traceback."""


class BusdxError(Exception):
    """A failure the user can act on (bad input, missing data or model)."""
