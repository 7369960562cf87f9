"""Download and cache the official SAM-family checkpoints.

Checkpoints live in ``cache_dir() / "checkpoints"``, where :func:`cache_dir` is ``$BASAM_HOME``
if set, else ``~/.cache/basam``. Each official file has its URL and SHA-256 pinned on its
:class:`~basam.models.registry.ModelSpec` (``spec.checkpoint``); ``$BASAM_HUB_URL`` replaces the
download base (mirrors, tests). A download is streamed through :func:`basam.io.atomic_write`
(a hidden temp file next to its final name, hashed while it streams) and only renamed onto the
final name once the hash matches. One process downloads a file at a time (a lock file beside it);
temp files that a killed download left behind are removed by the next one. A file that is
already cached is verified once; the result is remembered in a small ``<file>.sha256`` sidecar
keyed on the file's size and modification time, so later calls cost a ``stat`` instead of
hashing gigabytes again.

Every failure raises :class:`basam.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from basam.errors import CheckpointError, InputError
from basam.io.atomic import atomic_write

__all__ = [
    "CheckpointInfo",
    "OFFICIAL_CHECKPOINTS",
    "official_checkpoints",
    "cache_dir",
    "checkpoints_dir",
    "download_checkpoint",
    "sha256_file",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """Where an official checkpoint file comes from and what it must hash to.

    ``sha256`` is the lowercase hex SHA-256 of the whole file, or ``None`` where no published
    value is known (SAM 2: the download is then accepted unverified, with a warning that prints the
    hash it got, and that hash is the reference the cached file is checked against afterwards:
    trust on first use). ``size_bytes`` is the published size, or ``None``. ``source_page`` is the
    human-readable page that documents the checkpoint.
    """

    filename: str
    url: str
    sha256: str | None
    size_bytes: int | None
    source_page: str


def official_checkpoints() -> dict[str, CheckpointInfo]:
    """{registry name: its official checkpoint}, from the model registry (each ModelSpec carries its own)."""
    from .models.registry import MODEL_SPECS  # imports torch: only when a download is asked for

    return {name: spec.checkpoint for name, spec in MODEL_SPECS.items() if spec.checkpoint is not None}


def __getattr__(name: str):
    if name == "OFFICIAL_CHECKPOINTS":  # the table, as a read-only view derived from the registry
        return official_checkpoints()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: environment variable: a base URL that replaces every official download location (a mirror,
#: an air-gapped file server, tests); the file name is appended: ``$BASAM_HUB_URL/<filename>``
HUB_URL_ENV = "BASAM_HUB_URL"

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole download
_USER_AGENT = "basam-checkpoint-downloader/0.1 (+python-urllib)"
_SIDECAR_SUFFIX = ".sha256"


def cache_dir() -> Path:
    """``$BASAM_HOME`` if set (and non-empty), else ``~/.cache/basam``; read at call time."""
    home = os.environ.get("BASAM_HOME")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".cache" / "basam"


def checkpoints_dir() -> Path:
    """Where downloaded checkpoint files live: ``cache_dir() / "checkpoints"``."""
    return cache_dir() / "checkpoints"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The lowercase hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download_checkpoint(
    name: str,
    *,
    progress: bool = True,
    force: bool = False,
    info: CheckpointInfo | None = None,
) -> Path:
    """Return the local path of checkpoint ``name``, downloading and verifying it if needed.

    ``name`` is a key of :data:`OFFICIAL_CHECKPOINTS`; ``info`` replaces that table entry (for
    mirrors and tests), in which case ``name`` is only used in messages. A cached file whose
    hash matches the pinned one is returned without touching the network; a cached file whose
    hash differs is deleted and downloaded again. ``force=True`` always downloads again (the old
    file stays until the new one is verified). ``progress=False`` hides the progress bar and the
    "downloading" line. ``$BASAM_HUB_URL`` (if set) replaces the base URL of every download.
    """
    entry = info if info is not None else official_checkpoints().get(name)
    if entry is None:
        known = ", ".join(sorted(official_checkpoints()))
        raise CheckpointError(f"unknown checkpoint {name!r}; known names: {known}")
    base = os.environ.get(HUB_URL_ENV, "").strip()
    if base:
        entry = replace(entry, url=base.rstrip("/") + "/" + entry.filename)

    directory = checkpoints_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create the checkpoint cache directory {directory} ({_reason(e)}); "
            "set BASAM_HOME to a writable directory"
        ) from None
    dest = directory / entry.filename

    if dest.is_file() and not force and _cached_file_ok(dest, entry):
        return dest
    with _download_lock(dest):
        # Another process may have finished the download while this one waited for the lock.
        if dest.is_file() and not force:
            if _cached_file_ok(dest, entry):
                return dest
            reference = "pinned SHA-256" if entry.sha256 is not None else "SHA-256 recorded when it was downloaded"
            _warn(f"warning: cached {dest} does not match the {reference} of {name}; deleting it and downloading it again")
            _remove_quietly(dest)
            _remove_quietly(_sidecar(dest))
        _remove_stale_partials(dest)
        # force: the old file stays in place until the new one has been verified and renamed onto it
        return _download(name, entry, dest, progress=progress)


@contextmanager
def _download_lock(dest: Path):
    """Hold ``<file>.lock`` beside ``dest`` (POSIX ``flock``; released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    lock_path = dest.with_name(dest.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointError(f"cannot write to the checkpoint cache directory {dest.parent} ({_reason(e)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _warn(f"waiting for another process that is downloading {dest.name} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remove_stale_partials(dest: Path) -> None:
    """Delete temp files of earlier downloads of ``dest`` that were killed before they could clean
    up (SIGKILL, power loss). Called with the download lock held, so none of them is in use."""
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        if stale.name.endswith((".tmp", ".part")) and stale.is_file():
            _remove_quietly(stale)


# --------------------------------------------------------------------------------------------
# cached-file verification


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _sidecar_record(path: Path) -> dict | None:
    """The sidecar's record for ``path`` ({sha256, size, mtime_ns, file}), or None if absent or unreadable."""
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None


def _describes(record: dict | None, st: os.stat_result) -> bool:
    """Whether ``record`` was made for the file as it is now (same size and modification time)."""
    return record is not None and record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns


def _known_sha256(path: Path) -> str:
    """The file's SHA-256, from its sidecar when that still describes the file, else computed
    (and then recorded in the sidecar)."""
    record = _sidecar_record(path)
    if _describes(record, path.stat()):
        return record["sha256"]
    digest = sha256_file(path)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    """Remember ``digest`` for ``path`` at its current size/mtime; best effort, atomic."""
    try:
        st = path.stat()
        text = json.dumps(
            {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "file": path.name}
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".sidecar.part", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, _sidecar(path))
        except BaseException:
            _remove_quietly(Path(tmp))
            raise
    except OSError:
        pass  # a read-only cache still works; it is just verified again next time


def _cached_file_ok(path: Path, entry: CheckpointInfo) -> bool:
    try:
        size = path.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            return False
        if entry.sha256 is None:
            # No published hash: trust on first use. The hash recorded when the file was downloaded
            # (or first found in the cache) is the reference, so a file that changed since is caught.
            record = _sidecar_record(path)
            if record is None:  # first seen (placed by hand): its hash becomes the reference
                _known_sha256(path)
                return True
            if _describes(record, path.stat()):
                return True
            if sha256_file(path) != record["sha256"]:
                return False  # the sidecar keeps the reference for the caller's second look
            _write_sidecar(path, record["sha256"])  # touched, not changed: remember its new mtime
            return True
        return _known_sha256(path) == entry.sha256
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# downloading


def _open_url(url: str, timeout: float) -> http.client.HTTPResponse:
    """Open ``url`` for streaming (redirects are followed); a seam for tests."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URLs come from the table)


def _download(name: str, entry: CheckpointInfo, dest: Path, *, progress: bool) -> Path:
    directory = dest.parent

    def network_error(reason: str) -> CheckpointError:
        return CheckpointError(
            f"could not download {entry.filename} from {entry.url} ({reason}); "
            f"download it by hand from {entry.url} and pass it with --checkpoint PATH (CLI) "
            f"or checkpoint=PATH (Python), or place it in {directory}"
        )

    result: dict = {}

    def fetch(out: BinaryIO) -> None:
        # Runs inside atomic_write: any exception removes the temp file and leaves dest as it was.
        try:
            response = _open_url(entry.url, _TIMEOUT_S)
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}".strip()
            e.close()
            raise network_error(reason) from None
        except urllib.error.URLError as e:
            raise network_error(_reason(e.reason)) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise network_error(_reason(e)) from None
        with response:
            expected_total = _content_length(response)
            if progress:
                size = expected_total if expected_total is not None else entry.size_bytes
                size_text = f" ({size / 1e6:.0f} MB)" if size else ""
                _warn(f"downloading {entry.filename}{size_text} from {entry.url} to {directory}")
            received, digest = _stream(
                response, out, total=expected_total, label=entry.filename, where=directory,
                show_bar=progress and _isatty(sys.stderr), network_error=network_error,
            )
        if expected_total is not None and received != expected_total:
            raise network_error(f"the connection closed after {received} of {expected_total} bytes")
        if entry.sha256 is not None:
            if digest != entry.sha256:
                raise CheckpointError(
                    f"checksum mismatch for {entry.filename}: expected {entry.sha256}, "
                    f"got {digest}; the download was discarded"
                )
        elif entry.size_bytes is not None and received != entry.size_bytes:
            raise CheckpointError(
                f"size mismatch for {entry.filename}: expected {entry.size_bytes} bytes, "
                f"got {received}; the download was discarded"
            )
        result["digest"] = digest

    try:
        atomic_write(dest, fetch)
    except InputError as e:  # the cache directory refused the temp file or the rename
        raise CheckpointError(f"cannot write to the checkpoint cache directory {directory} ({e})") from None
    digest = result["digest"]
    _write_sidecar(dest, digest)
    if entry.sha256 is None:
        _warn(
            f"warning: no published SHA-256 is pinned for {name} ({entry.filename}); "
            f"the download is UNVERIFIED, its SHA-256 is {digest}"
        )
    return dest


def _stream(response, out: BinaryIO, *, total, label, where, show_bar, network_error):
    """Copy ``response`` into ``out`` in chunks, hashing as it goes; returns (bytes, sha256)."""
    digest = hashlib.sha256()
    received = 0
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
        disable=not show_bar, file=sys.stderr, leave=False,
    ) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise network_error(_reason(e)) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise CheckpointError(
                    f"could not write {label} into {where} ({_reason(e)})"
                ) from None
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received, digest.hexdigest()


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length") if response.headers is not None else None
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


# --------------------------------------------------------------------------------------------
# small helpers


def _reason(error: object) -> str:
    """A one-line description of an exception or a URLError reason."""
    if isinstance(error, TimeoutError):
        text = "timed out"
    elif isinstance(error, http.client.IncompleteRead):
        text = f"the connection closed after {len(error.partial)} bytes"
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
