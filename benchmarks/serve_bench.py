"""HTTP serving benchmark: POST /embed on loopback at several concurrency levels, with and without
``@serve.batch``, against embedding the same images in-process.

    python -m benchmarks.serve_bench --backbone resnet18 --height 128 --width 64 --requests 200

In-process does what one request costs minus HTTP and Ray Serve: decode the PNG, resize, normalise,
one forward pass (batch 1), sequentially. On a shared machine the speed available drifts, so every
HTTP level is *paired* with an in-process run of the same images measured right before it:
``overhead`` = HTTP p50 latency / paired in-process p50, ``vs in-proc`` = HTTP requests/s / paired
in-process images/s. One extra row embeds the decoded images ``max_batch_size`` at a time in-process
(the ceiling batching can reach). Writes ``benchmarks/results/serve_bench.{json,csv}``.
Model weights are random: speed does not depend on them.

``--search-sizes 1000 10000 100000`` measures POST /search instead, at each gallery size: the gallery is
written straight into the server's gallery folder (random unit vectors of the model's dimension, stored as
the server stores them), the application started on it, then /search at each ``--concurrency`` level, paired
with the same query in-process (decode, embed, rank: ``ReidService.search`` without HTTP) and with the
ranking alone (``GalleryIndex.search`` of an embedded query). Writes ``serve_search_bench.{json,csv}``.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
MAX_PIXELS = 1 << 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(lat_s: list[float], wall_s: float, n: int) -> dict:
    ms = np.asarray(lat_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": n / wall_s,
            "load_avg_1m": os.getloadavg()[0]}


def make_images(n: int, height: int, width: int, root: str) -> list[bytes]:
    """``n`` PNGs of the built-in synthetic Re-ID set at the model's input size."""
    from reidloop.config import SyntheticConfig
    from reidloop.data.synthetic import synthetic_splits

    splits = synthetic_splits(SyntheticConfig(train_ids=2, test_ids=max(2, (n + 3) // 4), images_per_camera=2,
                                              height=height, width=width, seed=0), root)
    return [Path(r.path).read_bytes() for r in (splits.gallery + splits.query)[:n]]


class InProcess:
    """The served model called directly, on the same images and precision as the service."""

    def __init__(self, checkpoint: str, images: list[bytes], height: int, width: int) -> None:
        from reidloop.engine.precision import resolve_device, resolve_precision
        from reidloop.serving import InputTransform, load_serving_model

        self.device = resolve_device("auto")
        self.transform = InputTransform(height, width)
        self.model = load_serving_model(Path(checkpoint), resolve_precision("auto", self.device), self.transform)
        self.images = images
        self.run(10)  # warm-up

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, n: int) -> dict:
        """``n`` images one at a time: bytes → embedding."""
        lat = []
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            self.model.embed([self.transform(self.images[i % len(self.images)], max_pixels=MAX_PIXELS)])
            self._sync()
            lat.append(time.perf_counter() - t0)
        return summary(lat, time.perf_counter() - start, n)

    def run_search(self, n: int, index, k: int) -> dict:
        """``n`` queries one at a time: bytes → embedding → top-``k`` of ``index`` (ReidService.search's work)."""
        lat = []
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            q = self.model.embed([self.transform(self.images[i % len(self.images)], max_pixels=MAX_PIXELS)])
            index.search(q, k, version=self.model.version)
            self._sync()
            lat.append(time.perf_counter() - t0)
        return summary(lat, time.perf_counter() - start, n)

    def run_batched(self, n: int, batch_size: int) -> dict:
        """``n`` decoded images, ``batch_size`` per forward pass (latency is per batch)."""
        decoded = [self.transform(self.images[i % len(self.images)], max_pixels=MAX_PIXELS) for i in range(n)]
        lat = []
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            t0 = time.perf_counter()
            self.model.embed(decoded[i:i + batch_size])
            self._sync()
            lat.append(time.perf_counter() - t0)
        return summary(lat, time.perf_counter() - start, n)


async def drive(url: str, images: list[bytes], concurrency: int, requests: int, path: str = "/embed",
                expect: bytes = b"embedding") -> tuple[dict, int]:
    """Send ``requests`` POST ``path`` (raw image/png bodies) with ``concurrency`` in flight; an answer that is
    not a 200 holding ``expect`` counts as a failure."""
    import aiohttp

    lat: list[float] = []
    failures = 0

    async def worker(session, todo):
        nonlocal failures
        for i in todo:
            t0 = time.perf_counter()
            async with session.post(url + path, data=images[i % len(images)],
                                    headers={"content-type": "image/png"}) as r:
                body = await r.read()
                if r.status != 200 or expect not in body:
                    if not failures:
                        print(f"  first failed request: HTTP {r.status} {body[:200]!r}", flush=True)
                    failures += 1
            lat.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        warm_up = iter(range(2 * concurrency))
        await asyncio.gather(*(worker(session, warm_up) for _ in range(concurrency)))
        lat.clear()
        failures = 0  # the warm-up's do not count
        todo = iter(range(requests))
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, todo) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summary(lat, wall, requests), failures


def http_levels(checkpoint: str, local: InProcess, args, batching: bool, port: int) -> list[dict]:
    from ray import serve

    from reidloop.config.serve import DeploymentConfig, ServeConfig
    from services.serve_app import deploy

    dep = DeploymentConfig(num_cpus=0.0, max_ongoing_requests=max(64, args.max_batch_size))
    cfg = ServeConfig(checkpoint=checkpoint, port=port, front=args.front, app_name="bench", height=args.height,
                      width=args.width, watch_interval_s=0.0, torch_threads=args.threads, batching=batching,
                      max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                      ingress=DeploymentConfig(num_cpus=0.0, max_ongoing_requests=256), gallery=dep)
    url = deploy(cfg)
    rows = []
    try:
        for c in args.concurrency:
            base = local.run(args.baseline_requests)
            res, failures = asyncio.run(drive(url, local.images, c, args.requests))
            rows.append({"mode": f"http /embed ({args.front})", "batching": "on" if batching else "off",
                         "concurrency": c,
                         "requests": args.requests, **res, "failures": failures,
                         "base_p50_ms": base["p50_ms"], "base_rps": base["rps"],
                         "overhead_p50": res["p50_ms"] / base["p50_ms"], "vs_inprocess_rps": res["rps"] / base["rps"],
                         "over_ms": res["p50_ms"] - base["p50_ms"]})
            print(f"  http batching={'on' if batching else 'off'} c={c}: p50 {res['p50_ms']:.1f} ms, "
                  f"{res['rps']:.1f} req/s (paired in-process: p50 {base['p50_ms']:.1f} ms, "
                  f"{base['rps']:.1f} img/s)", flush=True)
    finally:
        serve.delete(cfg.app_name)
    return rows


def floor_levels(local: InProcess, args, port: int) -> list[dict]:
    """Ray Serve alone: the same proxy and one ingress replica whose ``POST /embed`` reads the body and answers
    a JSON of the same size as ours, with no model (what no Serve application can go below on this machine)."""
    from ray import serve

    dim = local.model.dim
    answer = {"embedding": [0.0] * dim, "dim": dim, "model_version": "floor"}
    api = FastAPI()

    @serve.deployment(name="Floor", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    @serve.ingress(api)
    class Floor:
        async def embed(self, request):
            await request.body()
            return JSONResponse(answer)

        # a real annotation object, not the postponed string: the replica re-reads the signature from the
        # pickled class, whose globals do not hold the name "Request"
        embed.__annotations__ = {"request": Request}
        embed = api.post("/embed")(embed)

    serve.run(Floor.bind(), name="floor", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for c in args.concurrency:
            base = local.run(args.baseline_requests)
            res, failures = asyncio.run(drive(url, local.images, c, args.requests))
            rows.append({"mode": f"Ray Serve alone (no model, {args.front})", "batching": "-", "concurrency": c,
                         "requests": args.requests, **res, "failures": failures, "base_p50_ms": base["p50_ms"],
                         "base_rps": base["rps"], "overhead_p50": None, "vs_inprocess_rps": res["rps"] / base["rps"]})
            print(f"  Ray Serve alone c={c}: p50 {res['p50_ms']:.1f} ms, {res['rps']:.1f} req/s", flush=True)
    finally:
        serve.delete("floor")
    return rows


def write_gallery(folder: str, n: int, dim: int, version: str):
    """A gallery of ``n`` random unit vectors stored as the server stores one (a snapshot), and its index."""
    from reidloop.serving import GalleryEntry, GalleryIndex, GalleryStore

    rng = np.random.default_rng(n)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    entries = [GalleryEntry(f"g{i}", person_id=i // 4, camera=i % 2) for i in range(n)]
    store = GalleryStore(folder, lease=False)
    store.snapshot(entries, [version] * n, feats)
    store.close()
    return GalleryIndex.of(entries, [version] * n, feats)


def search_levels(checkpoint: str, local: InProcess, args, port: int, tmp: str) -> list[dict]:
    from ray import serve

    from reidloop.config.serve import DeploymentConfig, ServeConfig
    from services.serve_app import deploy

    rows = []
    model = local.model
    for size in args.search_sizes:
        folder = os.path.join(tmp, f"gallery-{size}")
        index = write_gallery(folder, size, model.dim, model.version)
        query = model.embed([local.transform(local.images[0], max_pixels=MAX_PIXELS)])
        t0 = time.perf_counter()
        for _ in range(20):
            index.search(query, args.k)
        rank_ms = (time.perf_counter() - t0) / 20 * 1000
        dep = DeploymentConfig(num_cpus=0.0, max_ongoing_requests=max(64, args.max_batch_size))
        cfg = ServeConfig(checkpoint=checkpoint, port=port, front=args.front, app_name="bench",
                          height=args.height, width=args.width, watch_interval_s=0.0, torch_threads=args.threads,
                          max_batch_size=args.max_batch_size,
                          batch_wait_timeout_s=args.batch_wait_s, gallery_dir=folder, max_gallery_size=max(size, 1),
                          ingress=DeploymentConfig(num_cpus=0.0, max_ongoing_requests=256), gallery=dep)
        t0 = time.perf_counter()
        url = deploy(cfg)
        start_s = time.perf_counter() - t0
        try:
            for c in args.concurrency:
                base = local.run_search(args.baseline_requests, index, args.k)
                res, failures = asyncio.run(drive(url, local.images, c, args.requests, f"/search?k={args.k}", b"matches"))
                rows.append({"mode": "http /search", "gallery": size, "concurrency": c, "requests": args.requests,
                             **res, "failures": failures, "base_p50_ms": base["p50_ms"], "base_p99_ms": base["p99_ms"],
                             "base_rps": base["rps"], "rank_only_ms": rank_ms, "start_s": start_s,
                             "overhead_p50": res["p50_ms"] / base["p50_ms"], "vs_inprocess_rps": res["rps"] / base["rps"]})
                print(f"  /search gallery={size} c={c}: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                      f"{res['rps']:.1f} req/s (in-process: p50 {base['p50_ms']:.1f} ms, {base['rps']:.1f}/s; "
                      f"ranking alone {rank_ms:.2f} ms)", flush=True)
        finally:
            serve.delete(cfg.app_name)
    return rows


def search_table(rows: list[dict]) -> str:
    head = ("| gallery | concurrency | p50 ms | p99 ms | req/s | in-proc p50 ms | in-proc p99 ms | in-proc q/s "
            "| ranking alone ms | overhead (p50) | app start s |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(f"| {r['gallery']:>7} | {r['concurrency']:>11} | {r['p50_ms']:>6.1f} | {r['p99_ms']:>6.1f} | "
                     f"{r['rps']:>5.1f} | {r['base_p50_ms']:>14.1f} | {r['base_p99_ms']:>14.1f} | "
                     f"{r['base_rps']:>11.1f} | {r['rank_only_ms']:>16.2f} | {r['overhead_p50']:>13.2f}x | "
                     f"{r['start_s']:>11.1f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (f"| {'mode':<26} | batching | concurrency | p50 ms | p99 ms | req/s | in-proc p50 ms | in-proc img/s "
            f"| overhead (p50) | p50 over in-proc ms | vs in-proc (req/s) |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        overhead = "-" if r["overhead_p50"] is None else f"{r['overhead_p50']:.2f}x"
        over = "-" if r.get("over_ms") is None else f"{r['over_ms']:.1f}"
        lines.append(f"| {r['mode']:<26} | {r['batching']:<8} | {r['concurrency']:>11} | {r['p50_ms']:>6.1f} | "
                     f"{r['p99_ms']:>6.1f} | {r['rps']:>5.1f} | {r['base_p50_ms']:>14.1f} | {r['base_rps']:>13.1f} "
                     f"| {overhead:>14} | {over:>19} | {r['vs_inprocess_rps']:>17.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--requests", type=int, default=200, help="HTTP requests per concurrency level")
    p.add_argument("--baseline-requests", type=int, default=100, help="in-process images before each level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--images", type=int, default=32, help="distinct images cycled through")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-s", type=float, default=0.0,
                   help="batch_wait_timeout_s (0, the default: continuous batching)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, in-process and per model replica (1: stable on a small shared CPU)")
    p.add_argument("--search-sizes", type=int, nargs="+", default=None,
                   help="measure /search at these gallery sizes instead of /embed (e.g. 1000 10000 100000)")
    p.add_argument("--k", type=int, default=10, help="matches per /search")
    p.add_argument("--front", choices=["ray", "haproxy"], default="ray",
                   help="the HTTP front (ServeConfig.front): Ray's proxy actor, or HAProxy to the replicas' own "
                        "HTTP servers (Ray's high-throughput mode); haproxy writes *_haproxy.{json,csv}")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from services.serve_front import prepare_local_front

    port = free_port()  # Serve's HTTP options are fixed once it runs: every app of this run shares the port
    prepare_local_front(args.front, port)  # before Ray is imported and started: its processes read them

    import ray
    from ray import serve

    from reidloop.config import ModelConfig
    from reidloop.models import build_model, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "model.pt")
        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_model(ModelConfig(backbone=args.backbone), num_classes=0))
        local = InProcess(checkpoint, make_images(args.images, args.height, args.width, tmp), args.height, args.width)
        precision = local.model.precision.describe()
        print(f"{args.backbone} {args.height}x{args.width} {precision}, {len(local.images)} images, "
              f"{args.requests} requests/level", flush=True)
        single = local.run(args.requests)
        batched = local.run_batched(args.requests, args.max_batch_size)
        rows = [{"mode": "in-process", "batching": "-", "concurrency": 1, "requests": args.requests, **single},
                {"mode": f"in-process batch {args.max_batch_size} *", "batching": "-", "concurrency": 1,
                 "requests": args.requests, **batched}]
        for r in rows:  # a latency ratio only where one call embeds one image
            r.update(base_p50_ms=single["p50_ms"], base_rps=single["rps"], vs_inprocess_rps=r["rps"] / single["rps"],
                     overhead_p50=None if r["mode"].endswith("*") else r["p50_ms"] / single["p50_ms"])
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})
        try:
            if args.search_sizes:
                search_rows = search_levels(checkpoint, local, args, port, tmp)
            else:
                for batching in (True, False):
                    rows += http_levels(checkpoint, local, args, batching, port)
                rows += floor_levels(local, args, port)
        finally:
            serve.shutdown()
            ray.shutdown()
    if args.search_sizes:
        return write_search(args, precision, search_rows)

    meta = {"backbone": args.backbone, "input": [args.height, args.width], "requests_per_level": args.requests,
            "baseline_requests": args.baseline_requests, "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_s, "torch_threads": args.threads, "precision": precision,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), **_machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "front": args.front,
            "note": "* latency per batch of max_batch_size images"}
    keys = ["mode", "batching", "concurrency", "requests", "p50_ms", "p99_ms", "rps", "base_p50_ms", "base_rps",
            "overhead_p50", "over_ms", "vs_inprocess_rps", "failures", "load_avg_1m"]
    write_results(Path(args.out), _named("serve_bench", args.front), meta, rows, keys, table(rows))


def write_search(args, precision: str, rows: list[dict]) -> None:
    meta = {"backbone": args.backbone, "input": [args.height, args.width], "requests_per_level": args.requests,
            "baseline_requests": args.baseline_requests, "k": args.k, "max_batch_size": args.max_batch_size,
            "torch_threads": args.threads, "precision": precision, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "cpu": _cpu_name(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "front": args.front,
            "note": "in-process: the same query bytes decoded, embedded and ranked, sequentially; ranking alone: "
                    "GalleryIndex.search of one embedded query; gallery: random unit vectors (speed does not "
                    "depend on them)"}
    keys = ["gallery", "concurrency", "requests", "p50_ms", "p99_ms", "rps", "base_p50_ms", "base_p99_ms",
            "base_rps", "rank_only_ms", "overhead_p50", "vs_inprocess_rps", "start_s", "failures", "load_avg_1m"]
    write_results(Path(args.out), _named("serve_search_bench", args.front), meta, rows, keys, search_table(rows))


def _named(name: str, front: str) -> str:
    """Results of Ray's own front keep their name; another front's get its name as a suffix."""
    return name if front == "ray" else f"{name}_{front}"


def write_results(out: Path, name: str, meta: dict, rows: list[dict], keys: list[str], table_text: str) -> None:
    """``<name>.json`` (meta and rows) and ``<name>.csv`` (``keys``) in ``out``; print meta and table; exit 1
    if any HTTP request failed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(json.dumps(meta))
    print(table_text)
    failed = sum(r.get("failures", 0) for r in rows)
    if failed:
        raise SystemExit(f"{failed} HTTP requests failed")


def _machine() -> dict:
    from benchmarks.report import machine_meta

    m = machine_meta()
    return {k: m[k] for k in ("cpu", "cpu_flags", "date", "command", "git_commit", "git_dirty", "torch")}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
