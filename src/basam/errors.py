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


class BasamNote(UserWarning):
    """Something the user should know once (not an error): the CLI prints it as ``note: ...``."""


def one_line(text: object) -> str:
    """A message on one line (user-facing error messages are one line by contract; make sure of it)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def out_of_memory_errors() -> tuple:
    """The exception types that mean "out of memory" (torch's only if torch is already imported)."""
    import sys

    errors: list = [MemoryError]
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom, type):
        errors.append(oom)
    return tuple(errors)
