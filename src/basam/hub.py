"""Download and cache the official SAM-family checkpoints.

Checkpoints live in ``cache_dir() / "checkpoints"``, where :func:`cache_dir` is ``$BASAM_HOME``
if set, else ``~/.cache/basam``. Each official file has its SHA-256 pinned in
:data:`OFFICIAL_CHECKPOINTS`; a download is streamed into a hidden ``.part`` file next to its
final name, hashed while it streams, and only moved onto the final name (atomically, with
``os.replace``) once the hash matches. A file that is already cached is verified once; the
result is remembered in a small ``<file>.sha256`` sidecar keyed on the file's size and
modification time, so later calls cost a ``stat`` instead of hashing gigabytes again.

Every failure raises :class:`basam.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from basam.errors import CheckpointError

__all__ = [
    "CheckpointInfo",
    "OFFICIAL_CHECKPOINTS",
    "cache_dir",
    "checkpoints_dir",
    "download_checkpoint",
    "sha256_file",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """Where an official checkpoint file comes from and what it must hash to.

    ``sha256`` is the lowercase hex SHA-256 of the whole file, or ``None`` where no published
    value is known (the download is then accepted unverified, with a warning that prints the
    hash it got). ``size_bytes`` is the published size, or ``None``. ``source_page`` is the
    human-readable page that documents the checkpoint.
    """

    filename: str
    url: str
    sha256: str | None
    size_bytes: int | None
    source_page: str


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_HQ_BASE = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_HQ_PAGE = "https://github.com/SysCV/sam-hq#model-checkpoints"
_MOBILE_PAGE = "https://github.com/ChaoningZhang/MobileSAM"

# Pinned SHA-256 values, each with the public sources it was taken from (no value here was
# computed by us; each was found published and cross-checked against a second source).
OFFICIAL_CHECKPOINTS: dict[str, CheckpointInfo] = {
    "sam_vit_b": CheckpointInfo(
        filename="sam_vit_b_01ec64.pth",
        url=_SAM_BASE + "sam_vit_b_01ec64.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_b",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); same sha256 and size 375042383 in
        # the Hugging Face LFS pointer of huggingface.co/mashb1t/misc commit 78e1813
        # (sam_vit_b_01ec64.pth).
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375_042_383,
        source_page=_SAM_PAGE,
    ),
    "sam_vit_l": CheckpointInfo(
        filename="sam_vit_l_0b3195.pth",
        url=_SAM_BASE + "sam_vit_l_0b3195.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_l",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); same sha256 and size 1249524607 in
        # the LFS pointer of huggingface.co/mashb1t/misc commit 78e1813 (sam_vit_l_0b3195.pth).
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1_249_524_607,
        source_page=_SAM_PAGE,
    ),
    "sam_vit_h": CheckpointInfo(
        filename="sam_vit_h_4b8939.pth",
        url=_SAM_BASE + "sam_vit_h_4b8939.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_h",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); also
        # AlexanderBarabanov/geti-instant-learn lib/src/getiprompt/utils/constants.py
        # (MODEL_MAP[SAM]); same sha256 and size 2564550879 in the LFS pointer of
        # huggingface.co/mashb1t/misc commit 78e1813 (sam_vit_h_4b8939.pth).
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2_564_550_879,
        source_page=_SAM_PAGE,
    ),
    "mobile_sam": CheckpointInfo(
        filename="mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        # AlexanderBarabanov/geti-instant-learn lib/src/getiprompt/utils/constants.py
        # (MODEL_MAP[MOBILE_SAM], same GitHub weights/mobile_sam.pt URL); also
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_t");
        # same sha256 and size 40728226 in the LFS pointer of
        # huggingface.co/xingren23/comfyflow-models commit 8297c11 (sams/mobile_sam.pt).
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size_bytes=40_728_226,
        source_page=_MOBILE_PAGE,
    ),
    "sam_hq_vit_b": CheckpointInfo(
        filename="sam_hq_vit_b.pth",
        url=_HQ_BASE + "sam_hq_vit_b.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 8a94b5e ("Upload sam_hq_vit_b.pth",
        # size 379335069); same sha256 on huggingface.co/Uminosachi/sam-hq/blob/main/sam_hq_vit_b.pth
        # and in huggingface.co/xingren23/comfyflow-models commit 8297c11.
        sha256="14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57",
        size_bytes=379_335_069,
        source_page=_HQ_PAGE,
    ),
    "sam_hq_vit_l": CheckpointInfo(
        filename="sam_hq_vit_l.pth",
        url=_HQ_BASE + "sam_hq_vit_l.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 519b37f ("Upload sam_hq_vit_l.pth",
        # size 1254865805); same sha256 on huggingface.co/lkeab/hq-sam/blob/
        # 09b02a333b37772133eff3997bdba997867374b7/sam_hq_vit_l.pth (a later revision).
        sha256="e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343",
        size_bytes=1_254_865_805,
        source_page=_HQ_PAGE,
    ),
    "sam_hq_vit_h": CheckpointInfo(
        filename="sam_hq_vit_h.pth",
        url=_HQ_BASE + "sam_hq_vit_h.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 67ab824 ("Upload sam_hq_vit_h.pth",
        # size 2570940653); also AlexanderBarabanov/geti-instant-learn
        # lib/src/getiprompt/utils/constants.py (MODEL_MAP[SAM_HQ]) and the refiners conversion
        # recipe for lkeab/hq-sam sam_hq_vit_h.pth (expected_sha256).
        sha256="a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35",
        size_bytes=2_570_940_653,
        source_page=_HQ_PAGE,
    ),
    "sam_hq_vit_tiny": CheckpointInfo(
        filename="sam_hq_vit_tiny.pth",
        url=_HQ_BASE + "sam_hq_vit_tiny.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit a3a77cd ("Upload
        # sam_hq_vit_tiny.pth", size 42526881); also AlexanderBarabanov/geti-instant-learn
        # lib/src/getiprompt/utils/constants.py (MODEL_MAP[SAM_HQ_TINY]).
        sha256="0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
        size_bytes=42_526_881,
        source_page=_HQ_PAGE,
    ),
}

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
    hash differs is deleted and downloaded again. ``force=True`` always downloads again.
    ``progress=False`` hides the progress bar and the "downloading" line.
    """
    entry = info if info is not None else OFFICIAL_CHECKPOINTS.get(name)
    if entry is None:
        known = ", ".join(sorted(OFFICIAL_CHECKPOINTS))
        raise CheckpointError(f"unknown checkpoint {name!r}; known names: {known}")

    directory = checkpoints_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create the checkpoint cache directory {directory} ({_reason(e)}); "
            "set BASAM_HOME to a writable directory"
        ) from None
    dest = directory / entry.filename

    if dest.is_file() and not force:
        if _cached_file_ok(dest, entry):
            return dest
        _warn(
            f"warning: cached {dest} does not match the pinned SHA-256 of {name}; "
            "deleting it and downloading it again"
        )
        _remove_quietly(dest)
        _remove_quietly(_sidecar(dest))

    return _download(name, entry, dest, progress=progress)


# --------------------------------------------------------------------------------------------
# cached-file verification


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _known_sha256(path: Path) -> str:
    """The file's SHA-256, from its sidecar when that still describes the file, else computed
    (and then remembered in the sidecar)."""
    st = path.stat()
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if (
            isinstance(record, dict)
            and record.get("size") == st.st_size
            and record.get("mtime_ns") == st.st_mtime_ns
            and isinstance(record.get("sha256"), str)
        ):
            return record["sha256"]
    except (OSError, ValueError):
        pass
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
            return True  # nothing to verify against; it was accepted (with a warning) before
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

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=directory)
    except OSError as e:
        raise CheckpointError(f"cannot write to the checkpoint cache directory {directory} ({_reason(e)})") from None
    tmp = Path(tmp_name)

    try:
        out = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise

    try:
        with out:
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
            raise network_error(
                f"the connection closed after {received} of {expected_total} bytes"
            )
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
        os.replace(tmp, dest)
    except BaseException:  # includes KeyboardInterrupt: never leave a .part file behind
        _remove_quietly(tmp)
        raise

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
