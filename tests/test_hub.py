"""Tests for basam.hub: no internet; files are served from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from basam import hub
from basam.errors import BasamError, CheckpointError
from basam.hub import CheckpointInfo, OFFICIAL_CHECKPOINTS

PAYLOAD = bytes(range(256)) * 4099 + b"tail"  # ~1 MiB + change: several chunks, odd size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A local server with per-path behaviours and a request log."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                with outer._lock:
                    outer.requests.append(self.path)
                kind, body = outer.routes.get(self.path, ("missing", b""))
                if kind == "missing":
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "ok":
                    self.wfile.write(body)
                elif kind == "slow":  # the whole body, in 8 pieces 0.25 s apart
                    step = len(body) // 8 + 1
                    for i in range(0, len(body), step):
                        try:
                            self.wfile.write(body[i : i + step])
                            self.wfile.flush()
                        except OSError:  # the client was killed
                            return
                        time.sleep(0.25)
                elif kind == "truncated":  # promise len(body) bytes, send less, hang up
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # silence the test log
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, path: str, body: bytes, kind: str = "ok") -> str:
        self.routes[path] = (kind, body)
        return self.base + path

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = _Server()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def basam_home(tmp_path, monkeypatch):
    home = tmp_path / "basam-home"
    monkeypatch.setenv("BASAM_HOME", str(home))
    return home


def _info(url: str, sha256: str | None = PAYLOAD_SHA, filename: str = "model.pth", size=None):
    return CheckpointInfo(
        filename=filename, url=url, sha256=sha256, size_bytes=size, source_page="https://example.invalid/"
    )


def _leftovers(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".part", ".tmp")))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# cache_dir


def test_cache_dir_honours_basam_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BASAM_HOME", str(tmp_path / "one"))
    assert hub.cache_dir() == tmp_path / "one"
    monkeypatch.setenv("BASAM_HOME", str(tmp_path / "two"))
    assert hub.cache_dir() == tmp_path / "two"
    assert hub.checkpoints_dir() == tmp_path / "two" / "checkpoints"


def test_cache_dir_falls_back_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("BASAM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.cache_dir() == tmp_path / "user" / ".cache" / "basam"
    monkeypatch.setenv("BASAM_HOME", "")  # empty counts as unset
    assert hub.cache_dir() == tmp_path / "user" / ".cache" / "basam"


# --------------------------------------------------------------------------------------------
# the official table


def test_official_table_entries_are_well_formed():
    expected = {
        "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam",
        "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny",
        *(f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("tiny", "small", "base_plus", "large")),
    }
    assert set(OFFICIAL_CHECKPOINTS) == expected
    for name, info in OFFICIAL_CHECKPOINTS.items():
        url = urlparse(info.url)
        assert url.scheme == "https", name
        assert url.netloc, name
        assert info.filename == url.path.rsplit("/", 1)[-1], name
        assert info.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", info.sha256), name
        assert info.size_bytes is None or (isinstance(info.size_bytes, int) and info.size_bytes > 0), name
        assert info.source_page.startswith("https://"), name


def test_official_table_has_every_hash_pinned_and_distinct():
    # Every SAM 1 file has a published SHA-256 (see the sources in the registry); none may be lost.
    # SAM 2 publishes none: those (and only those) are trust-on-first-use.
    unpinned = {name for name, info in OFFICIAL_CHECKPOINTS.items() if info.sha256 is None}
    assert unpinned == {name for name in OFFICIAL_CHECKPOINTS if name.startswith(("sam2_", "sam2.1_"))}
    hashes = [info.sha256 for name, info in OFFICIAL_CHECKPOINTS.items() if name not in unpinned]
    assert len(hashes) == 8 and len(set(hashes)) == len(hashes)
    assert OFFICIAL_CHECKPOINTS["sam_vit_b"].sha256 == (
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    )
    assert OFFICIAL_CHECKPOINTS["sam_vit_b"].filename == "sam_vit_b_01ec64.pth"


def test_checkpoint_info_is_frozen():
    info = OFFICIAL_CHECKPOINTS["sam_vit_b"]
    with pytest.raises(Exception):
        info.url = "https://evil.invalid/x.pth"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# downloads


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert hub.sha256_file(path) == PAYLOAD_SHA


def test_download_lands_in_cache_with_right_bytes(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    path = hub.download_checkpoint("test", progress=False, info=_info(url))
    assert path == basam_home / "checkpoints" / "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(path.parent) == []
    assert server.count("/m/model.pth") == 1
    # the verification is remembered next to the file
    assert (path.parent / "model.pth.sha256").read_text().count(PAYLOAD_SHA) == 1


def test_second_call_uses_cache_without_network_or_rehash(server, monkeypatch):
    url = server.serve("/m/model.pth", PAYLOAD)
    first = hub.download_checkpoint("test", progress=False, info=_info(url))

    def no_hashing(path):
        raise AssertionError("a verified cached file must not be hashed again")

    monkeypatch.setattr(hub, "sha256_file", no_hashing)
    second = hub.download_checkpoint("test", progress=False, info=_info(url))
    assert second == first
    assert server.count("/m/model.pth") == 1


def test_manually_placed_file_is_verified_once_and_not_downloaded(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    directory = basam_home / "checkpoints"
    directory.mkdir(parents=True)
    (directory / "model.pth").write_bytes(PAYLOAD)
    path = hub.download_checkpoint("test", progress=False, info=_info(url))
    assert path.read_bytes() == PAYLOAD
    assert server.count("/m/model.pth") == 0
    assert (directory / "model.pth.sha256").exists()


def test_force_downloads_again(server):
    url = server.serve("/m/model.pth", PAYLOAD)
    hub.download_checkpoint("test", progress=False, info=_info(url))
    hub.download_checkpoint("test", progress=False, force=True, info=_info(url))
    assert server.count("/m/model.pth") == 2


def test_checksum_mismatch_discards_download(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as excinfo:
        hub.download_checkpoint("test", progress=False, info=_info(url, sha256=wrong))
    message = str(excinfo.value)
    assert "checksum mismatch for model.pth" in message
    assert wrong in message and PAYLOAD_SHA in message
    assert "\n" not in message
    directory = basam_home / "checkpoints"
    assert not (directory / "model.pth").exists()
    assert _leftovers(directory) == []


def test_http_404_gives_manual_download_advice(server, basam_home):
    url = server.base + "/nowhere/model.pth"
    with pytest.raises(CheckpointError) as excinfo:
        hub.download_checkpoint("test", progress=False, info=_info(url))
    message = str(excinfo.value)
    assert url in message
    assert "404" in message
    assert "--checkpoint" in message and "checkpoint=PATH" in message
    assert str(basam_home / "checkpoints") in message
    assert "\n" not in message
    assert server.count("/nowhere/model.pth") == 1
    assert not (basam_home / "checkpoints" / "model.pth").exists()
    assert _leftovers(basam_home / "checkpoints") == []


def test_connection_refused_gives_manual_download_advice(basam_home):
    url = f"http://127.0.0.1:{_free_port()}/model.pth"
    with pytest.raises(CheckpointError) as excinfo:
        hub.download_checkpoint("test", progress=False, info=_info(url))
    message = str(excinfo.value)
    assert message.startswith(f"could not download model.pth from {url}")
    assert "download it by hand" in message and "--checkpoint PATH" in message
    assert "\n" not in message
    assert _leftovers(basam_home / "checkpoints") == []
    assert not (basam_home / "checkpoints" / "model.pth").exists()


def test_truncated_download_is_an_error_and_leaves_nothing(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD, kind="truncated")
    with pytest.raises(CheckpointError) as excinfo:
        hub.download_checkpoint("test", progress=False, info=_info(url))
    assert f"of {len(PAYLOAD)} bytes" in str(excinfo.value)
    assert server.count("/m/model.pth") == 1
    directory = basam_home / "checkpoints"
    assert not (directory / "model.pth").exists()
    assert _leftovers(directory) == []


def test_corrupted_cached_file_is_detected_and_replaced(server, basam_home, capsys):
    url = server.serve("/m/model.pth", PAYLOAD)
    directory = basam_home / "checkpoints"
    directory.mkdir(parents=True)
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF  # same size, one flipped byte
    (directory / "model.pth").write_bytes(bytes(corrupted))
    path = hub.download_checkpoint("test", progress=False, info=_info(url))
    assert path.read_bytes() == PAYLOAD
    assert server.count("/m/model.pth") == 1
    assert "does not match the pinned SHA-256" in capsys.readouterr().err


def test_file_changed_after_verification_is_reverified(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    path = hub.download_checkpoint("test", progress=False, info=_info(url))
    # Corrupt the cached file in place; the stale sidecar must not vouch for it.
    corrupted = bytearray(PAYLOAD)
    corrupted[-1] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = hub.download_checkpoint("test", progress=False, info=_info(url))
    assert again.read_bytes() == PAYLOAD
    assert server.count("/m/model.pth") == 2


def test_unpinned_download_prints_its_sha256_as_unverified(server, basam_home, capsys):
    url = server.serve("/m/model.pth", PAYLOAD)
    path = hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    assert path.read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert "UNVERIFIED" in err and PAYLOAD_SHA in err
    # a later call uses the cached file
    hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    assert server.count("/m/model.pth") == 1


def test_unpinned_file_is_checked_against_the_hash_of_its_first_download(server, basam_home, capsys):
    # trust on first use: a cached unpinned file that changed since it was downloaded is replaced
    url = server.serve("/m/model.pth", PAYLOAD)
    path = hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    changed = bytearray(PAYLOAD)
    changed[7] ^= 0xFF  # same size, one flipped byte, a later mtime
    path.write_bytes(bytes(changed))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    capsys.readouterr()
    again = hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    assert again.read_bytes() == PAYLOAD and server.count("/m/model.pth") == 2
    assert "does not match the SHA-256 recorded when it was downloaded" in capsys.readouterr().err
    # an unchanged file that was only touched is re-hashed, found equal, and kept
    st = again.stat()
    os.utime(again, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    assert server.count("/m/model.pth") == 2


def test_unpinned_file_placed_by_hand_is_accepted_and_recorded(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    directory = basam_home / "checkpoints"
    directory.mkdir(parents=True)
    (directory / "model.pth").write_bytes(PAYLOAD)
    hub.download_checkpoint("test", progress=False, info=_info(url, sha256=None))
    assert server.count("/m/model.pth") == 0
    assert PAYLOAD_SHA in (directory / "model.pth.sha256").read_text()


def test_unpinned_size_mismatch_is_rejected(server, basam_home):
    url = server.serve("/m/model.pth", PAYLOAD)
    info = _info(url, sha256=None, size=len(PAYLOAD) + 1)
    with pytest.raises(CheckpointError, match="size mismatch"):
        hub.download_checkpoint("test", progress=False, info=info)
    assert not (basam_home / "checkpoints" / "model.pth").exists()
    assert _leftovers(basam_home / "checkpoints") == []


def test_keyboard_interrupt_leaves_no_part_file(server, basam_home, monkeypatch):
    url = server.serve("/m/model.pth", PAYLOAD)
    real_open = hub._open_url

    class Interrupting:
        def __init__(self, response):
            self._response = response
            self.headers = response.headers
            self.reads = 0

        def read(self, n):
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self._response.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._response.close()
            return False

    monkeypatch.setattr(hub, "_open_url", lambda u, t: Interrupting(real_open(u, t)))
    with pytest.raises(KeyboardInterrupt):
        hub.download_checkpoint("test", progress=False, info=_info(url))
    directory = basam_home / "checkpoints"
    assert _leftovers(directory) == []
    assert not (directory / "model.pth").exists()


def test_unknown_name_lists_known_names():
    with pytest.raises(CheckpointError) as excinfo:
        hub.download_checkpoint("sam_vit_z", progress=False)
    message = str(excinfo.value)
    assert "sam_vit_z" in message
    for name in OFFICIAL_CHECKPOINTS:
        assert name in message
    assert isinstance(excinfo.value, BasamError)


# --------------------------------------------------------------------------------------------
# killed downloads, two processes at once, mirrors ($BASAM_HUB_URL)

_CHILD = """
import sys
from basam import hub
from basam.hub import CheckpointInfo
info = CheckpointInfo(filename="model.pth", url=sys.argv[1], sha256=sys.argv[2], size_bytes=None, source_page="x")
print(hub.download_checkpoint("test", progress=False, info=info))
"""


BIG = PAYLOAD * 6  # several 1 MiB reads, so the temp file fills while the server is slow
BIG_SHA = hashlib.sha256(BIG).hexdigest()


def _child(url: str, home: Path) -> subprocess.Popen:
    env = dict(os.environ, BASAM_HOME=str(home))
    return subprocess.Popen([sys.executable, "-c", _CHILD, url, BIG_SHA], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _partials(directory: Path) -> list[Path]:
    return [p for p in directory.glob(".model.pth.*") if p.stat().st_size > 0] if directory.exists() else []


def test_download_killed_by_sigkill_leaves_a_partial_that_the_next_run_removes(server, basam_home):
    url = server.serve("/m/model.pth", BIG, kind="slow")
    directory = basam_home / "checkpoints"
    child = _child(url, basam_home)
    try:
        _wait_for(lambda: _partials(directory))  # bytes are arriving in the temp file
    finally:
        child.kill()  # SIGKILL: no cleanup code runs
        child.wait(timeout=30)
    assert _leftovers(directory), "a SIGKILLed download should leave its temp file (that is the case to handle)"
    assert not (directory / "model.pth").exists()
    server.serve("/m/model.pth", BIG)
    path = hub.download_checkpoint("test", progress=False, info=_info(url, BIG_SHA))
    assert path.read_bytes() == BIG
    assert _leftovers(directory) == []


def test_two_processes_download_a_file_once(server, basam_home, capsys):
    url = server.serve("/m/model.pth", BIG, kind="slow")
    directory = basam_home / "checkpoints"
    child = _child(url, basam_home)
    try:
        _wait_for(lambda: _partials(directory))  # the child holds the lock and is downloading
        path = hub.download_checkpoint("test", progress=False, info=_info(url, BIG_SHA))  # waits, then finds it cached
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert Path(out.strip()) == path and path.read_bytes() == BIG
    assert server.count("/m/model.pth") == 1
    assert "waiting for another process" in capsys.readouterr().err
    assert _leftovers(directory) == []


def test_basam_hub_url_replaces_the_download_base(server, basam_home, monkeypatch):
    server.serve("/mirror/model.pth", PAYLOAD)
    monkeypatch.setenv("BASAM_HUB_URL", server.base + "/mirror/")
    dead = f"http://127.0.0.1:{_free_port()}/official/model.pth"
    path = hub.download_checkpoint("test", progress=False, info=_info(dead))
    assert path.read_bytes() == PAYLOAD and server.count("/mirror/model.pth") == 1
