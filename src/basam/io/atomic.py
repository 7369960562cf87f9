"""Atomic writing: readers see a file's old content or the complete new one, never a part.

A file is written to a hidden temp file in the same directory (``.<name>.<random>.tmp``),
flushed and fsynced, then ``os.replace``\\ d onto its name, and the directory entry is synced.
:func:`_stage` and :func:`_commit` are the two halves; :func:`atomic_write_all` stages several
files and commits them together (all or nothing: :func:`basam.io.save_masks`, the reports of
``basam evaluate``). :func:`check_writable_dir` checks an output folder before any work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, List, Sequence, Tuple

from basam.errors import InputError

from ._messages import _one_line, _show

__all__ = ["atomic_write", "atomic_write_all", "canonical_path", "check_writable_dir", "fsync_dir", "os_error_text"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stage(path: Path, write_fn: Callable[[BinaryIO], Any]) -> Path:
    """Write via ``write_fn`` to a synced temp file next to ``path``; return the temp path.

    On any exception the temp file is removed and the exception propagates (OSError from the
    file system becomes InputError). ``path`` itself is not touched.
    """
    where = f"cannot write {_show(path)}"
    directory = path.parent
    if path.is_dir():
        raise InputError(f"{where}: is a directory")
    if not directory.is_dir():
        raise InputError(f"{where}: directory {_show(directory)} does not exist")
    try:
        # Same directory, so os.replace is a rename on one file system (atomic); the leading
        # dot hides the temp file from globbing such as `*.png`.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise InputError(f"{where}: {_one_line(e)}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_current_umask()
            os.chmod(tmp, mode)
        except OSError:
            pass
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"{where}: {_one_line(e)}") from e
        raise
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    """Atomically move the staged ``tmp`` onto ``path`` and sync the directory entry."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise InputError(f"cannot write {_show(path)}: {_one_line(e)}") from e
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename into it is durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically: readers see the old content or the complete new one.

    ``write_fn(f)`` is called with a binary file object opened on a temp file in the same
    directory (named ``.<name>.<random>.tmp``). The temp file is flushed and fsynced, then
    ``os.replace``\\ d onto ``path``. If anything raises, the temp file is removed and ``path``
    is left as it was (absent, or byte-identical).

    Args:
        path: destination file; its directory must exist.
        write_fn: writes the whole content to the given file object.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: the destination is a directory, its directory is missing, or the file
            system refuses the write (permission, disk full...). Other exceptions raised by
            ``write_fn`` propagate unchanged.
    """
    p = Path(os.fsdecode(path))
    tmp = _stage(p, write_fn)
    _commit(tmp, p)
    return p


def atomic_write_all(files: Sequence[Tuple[str | os.PathLike[str], Callable[[BinaryIO], Any]]]) -> List[Path]:
    """Write several files atomically, all or nothing.

    Every file is first staged (written and fsynced to a temp file next to it, as
    :func:`atomic_write` does); only when all succeeded are they renamed into place. A failure while
    staging leaves every destination as it was; a rename that fails removes the files renamed
    before it (a rename failing after a successful one is rare: same directory, same file system).

    Args:
        files: ``(destination, write_fn)`` pairs, destinations distinct.

    Returns:
        The destinations as :class:`~pathlib.Path`, in order.

    Raises:
        InputError: as :func:`atomic_write`, for the first file that fails.
    """
    targets = [Path(os.fsdecode(p)) for p, _ in files]
    staged: List[Path] = []
    try:
        for target, (_, write_fn) in zip(targets, files):
            staged.append(_stage(target, write_fn))
    except BaseException:
        for tmp in staged:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise

    committed: List[Path] = []
    try:
        for tmp, target in zip(staged, targets):
            _commit(tmp, target)
            committed.append(target)
    except BaseException:
        for target in committed:
            try:
                target.unlink()
            except OSError:
                pass
        for tmp in staged[len(committed) + 1 :]:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise
    return targets


def check_writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Check, before any work, that ``path`` is a folder that exists or can be created, writable.

    Nothing is created. Root passes the permission test everywhere (``os.access``); a read-only
    file system or a full disk is then reported by the writers themselves, also in one line.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``path`` (or a folder on the way to it) is a file, or the nearest existing
            folder is not writable.
    """
    p = Path(os.fsdecode(path))
    probe = p
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            raise InputError(f"{what} {_show(p)}: {_show(probe)} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == p:
            raise InputError(f"{what} {_show(p)}: is a file, not a folder")
        raise InputError(f"{what} {_show(p)}: {_show(probe)} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what} {_show(p)}: folder {_show(probe)} is not writable")
    return p


def os_error_text(e: OSError) -> str:
    """An OSError's reason without its ``[Errno N]`` and file name (the caller names the file)."""
    return e.strerror or _one_line(e)


def canonical_path(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute, with ``.``/``..`` and every symbolic link above its last component
    resolved; the last component is kept as written.

    So ``data/DUTS``, ``./data/DUTS/`` and ``/home/me/data/DUTS`` are one path, as is the same
    folder reached through a linked parent; a link *named* otherwise (``DUTS -> other``) stays
    itself, because datasets take their names from that last component.
    """
    p = Path(os.path.abspath(os.path.expanduser(os.fsdecode(path))))
    if not p.name:  # the root
        return p
    return p.parent.resolve() / p.name
