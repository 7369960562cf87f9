"""Errors that carry a one-line, user-facing message.

The CLI turns any :class:`BasamError` into ``basam: error: <message>`` on stderr and exit code 2,
without a traceback. Library users can catch the specific subclasses.
"""


class BasamError(Exception):
    """Base class: the message is one line that names the problem."""


class InputError(BasamError, ValueError):
    """Bad user input: an unreadable image, a prompt outside the image, a bad argument."""


class CheckpointError(BasamError):
    """A checkpoint that cannot be used: missing, truncated, of another model, or not downloadable."""
