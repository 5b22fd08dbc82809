"""The HTTP service as a team leaves it running (issue 20): tokens, limits, a gallery that survives a restart.

A real local Ray and real HTTP on loopback. The application is deployed with an admin and a read-only token
(from files), kept images and small limits, so that each limit can be reached with a few requests.
"""
import http.client
import json
import os
import socket

import numpy as np
import pytest
import requests

from reidloop.config.serve import DeploymentConfig, ServeConfig

from conftest import encode_image, serve_app_running, wait_for, write_checkpoint

H, W = 32, 16
TIMEOUT = 30
APP = "reidloop-ops"
ADMIN_TOKEN, READ_TOKEN = "admin-" + "a" * 40, "read-" + "r" * 40
MAX_IN_FLIGHT, REQUEST_TIMEOUT_S = 3, 15.0  # long enough to refuse one while the stuck ones wait
MAX_BODY, MAX_PIXELS, MAX_REQUEST_PIXELS, MAX_FILES = 200_000, 300_000, 400_000, 4
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(port: int, config_file) -> None:
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    http = {"host": "127.0.0.1", "port": port}
    app = {"name": APP, "route_prefix": "/", "import_path": "services.serve_app:build_app",
           "args": {"config": str(config_file)}}
    serve_start(http_options=http).deploy_apps(ServeDeploySchema.model_validate(
        {"http_options": http, "applications": [app]}))


def running() -> bool:
    return serve_app_running(APP)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


ADMIN, READ = bearer(ADMIN_TOKEN), bearer(READ_TOKEN)


def healthy(url: str) -> bool:
    try:
        r = requests.get(url + "/health", timeout=TIMEOUT)
    except requests.ConnectionError:
        return False
    return r.status_code == 200 and r.json()["status"] == "ok"


@pytest.fixture(scope="module")
def ops(ray_session, synthetic_tiny, tmp_path_factory):
    from ray import serve

    from reidloop.config import save_config

    root = tmp_path_factory.mktemp("ops")
    run_dir = root / "run"
    run_dir.mkdir()
    write_checkpoint(run_dir / "model.pt", seed=0, round=0)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "admin").write_text(ADMIN_TOKEN)
    (secrets / "read").write_text(READ_TOKEN)
    dep = DeploymentConfig(num_cpus=0.0, max_ongoing_requests=16)
    cfg = ServeConfig(checkpoint=str(run_dir), port=free_port(), app_name=APP, height=H, width=W,
                      watch_interval_s=0.1, torch_threads=1, max_batch_size=8, batch_wait_timeout_s=0.002,
                      keep_images=True, token_file=str(secrets / "admin"), read_token_file=str(secrets / "read"),
                      max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, max_request_pixels=MAX_REQUEST_PIXELS,
                      max_files=MAX_FILES, max_in_flight=MAX_IN_FLIGHT, request_timeout_s=REQUEST_TIMEOUT_S,
                      ingress=dep, gallery=dep)
    config_file = root / "serve.yaml"
    save_config(cfg, config_file)
    assert ADMIN_TOKEN not in config_file.read_text()  # the config names the files, never the tokens
    deploy(cfg.port, config_file)
    url = f"http://127.0.0.1:{cfg.port}"
    wait_for(running, "the application to run", deadline_s=300, every_s=0.2)
    wait_for(lambda: healthy(url), "/health")
    gallery = synthetic_tiny.gallery
    meta = [{"gallery_id": f"g{i}", "person_id": r.pid, "camera": r.camid} for i, r in enumerate(gallery)]
    for start in range(0, len(gallery), MAX_FILES):  # the whole synthetic gallery, MAX_FILES at a time
        files = [("image", (f"{i}.png", open(r.path, "rb").read(), "image/png"))
                 for i, r in enumerate(gallery[start:start + MAX_FILES])]
        r = requests.post(url + "/gallery/batch", files=files, headers=ADMIN, timeout=TIMEOUT,
                          data={"meta": json.dumps(meta[start:start + MAX_FILES])})
        assert r.status_code == 200, r.text
    yield {"url": url, "cfg": cfg, "config_file": config_file, "run_dir": run_dir, "splits": synthetic_tiny}
    serve.shutdown()


def search(url: str, path: str, headers: dict, k: int = 5) -> requests.Response:
    return requests.post(url + "/search", files={"image": ("q.png", open(path, "rb").read(), "image/png")},
                         data={"k": str(k)}, headers=headers, timeout=TIMEOUT)


def test_tokens_guard_every_route_but_health_and_read_only_hides_person_ids(ops):
    url, q = ops["url"], ops["splits"].gallery[2].path
    assert requests.get(url + "/health", timeout=TIMEOUT).status_code == 200  # no token needed
    for headers in ({}, bearer("wrong-" + "w" * 40), {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        for method, path in (("post", "/search"), ("post", "/embed"), ("get", "/version"), ("get", "/docs"),
                             ("get", "/openapi.json"), ("delete", "/gallery/g0"), ("get", "/gallery/stale")):
            r = getattr(requests, method)(url + path, headers=headers, timeout=TIMEOUT)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, r.text)
            assert ("invalid token" if "wrong" in str(headers) else "missing bearer token") in r.json()["error"]
    full = search(url, q, ADMIN)
    assert full.status_code == 200, full.text
    top = full.json()["matches"][0]
    assert top["gallery_id"] == "g2" and top["person_id"] == ops["splits"].gallery[2].pid and "camera" in top
    read = search(url, q, READ)
    assert read.status_code == 200
    assert all("person_id" not in m and "camera" not in m for m in read.json()["matches"])
    assert [m["gallery_id"] for m in read.json()["matches"]] == [m["gallery_id"] for m in full.json()["matches"]]
    assert requests.get(url + "/version", headers=READ, timeout=TIMEOUT).status_code == 200
    img = {"image": ("x.png", open(q, "rb").read(), "image/png")}
    r = requests.post(url + "/gallery", files=img, headers=READ, timeout=TIMEOUT)
    assert r.status_code == 403 and "admin token" in r.json()["error"]
    assert requests.delete(url + "/gallery/g0", headers=READ, timeout=TIMEOUT).status_code == 403
    assert requests.get(url + "/gallery/stale", headers=ADMIN, timeout=TIMEOUT).json()["ids"] == []


def ingress_rss() -> int:
    """Resident memory (bytes) of the ingress replica's process, found by the title Ray gives it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            if f"{APP}:ReidApi" in title:
                status = open(f"/proc/{pid}/status").read()
                found.append(int(status.split("VmRSS:")[1].split()[0]) * 1024)
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
    assert len(found) == 1, found
    return found[0]


def slow_upload(url: str) -> socket.socket:
    """A request whose body never finishes arriving: it stays in flight until request_timeout_s."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n"
              + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode() + b"\x89PNG")
    return s


def test_each_limit_answers_its_documented_status_and_health_stays_green(ops):
    url = ops["url"]
    ok = open(ops["splits"].gallery[0].path, "rb").read()
    big = encode_image(np.random.default_rng(0).integers(0, 255, (600, 600, 3), np.uint8))  # 360 kpx, > 200 KB
    medium = encode_image(np.zeros((400, 500, 3), np.uint8))  # 200 kpx: fits one image, not three together
    huge = encode_image(np.zeros((1000, 1000, 3), np.uint8))  # 1 Mpx, a few KB encoded
    rss_before = ingress_rss()
    cases = [  # (what, kwargs, status, fragment)
        ("body too large", dict(data=big, headers={"content-type": "image/png", **ADMIN}), 413, "max_body_bytes"),
        ("image with too many pixels", dict(files={"image": ("h.png", huge, "image/png")}, headers=ADMIN), 413,
         "exceed the limit"),
        ("request with too many pixels", dict(files=[("image", ("m.png", medium, "image/png"))] * 3, headers=ADMIN,
                                              data={"meta": "[{}, {}, {}]"}, path="/gallery/batch"),
         413, "max_request_pixels"),
        ("too many images", dict(files=[("image", ("o.png", ok, "image/png"))] * (MAX_FILES + 1), headers=ADMIN,
                                 path="/gallery/batch"), 422, f"at most {MAX_FILES} images"),
    ]
    for _ in range(5):  # repeated: the ingress must not keep what it refused
        for what, kwargs, status, fragment in cases:
            kwargs = dict(kwargs)
            path = kwargs.pop("path", "/embed")
            r = requests.post(url + path, timeout=TIMEOUT, **kwargs)
            assert r.status_code == status and fragment in r.json()["error"], (what, r.status_code, r.text[:300])
            assert healthy(url), what
    size = requests.get(url + "/health", timeout=TIMEOUT).json()["gallery_size"]
    assert size == len(ops["splits"].gallery)  # nothing refused was added

    # too many in flight: MAX_IN_FLIGHT uploads that never finish hold every slot, the next request gets 429
    stuck = [slow_upload(url) for _ in range(MAX_IN_FLIGHT)]
    try:
        seen = []

        def refused_one():
            r = requests.post(url + "/embed", data=ok, headers={"content-type": "image/png", **ADMIN}, timeout=TIMEOUT)
            seen.append(r.status_code)
            return r.status_code == 429 and [r]  # (a 4xx Response is falsy itself)

        (refused,) = wait_for(refused_one, "a request to be refused for too many in flight",
                              deadline_s=REQUEST_TIMEOUT_S)
        assert set(seen) <= {200, 429}, seen
        assert refused.headers["retry-after"] == "1" and "max_in_flight=3" in refused.json()["error"]
        assert healthy(url)  # /health is never counted nor refused
        # each stuck upload is cut at request_timeout_s with a 503 JSON answer
        stuck[0].settimeout(REQUEST_TIMEOUT_S + TIMEOUT)
        answer = http.client.HTTPResponse(stuck[0])
        answer.begin()
        body = json.loads(answer.read())
        assert answer.status == 503 and "request_timeout_s=15" in body["error"], body
    finally:
        for s in stuck:
            s.close()
    wait_for(lambda: requests.post(url + "/embed", data=ok, headers={"content-type": "image/png", **ADMIN},
                                   timeout=TIMEOUT).status_code == 200, "the slots to be free again")
    assert ingress_rss() - rss_before < 150 * 2**20  # bodies refused or cut are not kept


def test_the_gallery_survives_a_restart_of_the_application(ops):
    from ray import serve

    url, gallery = ops["url"], ops["splits"].gallery
    queries = [r.path for r in ops["splits"].query[:4]] + [gallery[5].path]
    before = [search(url, q, ADMIN, k=10).json() for q in queries]
    files = sorted(p.name for p in (ops["run_dir"] / "gallery").iterdir())
    assert "writer.lease" in files and "images" in files and "parts" in files

    serve.delete(APP)  # every replica goes; only the gallery folder remains
    wait_for(lambda: APP not in serve.status().applications, "the application to be deleted", deadline_s=120)
    deploy(ops["cfg"].port, ops["config_file"])
    wait_for(running, "the application to run again", deadline_s=300, every_s=0.2)
    wait_for(lambda: healthy(url), "/health after the restart")
    assert requests.get(url + "/health", timeout=TIMEOUT).json()["gallery_size"] == len(gallery)
    after = [search(url, q, ADMIN, k=10).json() for q in queries]
    for b, a in zip(before, after):
        assert [m["gallery_id"] for m in a["matches"]] == [m["gallery_id"] for m in b["matches"]]
        assert [m["person_id"] for m in a["matches"]] == [m["person_id"] for m in b["matches"]]
        np.testing.assert_allclose([m["distance"] for m in a["matches"]], [m["distance"] for m in b["matches"]],
                                   rtol=1e-5, atol=1e-6)
        assert a["model_version"] == b["model_version"] and a["stale"] == 0
    assert after[-1]["matches"][0]["gallery_id"] == "g5"
    assert os.environ.get("REIDLOOP_TOKEN") is None  # the tokens came from the files named in the config
