"""The HTTP service on a real local Ray, called over real HTTP on loopback (issue 6, "Done when").

One deployment serves the whole module: a random-init resnet18 checkpoint at 32×16 and the
synthetic_tiny PNGs. Every wait polls a condition with a deadline.
"""
import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from reidloop.config.serve import DeploymentConfig, ServeConfig
from reidloop.engine.features import extract_features
from reidloop.engine.precision import resolve_precision
from reidloop.metrics.distance import pairwise_distance
from reidloop.models import load_checkpoint

from conftest import encode_image, serve_app_running, wait_for, write_checkpoint

H, W = 32, 16
MAX_BODY = 256 * 1024  # > 200,000: the nested-JSON bodies below must reach the parser
MAX_PIXELS = 500_000
TIMEOUT = 20  # seconds per HTTP call
# Deploying the module's Serve application takes ~35 s on a 2-core VM (~50 s with the Ray start-up).
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


APP = "reidloop-test"


def deploy_config(port: int, config_file, deployments=()) -> None:
    """Deploy the app from a config, as ``serve deploy`` / ``serve run <file.yaml>`` do (import path + args);
    redeploying with only deployments' user_config changed reconfigures the running replicas."""
    from ray.serve._private.api import serve_start  # what `serve run <config.yaml>` calls
    from ray.serve.schema import ServeDeploySchema

    http = {"host": "127.0.0.1", "port": port}
    app = {"name": APP, "route_prefix": "/", "import_path": "services.serve_app:build_app",
           "args": {"config": str(config_file)}, "deployments": list(deployments)}
    serve_start(http_options=http).deploy_apps(ServeDeploySchema.model_validate(
        {"http_options": http, "applications": [app]}))


def app_running() -> bool:
    return serve_app_running(APP)


@pytest.fixture(scope="module")
def served(ray_session, synthetic_tiny, tmp_path_factory):
    from ray import serve

    from reidloop.config import save_config

    run_dir = tmp_path_factory.mktemp("run")
    write_checkpoint(run_dir / "model.pt", seed=0, round=0, answers=0, rank1=0.25, mAP=0.125)
    dep = DeploymentConfig(num_cpus=0.0, max_ongoing_requests=32)
    cfg = ServeConfig(checkpoint=str(run_dir), port=free_port(), app_name=APP, height=H, width=W,
                      watch_interval_s=0.1, torch_threads=1, max_batch_size=8,  # continuous batching, no wait
                      max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, max_files=32, max_k=20,
                      keep_images=True,  # a swapped-in model re-embeds the gallery from the kept uploads
                      ingress=dep, gallery=dep)
    config_file = run_dir.parent / "serve.yaml"
    save_config(cfg, config_file)
    deploy_config(cfg.port, config_file)
    url = f"http://127.0.0.1:{cfg.port}"
    wait_for(app_running, "the application to run", deadline_s=300, every_s=0.2)  # slow on a busy 2-core VM
    wait_for(lambda: requests.get(url + "/health", timeout=TIMEOUT).status_code == 200, "/health")
    yield {"url": url, "run_dir": run_dir, "cfg": cfg, "config_file": config_file, "splits": synthetic_tiny}
    serve.shutdown()


def post_image(url: str, path_or_bytes, **fields) -> requests.Response:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return requests.post(url, files={"image": ("x.png", data, "image/png")}, data=fields, timeout=TIMEOUT)


def get(url: str) -> dict:
    r = requests.get(url, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def leaked_paths(value, served) -> list[str]:
    """Every string in ``value`` (keys too, recursively) that starts a rooted path ("/", "~", "\\") or holds
    one of the server's folders (the test's temporary root, the repository)."""
    roots = (str(served["run_dir"].parent.parent), str(Path(__file__).resolve().parents[1]))
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in leaked_paths(k, served) + leaked_paths(v, served)]
    if isinstance(value, list):
        return [s for v in value for s in leaked_paths(v, served)]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or any(r in value for r in roots)):
        return [value]
    return []


def checkpoint_id(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def ray_logs_mentioning(word: str) -> list[str]:
    """The files of this Ray session's log folder (driver, workers, Serve replicas) that contain ``word``."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return sorted(str(p.relative_to(logs)) for p in logs.rglob("*")
                  if p.is_file() and word.encode() in p.read_bytes())


def offline_features(checkpoint, records) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    return extract_features(model, records, height=H, width=W, precision=resolve_precision("auto", torch.device("cpu")),
                            progress=False)


def test_embeddings_equal_the_offline_extractor(served):
    url, recs = served["url"], served["splits"].gallery[:4]
    expected = offline_features(served["run_dir"] / "model.pt", recs)
    version = get(url + "/version")["model_version"]
    got = [post_image(url + "/embed", r.path).json() for r in recs[:3]]
    raw = open(recs[3].path, "rb").read()  # the other upload form: a raw image/png body
    got.append(requests.post(url + "/embed", data=raw, headers={"content-type": "image/png"}, timeout=TIMEOUT).json())
    emb = np.array([g["embedding"] for g in got], np.float32)
    assert {g["dim"] for g in got} == {512} and {g["model_version"] for g in got} == {version}
    # fp32 here (no native bf16 on this CPU); with bf16 the same check holds at cosine > 0.99
    if resolve_precision("auto", torch.device("cpu")).dtype is None:
        np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
    cos = (emb * expected).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.99


def gallery_upload(records, start: int = 0):
    """(files, meta) of POST /gallery/batch for ``records``, with ids g<start>, g<start+1>, ..."""
    meta = [{"gallery_id": f"g{start + i}", "person_id": r.pid, "camera": r.camid} for i, r in enumerate(records)]
    files = [("image", (os.path.basename(r.path), open(r.path, "rb").read(), "image/png")) for r in records]
    return files, {"meta": json.dumps(meta)}


@pytest.fixture(scope="module")
def indexed(served):
    """The synthetic gallery indexed as g0, g1, ... with person ids and cameras (one batched request)."""
    gallery = served["splits"].gallery
    files, data = gallery_upload(gallery)
    r = requests.post(served["url"] + "/gallery/batch", files=files, data=data, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == [f"g{i}" for i in range(len(gallery))] and r.json()["gallery_size"] == len(gallery)
    return served


def test_search_returns_the_right_identity_in_distance_order(indexed):
    url, gallery = indexed["url"], indexed["splits"].gallery
    feats = offline_features(indexed["run_dir"] / "model.pt", gallery)
    for i in (0, 5, len(gallery) - 1):  # a query whose exact duplicate is indexed
        res = post_image(url + "/search", gallery[i].path, k="5").json()
        m = res["matches"]
        assert len(m) == 5 and res["k"] == 5 and res["gallery_size"] == len(gallery)
        assert m[0]["gallery_id"] == f"g{i}" and m[0]["person_id"] == gallery[i].pid
        d = [x["distance"] for x in m]
        assert m[0]["camera"] == gallery[i].camid and d[0] < 0.01 * d[1] and m[0]["score"] > 0.99
        assert d == sorted(d)
        offline = pairwise_distance(feats[i:i + 1], feats)[0]
        np.testing.assert_allclose(d, np.sort(offline)[:5], rtol=1e-3, atol=1e-2)  # sqrt of fp32 round-off near 0

    # single add (raw body + query parameters), then single and batched delete
    raw = open(gallery[0].path, "rb").read()
    r = requests.post(url + "/gallery?gallery_id=extra-1&person_id=999", data=raw,
                      headers={"content-type": "image/png"}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["ids"] == ["extra-1"], r.text
    top2 = post_image(url + "/search", gallery[0].path, k="2").json()["matches"]
    assert {x["gallery_id"] for x in top2} == {"g0", "extra-1"}
    assert {x["person_id"] for x in top2} == {gallery[0].pid, 999}
    assert requests.delete(url + "/gallery/extra-1", timeout=TIMEOUT).json()["gallery_size"] == len(gallery)
    r = requests.delete(url + "/gallery", json=["g1", "g2"], timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["removed"] == ["g1", "g2"]
    files, data = gallery_upload(gallery[1:3], start=1)
    r = requests.post(url + "/gallery/batch", files=files, data=data, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["gallery_size"] == len(gallery), r.text


def _bad_inputs(real_png: bytes):
    huge = encode_image(np.zeros((1000, 1000, 3), np.uint8))  # 1e6 pixels > MAX_PIXELS, a few KB encoded
    img = ("x.png", real_png, "image/png")
    return [
        ("not an image", "post", "/embed", dict(data=b"plain text, not pixels", headers={"content-type": "image/png"}),
         400, "not an image"),
        ("empty body", "post", "/embed", dict(data=b"", headers={"content-type": "image/png"}), 400, "empty"),
        ("empty file part", "post", "/embed", dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty"),
        ("truncated file", "post", "/embed", dict(files={"image": ("x.png", real_png[:len(real_png) // 2])}),
         400, "truncated"),
        ("huge dimensions", "post", "/embed", dict(files={"image": ("x.png", huge, "image/png")}), 413, "pixels"),
        ("huge body", "post", "/embed", dict(data=b"\0" * (MAX_BODY + 1), headers={"content-type": "image/png"}),
         413, "max_body_bytes"),
        ("wrong field name", "post", "/embed", dict(files={"img": img}), 422, "in field 'image'"),
        ("no file at all", "post", "/embed", dict(files={"k": (None, "3")}), 422, "no file in field 'image'"),
        ("wrong content type", "post", "/embed", dict(data=real_png, headers={"content-type": "text/plain"}),
         415, "not an image type"),
        ("json instead of an image", "post", "/search", dict(json={"image": "x"}), 415, "not an image type"),
        ("file part not an image type", "post", "/embed", dict(files={"image": ("x.txt", real_png, "text/plain")}),
         415, "not an image type"),
        ("malformed multipart", "post", "/embed",
         dict(data=b"--b\r\nno headers", headers={"content-type": "multipart/form-data; boundary=b"}),
         400, "closing boundary"),
        ("two images for one", "post", "/embed", dict(files=[("image", img), ("image", img)]), 422,
         "expected one image"),
        ("unknown parameter", "post", "/embed", dict(files={"image": img}, data={"kk": "3"}), 422, "unknown parameter"),
        ("k zero", "post", "/search", dict(files={"image": img}, data={"k": "0"}), 422, "out of range"),
        ("k too large", "post", "/search", dict(files={"image": img}, data={"k": "21"}), 422, "out of range"),
        ("k not a number", "post", "/search", dict(files={"image": img}, data={"k": "ten"}), 422, "an integer"),
        ("bad person id", "post", "/gallery", dict(files={"image": img}, data={"person_id": "bob"}), 422, "person_id"),
        ("bad gallery id", "post", "/gallery", dict(files={"image": img}, data={"gallery_id": "a b/c"}), 422,
         "gallery_id"),
        ("duplicate gallery id", "post", "/gallery/batch",
         dict(files=[("image", img), ("image", img)], data={"meta": '[{"gallery_id": "d"}, {"gallery_id": "d"}]'}),
         409, "already in use"),
        ("meta not matching files", "post", "/gallery/batch", dict(files=[("image", img)], data={"meta": "[{}, {}]"}),
         422, "list of 1"),
        ("one bad file in a batch", "post", "/gallery/batch",
         dict(files=[("image", img), ("image", ("bad.png", b"nope", "image/png"))]), 400, "bad.png"),
        ("unknown gallery id", "delete", "/gallery/no-such-id", {}, 404, "unknown gallery_id"),
        ("unknown ids in a batch delete", "delete", "/gallery", dict(json=["g0", "nope"]), 404, "nope"),
        ("delete body not JSON", "delete", "/gallery", dict(data=b"{oops", headers={"content-type": "text/json"}),
         422, "not valid JSON"),
        ("file named like a server path", "post", "/embed",
         dict(files={"image": ("/srv/reidloop/secret.png", b"nope", "image/png")}), 400, "image[0] <path>: not an image"),
        ("unknown route", "get", "/nowhere", {}, 404, "Not Found"),
        ("wrong method", "get", "/embed", {}, 405, "Method Not Allowed"),
    ]


def test_each_bad_input_gets_a_4xx_json_error_and_the_service_still_answers(indexed):
    url, ok_png = indexed["url"], open(indexed["splits"].query[0].path, "rb").read()
    size_before = get(url + "/health")["gallery_size"]
    failures = []
    for name, method, path, kwargs, status, fragment in _bad_inputs(ok_png):
        r = getattr(requests, method)(url + path, timeout=TIMEOUT, **kwargs)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != status or fragment not in body.get("error", ""):
            failures.append(f"{name}: got {r.status_code} {r.text[:300]!r}, expected {status} with {fragment!r}")
        if leaked_paths(body, indexed):
            failures.append(f"{name}: the answer names a path: {leaked_paths(body, indexed)}")
        health = requests.get(url + "/health", timeout=TIMEOUT)
        if health.status_code != 200 or health.json()["status"] != "ok":
            failures.append(f"after {name}: /health answered {health.status_code} {health.text[:200]!r}")
    assert not failures, "\n".join(failures)
    assert get(url + "/health")["gallery_size"] == size_before  # rejected batches added nothing
    assert post_image(url + "/embed", ok_png).status_code == 200
    # a client's mistake (a duplicate or unknown id, answered by the Gallery replica) logs no traceback
    assert ray_logs_mentioning("ServingError") == []


def test_swap_changes_version_while_requests_keep_succeeding(indexed):
    url, run_dir, gallery = indexed["url"], indexed["run_dir"], indexed["splits"].gallery
    before = get(url + "/version")
    query = open(gallery[0].path, "rb").read()
    outcomes, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            for ep in ("/embed", "/search"):
                try:
                    r = post_image(url + ep, query, **({"k": "3"} if ep == "/search" else {}))
                    outcomes.append((ep, r.status_code, r.json().get("model_version"), r.text[:200]))
                except Exception as exc:  # a dropped connection counts as a failure
                    outcomes.append((ep, None, None, repr(exc)))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 4, "requests before the swap")
        write_checkpoint(run_dir / "model.pt", seed=1, round=1, answers=40, rank1=0.5, mAP=0.375)
        after = wait_for(lambda: (v := get(url + "/version"))["model_version"] != before["model_version"]
                         and v["embedder"]["model_version"] != before["model_version"] and v,
                         "the new checkpoint to be served")
        n = len(outcomes)
        wait_for(lambda: len(outcomes) >= n + 4, "requests after the swap")
    finally:
        stop.set()
        thread.join(timeout=60)
    failed = [o for o in outcomes if o[1] != 200]
    assert not failed, failed[:5]
    assert {o[2] for o in outcomes} == {before["model_version"], after["model_version"]}
    assert after["metrics"] == {"round": 1, "answers": 40, "rank1": 0.5, "mAP": 0.375}
    assert after["loaded_at"] > before["loaded_at"] and after["last_error"] is None
    assert after["swaps"] == before["swaps"] + 1
    # the gallery was re-embedded with the new model: the duplicate is still at distance ~0,
    # and its distances equal the new model's offline ones
    m = post_image(url + "/search", query, k="3").json()
    assert m["model_version"] == after["model_version"] and m["matches"][0]["person_id"] == gallery[0].pid
    feats = offline_features(run_dir / "model.pt", gallery)
    ids = [x["gallery_id"] for x in m["matches"]]
    offline = pairwise_distance(feats[:1], feats)[0]
    np.testing.assert_allclose([x["distance"] for x in m["matches"]], [offline[int(i[1:])] for i in ids],
                               rtol=1e-3, atol=1e-2)


def test_bad_checkpoint_is_reported_and_the_old_model_keeps_serving(served):
    url, run_dir = served["url"], served["run_dir"]
    before = get(url + "/version")
    tmp = run_dir / ".model.pt.tmp"
    tmp.write_bytes(b"this is not a torch checkpoint")
    os.replace(tmp, run_dir / "model.pt")  # atomically, as a training run writes it
    v = wait_for(lambda: (v := get(url + "/version"))["last_error"] and v["embedder"]["last_error"] and v,
                 "the failed load to be reported")
    for replica in (v, v["embedder"]):  # a code, the file's name and a time: no path, no exception text
        assert set(replica["last_error"]) == {"code", "checkpoint_name", "at"}, replica["last_error"]
        assert replica["last_error"]["code"] == "checkpoint_unreadable"
        assert replica["last_error"]["checkpoint_name"] == "model.pt"
        assert replica["last_error"]["at"] > replica["loaded_at"]
    assert leaked_paths(v, served) == [] and leaked_paths(before, served) == [], v
    assert v["model_version"] == before["model_version"] and v["metrics"] == before["metrics"]
    assert get(url + "/health")["status"] == "ok" and leaked_paths(get(url + "/health"), served) == []
    assert get(url + "/health")["status"] == "ok"
    r = post_image(url + "/embed", served["splits"].query[0].path)
    assert r.status_code == 200 and r.json()["model_version"] == before["model_version"]
    # the next good checkpoint is picked up again and clears the error
    write_checkpoint(run_dir / "model.pt", seed=2, round=2)
    v = wait_for(lambda: (v := get(url + "/version"))["model_version"] != before["model_version"] and v,
                 "recovery with a good checkpoint")
    assert v["last_error"] is None and v["metrics"] == {"round": 2}


def test_reconfigure_user_config_switches_checkpoint_and_keeps_the_gallery(indexed, tmp_path):
    url = indexed["url"]
    before = get(url + "/version")
    other = tmp_path / "other.pt"
    write_checkpoint(other, seed=3, round=7, weights=str(tmp_path / "init.pth"))  # a path inside the metrics
    expected = checkpoint_id(other)

    def reconfigure(checkpoint: str) -> None:
        user_config = {"checkpoint": checkpoint, "watch_interval_s": 0.1}
        deploy_config(indexed["cfg"].port, indexed["config_file"],
                      [{"name": name, "user_config": user_config} for name in ("ReidApi", "Gallery")])

    reconfigure(str(other))
    v = wait_for(lambda: (v := get(url + "/version"))["checkpoint_id"] == expected
                 and v["embedder"]["checkpoint_id"] == expected and v, "reconfigure to the other checkpoint")
    assert v["metrics"] == {"round": 7, "weights": "<path>"} and v["checkpoint_name"] == "other.pt"
    assert v["last_error"] is None and leaked_paths(v, indexed) == []
    assert v["gallery_size"] == before["gallery_size"] > 0  # same replica: gallery kept, re-embedded
    m = post_image(url + "/search", indexed["splits"].gallery[3].path, k="1").json()["matches"]
    assert m[0]["gallery_id"] == "g3" and m[0]["score"] > 0.99

    # a checkpoint that is not there: a code, no path (not even the one asked for), the model kept
    reconfigure(str(tmp_path / "no-such-dir" / "gone.pt"))
    v = wait_for(lambda: (v := get(url + "/version"))["last_error"] and v["embedder"]["last_error"] and v,
                 "the missing checkpoint to be reported")
    assert v["last_error"]["code"] == v["embedder"]["last_error"]["code"] == "checkpoint_missing"
    assert v["last_error"]["checkpoint_name"] == "gone.pt" and leaked_paths(v, indexed) == [], v
    assert v["checkpoint_id"] == expected and get(url + "/health")["status"] == "ok"
    reconfigure(str(other))  # back to a loadable one: the error clears
    wait_for(lambda: (v := get(url + "/version"))["last_error"] is None and v["embedder"]["last_error"] is None,
             "the error to clear")


def test_json_nested_any_depth_gets_a_4xx_and_no_traceback(indexed):
    from reidloop.serving import MAX_JSON_DEPTH

    url = indexed["url"]
    size = get(url + "/health")["gallery_size"]
    img = ("x.png", open(indexed["splits"].query[0].path, "rb").read(), "image/png")
    deep = "[" * 100_000  # 100 KB < MAX_BODY: it reaches the parser
    too_deep = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    cases = [  # (what, method, path, kwargs, status, fragment)
        ("100,000 '[' to DELETE /gallery", "delete", "/gallery",
         dict(data=deep, headers={"content-type": "application/json"}), 422, too_deep),
        ("100,000 '[' closed again", "delete", "/gallery", dict(data=deep + "]" * 100_000), 422, too_deep),
        (f"{MAX_JSON_DEPTH + 1} levels around a valid id", "delete", "/gallery",
         dict(data="[" * (MAX_JSON_DEPTH + 1) + '"g0"' + "]" * (MAX_JSON_DEPTH + 1)), 422, too_deep),
        ("20 levels: valid JSON of the wrong shape", "delete", "/gallery",
         dict(data="[" * 20 + '"g0"' + "]" * 20), 422, "expected a non-empty JSON list of gallery ids"),
        ("100,000 '[' as the meta field", "post", "/gallery/batch", dict(files=[("image", img)], data={"meta": deep}),
         422, f"meta: {too_deep}"),
        ("20 levels of meta", "post", "/gallery/batch",
         dict(files=[("image", img)], data={"meta": "[" * 20 + "{}" + "]" * 20}), 422, "meta: expected a JSON list"),
        ("100,000 '[' as a JSON body to /search", "post", "/search",
         dict(data=deep, headers={"content-type": "application/json"}), 415, "not an image type"),
        ("100,000 '[' as an image to /embed", "post", "/embed",
         dict(data=deep, headers={"content-type": "image/png"}), 400, "not an image"),
        ("100,000 '[' as a gallery image", "post", "/gallery",
         dict(files={"image": ("x.png", deep.encode(), "image/png")}), 400, "not an image"),
    ]
    failures = []
    for name, method, path, kwargs, status, fragment in cases:
        r = getattr(requests, method)(url + path, timeout=TIMEOUT, **kwargs)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != status or fragment not in body.get("error", ""):
            failures.append(f"{name}: got {r.status_code} {r.text[:300]!r}, expected {status} with {fragment!r}")
    assert not failures, "\n".join(failures)
    assert get(url + "/health")["gallery_size"] == size  # nothing was added or removed
    assert ray_logs_mentioning("RecursionError") == []  # no traceback logged on the way


def test_deploy_config_file_is_valid_for_serve():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(open("tune_configs/serve_deploy.yaml")))
    app = schema.applications[0]
    assert app.import_path == "services.serve_app:build_app" and schema.http_options.host == "127.0.0.1"
    assert {d.name for d in app.deployments} == {"ReidApi", "Gallery"}
