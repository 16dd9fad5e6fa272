"""Errors whose message is meant for the user: the CLI prints it without a traceback."""


class BusdxError(Exception):
    """A failure the user can act on (bad input, missing data or model)."""


class SplitError(BusdxError, ValueError):
    """A split that cannot be made (a fold out of range, say): the user's choice of folds."""
