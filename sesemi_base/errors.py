"""The error every tool reports as one line on stderr with exit code 2."""


class UsageError(Exception):
    """Bad flags or bad input data: reported as one line on stderr, exit code 2."""
