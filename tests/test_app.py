"""basam app: the server's endpoints (Starlette's TestClient), the command line, and a live server
on loopback under 8 concurrent clients. The page itself is tested in tests/test_app_browser.py."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="basam app needs the [app] extra (starlette)")
pytest.importorskip("uvicorn", reason="basam app needs the [app] extra (uvicorn)")
pytest.importorskip("multipart", reason="basam app needs the [app] extra (python-multipart)")
httpx = pytest.importorskip("httpx", reason="the app tests need httpx ([test] extra)")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import basam  # noqa: E402
from basam.app.server import create_app, estimate_memory  # noqa: E402
from basam.cli import main  # noqa: E402
from basam.io import read_image  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"  # 1080 x 720, in the repo
POINT = (540.0, 360.0)


# ----------------------------------------------------------------------------------------------
# helpers


def decode_png(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, name: str = "image.png"):
    return client.post("/api/images", files={"file": (name, data, "image/png")})


def wait_job(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["state"] in ("ready", "error"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def assert_json_error(response, status: int, *fragments: str) -> str:
    """A refusal: the status, a JSON body {"error": one line}, no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    message = response.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    assert "Traceback" not in response.text
    for f in fragments:
        assert f in message, (f, message)
    return message


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status (no psutil)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


@contextlib.contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# ----------------------------------------------------------------------------------------------
# fixtures: one app (basam_tiny, CPU) and one uploaded image for the module


@pytest.fixture(scope="module")
def app():
    return create_app(allowed_hosts=None, everything={"points_per_side": 4})


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client):
    r = upload(client, EXAMPLE.read_bytes(), "shapes.png")
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def reference():
    """The library's own answer for the same image and prompts (what the server must return)."""
    predictor = basam.Predictor(basam.load_model("basam_tiny"))
    predictor.set_image(read_image(EXAMPLE))
    return predictor


# ----------------------------------------------------------------------------------------------
# the page and the configuration


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="canvas"', "/static/app.js", "/static/app.css", 'id="candidates"', 'id="everything"'):
        assert needle in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/api/predict" in js.text
    assert client.get("/static/app.css").status_code == 200


def test_config_lists_the_offline_model_and_presets(client):
    cfg = client.get("/api/config").json()
    names = [m["name"] for m in cfg["models"]]
    assert cfg["default_model"] == "basam_tiny" and "basam_tiny" in names
    assert cfg["presets"] == ["vanilla", "nsf", "basam"]
    assert cfg["default_resolution"] == 256 and cfg["default_preset"] == "vanilla"
    tiny = next(m for m in cfg["models"] if m["name"] == "basam_tiny")
    assert tiny["everything"]["points_per_side"] == 4  # the override given to create_app


# ----------------------------------------------------------------------------------------------
# images


def test_upload_gives_an_id_and_the_decoded_image(client, image_id):
    again = upload(client, EXAMPLE.read_bytes(), "again.png").json()
    assert again["id"] == image_id, "the id is the pixels' hash: the same image keeps its encodings"
    assert (again["width"], again["height"]) == (1080, 720)
    png = client.get(again["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(png.content)).convert("RGB")), read_image(EXAMPLE))


def test_open_by_path_on_the_server(client, image_id, tmp_path):
    r = client.post("/api/images", json={"path": str(EXAMPLE)})
    assert r.status_code == 200 and r.json()["id"] == image_id and r.json()["name"] == "shapes.png"
    assert_json_error(client.post("/api/images", json={"path": str(tmp_path / "nope.png")}), 400, "no such file")
    assert_json_error(client.post("/api/images", json={"path": str(tmp_path)}), 400, "directory")
    assert_json_error(client.post("/api/images", json={"path": 5}), 400, "path")


def test_open_by_path_can_be_switched_off():
    with TestClient(create_app(allowed_hosts=None, allow_paths=False)) as c:
        assert_json_error(c.post("/api/images", json={"path": str(EXAMPLE)}), 403, "upload")
        assert c.get("/api/config").json()["allow_paths"] is False


@pytest.mark.parametrize("name, data, fragment", [
    ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"rubbish" * 20, "corrupt.png"),
    ("notes.txt", b"just some text, not an image\n", "notes.txt"),
    ("half.png", None, "half.png"),  # a real PNG cut in half
    ("empty.png", b"", "empty"),
])
def test_bad_uploads_are_one_line_400(client, name, data, fragment):
    if data is None:
        whole = EXAMPLE.read_bytes()
        data = whole[: len(whole) // 2]
    msg = assert_json_error(upload(client, data, name), 400, fragment)
    assert "basam-app-" not in msg, "the temp file's name must not leak into the message"
    assert client.get("/api/config").status_code == 200  # still serving


def test_upload_without_a_file_or_with_another_content_type(client):
    assert_json_error(client.post("/api/images", files={"other": ("a.png", b"x", "image/png")}), 400, "'file'")
    assert_json_error(client.post("/api/images", content=b"abc", headers={"content-type": "text/plain"}), 415)


# ----------------------------------------------------------------------------------------------
# encode and predict


def test_encode_then_predict_equals_the_library(client, image_id, reference):
    r = client.post("/api/encode", json={"image": image_id, "model": "basam_tiny", "resolution": 256, "preset": "vanilla"})
    assert r.status_code == 200
    if r.json()["state"] != "ready":
        assert wait_job(client, r.json()["job"])["state"] == "ready"
    assert client.post("/api/encode", json={"image": image_id}).json() == {"state": "ready"}  # cached

    prompts = [
        dict(points=[[*POINT, 1]]),
        dict(points=[[*POINT, 1], [100.0, 80.0, 0]]),
        dict(points=[], box=[300.0, 150.0, 800.0, 600.0]),
        dict(points=[[*POINT]], box=[300.0, 150.0, 800.0, 600.0]),  # label defaults to 1
    ]
    for prompt in prompts:
        r = client.post("/api/predict", json={"image": image_id, **prompt})
        assert r.status_code == 200, r.text
        d = r.json()
        pts = prompt["points"]
        coords = np.array([p[:2] for p in pts], dtype=float) if pts else None
        labels = np.array([p[2] if len(p) == 3 else 1 for p in pts]) if pts else None
        box = np.array(prompt["box"]) if prompt.get("box") else None
        masks, scores, _ = reference.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=True)
        assert len(d["masks"]) == 3 and (d["width"], d["height"]) == (1080, 720)
        for i in range(3):
            got = decode_png(d["masks"][i])
            assert got.shape == (720, 1080) and got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
            np.testing.assert_array_equal(got == 255, masks[i])
            assert d["areas"][i] == int(masks[i].sum())
        np.testing.assert_allclose(d["scores"], scores, atol=1e-4)
        assert d["best"] == int(np.argmax(d["scores"]))


def test_each_image_resolution_and_preset_is_encoded_once(app, client, image_id):
    stats = app.state.basam.stats

    def click(preset, x, resolution=320):
        r = client.post("/api/predict", json={"image": image_id, "resolution": resolution, "preset": preset,
                                              "points": [[x, 300.0, 1]]})
        assert r.status_code == 200, r.text

    start = stats["encodes"]
    click("nsf", 100.0)
    assert stats["encodes"] == start + 1
    click("nsf", 200.0)
    click("nsf", 300.0)
    assert stats["encodes"] == start + 1, "a click on an encoded image is one decoder call"
    click("basam", 300.0)
    assert stats["encodes"] == start + 2
    click("nsf", 400.0)
    click("basam", 400.0)
    assert stats["encodes"] == start + 2
    click("nsf", 400.0, resolution=384)
    assert stats["encodes"] == start + 3


def test_presets_change_the_encoding_and_are_restored(client, image_id, reference):
    """A basam request must not leave the shared model in basam mode for a vanilla one."""
    body = {"image": image_id, "points": [[*POINT, 1]]}
    basam_masks = client.post("/api/predict", json={**body, "preset": "basam", "resolution": 512}).json()["masks"]
    vanilla = client.post("/api/predict", json={**body, "preset": "vanilla", "resolution": 256}).json()
    masks, _, _ = reference.predict(point_coords=np.array([POINT]), point_labels=np.array([1]))
    np.testing.assert_array_equal(decode_png(vanilla["masks"][0]) == 255, masks[0])
    assert basam_masks != vanilla["masks"]


BAD_JSON = [
    # (endpoint, body or raw bytes, status, fragment in the message)
    ("/api/predict", b"not json", 400, "not valid JSON"),
    ("/api/predict", b"[1, 2]", 400, "JSON object"),
    ("/api/predict", {"image": "nope", "points": [[1, 1, 1]]}, 404, "open the image again"),
    ("/api/predict", {"points": [[1, 1, 1]]}, 400, "'image'"),
    ("/api/predict", {"image": "@", "model": "sam_vit_z", "points": [[1, 1, 1]]}, 400, "not offered"),
    ("/api/predict", {"image": "@", "resolution": "abc", "points": [[1, 1, 1]]}, 400, "positive integer"),
    ("/api/predict", {"image": "@", "resolution": 10, "points": [[1, 1, 1]]}, 400, "at least 64"),
    ("/api/predict", {"image": "@", "resolution": 10**9, "points": [[1, 1, 1]]}, 400, "at most"),
    ("/api/predict", {"image": "@", "resolution": True, "points": [[1, 1, 1]]}, 400, "positive integer"),
    ("/api/predict", {"image": "@", "preset": "bogus", "points": [[1, 1, 1]]}, 400, "preset"),
    ("/api/predict", {"image": "@", "points": []}, 400, "no prompt"),
    ("/api/predict", {"image": "@"}, 400, "no prompt"),
    ("/api/predict", {"image": "@", "points": [[5000, 10, 1]]}, 400, "outside the 1080x720 image"),
    ("/api/predict", {"image": "@", "points": [[-1, 10, 1]]}, 400, "outside"),
    ("/api/predict", {"image": "@", "points": [[10, 10, 2]]}, 400, "label"),
    ("/api/predict", {"image": "@", "points": [[10, "x", 1]]}, 400, "finite number"),
    ("/api/predict", {"image": "@", "points": [[10]]}, 400, "[x, y]"),
    ("/api/predict", {"image": "@", "points": "10,10"}, 400, "list"),
    ("/api/predict", {"image": "@", "points": [[1, 1, 1]] * 65}, 400, "at most 64"),
    ("/api/predict", {"image": "@", "box": [10, 10, 10, 50]}, 400, "zero area"),
    ("/api/predict", {"image": "@", "box": [50, 10, 10, 50]}, 400, "x1 < x0"),
    ("/api/predict", {"image": "@", "box": [0, 0, 2000, 50]}, 400, "outside"),
    ("/api/predict", {"image": "@", "box": [1, 2, 3]}, 400, "[x0, y0, x1, y1]"),
    ("/api/encode", {"image": "@", "preset": 3}, 400, "preset"),
    ("/api/everything", {"image": "@", "points_per_side": 0}, 400, "points_per_side"),
    ("/api/everything", {"image": "@", "pred_iou_thresh": 2}, 400, "pred_iou_thresh"),
]


@pytest.mark.parametrize("endpoint, body, status, fragment", BAD_JSON)
def test_bad_requests_are_4xx_with_one_json_line(client, image_id, endpoint, body, status, fragment):
    if isinstance(body, bytes):
        r = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    else:
        if body.get("image") == "@":
            body = {**body, "image": image_id}
        r = client.post(endpoint, json=body)
    assert_json_error(r, status, fragment)


def test_unknown_routes_methods_and_content_types(client):
    assert_json_error(client.get("/api/nothing"), 404, "/api/nothing")
    assert_json_error(client.get("/api/predict"), 405)
    assert_json_error(client.get("/api/jobs/x999"), 404, "x999")
    assert_json_error(client.get("/api/images/0123"), 404)
    assert_json_error(client.post("/api/predict", content=b"{}", headers={"content-type": "text/plain"}), 415, "JSON")
    huge = b'{"image": "' + b"x" * (2 * 2**20) + b'"}'
    assert_json_error(client.post("/api/predict", content=huge, headers={"content-type": "application/json"}), 413)


def test_an_unexpected_failure_is_a_json_500_without_traceback(app, image_id, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(app.state.basam, "decode", broken)
    c = TestClient(app, raise_server_exceptions=False)  # as a browser sees it (no lifespan: app shared)
    msg = assert_json_error(c.post("/api/predict", json={"image": image_id, "points": [[*POINT, 1]]}), 500, "boom")
    assert "second line" in msg  # one line, all of it


def test_host_header_is_checked():
    with TestClient(create_app(), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/config").status_code == 200
        assert_json_error(c.get("/api/config", headers={"host": "attacker.example"}), 400, "attacker.example")
        assert c.get("/api/config", headers={"host": "localhost:7860"}).status_code == 200


# ----------------------------------------------------------------------------------------------
# memory limit


def test_memory_estimate_grows_with_resolution_and_image():
    from basam.models.registry import get_spec

    spec = get_spec("basam_tiny")
    a, b = estimate_memory(spec, 256, (720, 1080)), estimate_memory(spec, 2048, (720, 1080))
    assert a["total"] < b["total"] and b["encoder"] > 10 * a["encoder"] // 2
    big = estimate_memory(spec, 256, (10000, 10000))
    assert big["decoder"] > 100 * a["decoder"] // 2 and big["total"] == sum(v for k, v in big.items() if k != "total")


def test_too_large_for_the_memory_limit_is_refused_with_a_message():
    with TestClient(create_app(allowed_hosts=None, max_memory="300M")) as c:
        iid = upload(c, EXAMPLE.read_bytes()).json()["id"]
        ok = c.post("/api/encode", json={"image": iid, "resolution": 256})
        assert ok.status_code == 200
        assert_json_error(c.post("/api/encode", json={"image": iid, "resolution": 4096}), 413,
                          "4096 px", "--max-memory", "lower resolution")
        assert_json_error(c.post("/api/predict", json={"image": iid, "resolution": 4096, "points": [[1, 1, 1]]}), 413)
        assert_json_error(c.post("/api/everything", json={"image": iid, "resolution": 4096}), 413, "4096 px")
        # an image that cannot even be held and masked is refused from its header, before decoding
        big = io.BytesIO()
        Image.new("L", (9000, 9000)).save(big, format="PNG")
        assert_json_error(upload(c, big.getvalue(), "big.png"), 413, "9000x9000", "--max-memory")
        assert c.get("/api/config").status_code == 200
        assert c.post("/api/predict", json={"image": iid, "points": [[*POINT, 1]]}).status_code == 200


# ----------------------------------------------------------------------------------------------
# segment everything


def test_segment_everything_job(client, image_id):
    r = client.post("/api/everything", json={"image": image_id, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    assert r.status_code == 200, r.text
    j = wait_job(client, r.json()["job"])
    assert j["state"] == "ready", j
    res = j["result"]
    assert res["count"] == len(res["masks"]) >= 1
    overlay = decode_png(res["overlay"])
    assert overlay.shape == (720, 1080, 3)
    assert not np.array_equal(overlay, read_image(EXAMPLE)), "the masks are drawn over the image"
    assert all(m["area"] > 0 and len(m["bbox"]) == 4 for m in res["masks"])


# ----------------------------------------------------------------------------------------------
# the command line


def test_cli_help_and_registration(capsys):
    assert main(["app", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--max-memory" in out and "basam_tiny" in out


def test_cli_missing_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert main(["app"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[app]" in err and "pip install" in err and "starlette" in err


@pytest.mark.parametrize("argv, fragment", [
    (["app", "--port", "99999"], "port"),
    (["app", "--max-memory", "lots"], "memory"),
    (["app", "--model", "sam_vit_z"], "sam_vit_z"),
])
def test_cli_bad_arguments(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("basam: error:") and fragment in err and len(err.splitlines()) == 1


def test_cli_model_without_weights_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BASAM_HOME", str(tmp_path))  # an empty checkpoint cache, and offline
    assert main(["app", "--model", "sam_vit_b", "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sam_vit_b" in err and "--checkpoint" in err and "--download" in err


def test_cached_official_files_are_offered_offline(monkeypatch, tmp_path):
    from basam.hub import OFFICIAL_CHECKPOINTS

    monkeypatch.setenv("BASAM_HOME", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / OFFICIAL_CHECKPOINTS["mobile_sam"].filename).write_bytes(b"not loaded here")
    state = create_app(allowed_hosts=None).state.basam
    try:
        assert state.models == ["basam_tiny", "mobile_sam"]
        assert state.checkpoints["mobile_sam"].endswith(OFFICIAL_CHECKPOINTS["mobile_sam"].filename)
        assert state.stats["model_loads"] == 1, "only the default model is loaded up front"
    finally:
        state.close()


def test_cli_port_in_use_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot listen on 127.0.0.1" in err and len(err.splitlines()) == 1


def test_cli_serves_the_app(monkeypatch, capsys):
    import uvicorn

    seen = {}

    def fake_run(self, sockets=None):
        seen["app"], seen["address"] = self.config.app, sockets[0].getsockname()  # closed after run

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert main(["app", "--port", "0", "--device", "cpu", "--attention", "basam", "--max-memory", "2G"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:" in out and "basam_tiny" in out
    state = seen["app"].state.basam
    assert state.max_memory == 2 * 2**30 and state.allow_paths and state.default_preset() == "basam"
    assert seen["address"][0] == "127.0.0.1" and seen["address"][1] > 0
    state.close()


# ----------------------------------------------------------------------------------------------
# a live server under concurrent clients

#: RSS may grow by at most this much over the concurrent run, after a warm-up round
RSS_BOUND = 64 * 2**20


def test_concurrent_clients_on_loopback():
    """8 clients click at once for a bounded time (5 s; 30 s with BASAM_LONG_TESTS=1): every answer
    equals the serial answer to the same prompt, one encode serves them all, and the process's
    RSS stays within RSS_BOUND of its level after a warm-up round."""
    duration = 30.0 if os.environ.get("BASAM_LONG_TESTS") == "1" else 5.0
    n_clients = 8
    app = create_app()  # the real defaults, loopback Host check included
    small = png_bytes(np.ascontiguousarray(read_image(EXAMPLE)[::2, ::2]))  # 540 x 360: more clicks per second
    prompts = [{"points": [[float(20 + 60 * k), float(30 + 35 * k), 1]]} for k in range(6)]
    prompts.append({"points": [[270.0, 180.0, 1], [25.0, 25.0, 0]], "box": [100.0, 50.0, 450.0, 325.0]})
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=120) as c:
            iid = c.post("/api/images", files={"file": ("small.png", small, "image/png")}).json()["id"]

        def post(client, prompt):
            r = client.post("/api/predict", json={"image": iid, **prompt})
            assert r.status_code == 200, r.text
            d = r.json()
            return d["masks"], d["scores"]

        # 1. all clients at once on an image not encoded yet: one encode, identical answers
        barrier = threading.Barrier(n_clients)
        first, errors = [None] * n_clients, []

        def first_click(i):
            try:
                with httpx.Client(base_url=url, timeout=120) as client:
                    barrier.wait()
                    first[i] = post(client, prompts[0])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=first_click, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert app.state.basam.stats["encodes"] == 1
        assert all(f == first[0] for f in first)

        # 2. the serial answers
        with httpx.Client(base_url=url, timeout=120) as c:
            expected = [post(c, p) for p in prompts]
        assert expected[0] == first[0]

        # 3. everyone clicking for `duration` seconds, after a warm-up round
        counts = [0] * n_clients
        stop = threading.Event()
        peak = [0]

        def clicker(i, seconds):
            try:
                with httpx.Client(base_url=url, timeout=120) as client:
                    k, end = i, time.monotonic() + seconds
                    while time.monotonic() < end and not stop.is_set():
                        got = post(client, prompts[k % len(prompts)])
                        if got != expected[k % len(prompts)]:
                            errors.append(f"client {i}: wrong answer to prompt {k % len(prompts)}")
                        counts[i] += 1
                        k += 1
            except BaseException as e:  # noqa: BLE001
                errors.append(f"client {i}: {e!r}")
                stop.set()

        def run_round(seconds):
            ts = [threading.Thread(target=clicker, args=(i, seconds)) for i in range(n_clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(seconds + 180)

        run_round(1.0)
        assert not errors, errors
        counts[:] = [0] * n_clients
        rss0 = rss_bytes()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        run_round(duration)
        elapsed = time.monotonic() - start
        stop.set()
        sampler.join(5)
        rss1 = rss_bytes()

    assert not errors, errors[:5]
    assert all(n >= 1 for n in counts), counts
    assert app.state.basam.stats["encodes"] == 1, "every click reused the one encoding"
    growth, peak_growth = rss1 - rss0, max(peak[0], rss1) - rss0
    print(f"\n{sum(counts)} answers from {n_clients} clients in {elapsed:.1f} s "
          f"({sum(counts) / elapsed:.1f}/s); RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB, "
          f"peak +{peak_growth / 2**20:.0f} MiB")
    assert peak_growth < RSS_BOUND, f"RSS grew by {peak_growth / 2**20:.0f} MiB (bound {RSS_BOUND / 2**20:.0f})"
