"""Market-1501-sized evaluation: ours against torchreid 0.2.5 (Cython and Python paths), plus re-ranking cost.

    .venv/bin/python benchmarks/eval_bench.py                       # 3,368 queries x 15,913 gallery, 3 repeats
    .venv/bin/python benchmarks/eval_bench.py --queries 300 --gallery 1500 --repeats 1 --skip-python   # quick

**Peers.** torchreid 0.2.5 is the PyPI sdist (``torchreid-0.2.5.tar.gz``, sha256 pinned) whose
``torchreid/reid/metrics/rank.py`` and ``torchreid/reid/utils/rerank.py`` are read from the tarball and executed
by file into a namespace (the torchreid package is never imported nor installed). That sdist does *not* ship
``rank_cy.pyx`` (its MANIFEST leaves it out), so the Cython source is taken from the sdist's own homepage repo,
goksenin-uav/torchreid-pip, at the commit that set ``__version__ = '0.2.5'`` (sha256 pinned; byte-identical to
KaiyangZhou/deep-person-reid master's, and that commit's rank.py / rerank.py are identical to the sdist's). It is
looked for in ``.cache/eval_bench/rank_cy.pyx``, then ``--torchreid-pyx``, then downloaded. It is compiled in
``.cache/eval_bench/build`` like torchreid's ``rank_cylib/setup.py`` does (cythonize + build_ext, default
compiler flags), with a Cython installed only in ``.cache/eval_bench/pydeps``. Whatever cannot be fetched or
built is reported loudly and its rows say ``not run: <why>``; ours is measured regardless.

**Data** (deterministic from ``--seed``). Market-1501's test split: 750 identities over 6 cameras; its 15,913
gallery images (after torchreid drops the junk) include 2,793 distractors (pid 0), and its loader dropped 3,819
junk images (pid -1). Here: ``min(--ids, --queries)`` identities, queries spread over them with random cameras,
``--gallery`` gallery images of which 17.6% are distractors (pid 0), each identity with at least one image from
a camera other than one of its queries, plus ``--junk`` (default 24% of ``--gallery``) junk images (pid -1)
interleaved. Distances are uniform noise minus a signal for true matches, made tie-free: per query row the
noise is a random permutation of 0..n-1 (a uniform draw without repeats), true matches are moved down by
``--signal`` of the range and land on odd half-steps, so no two cells of a row are equal and
``np.argsort``'s unstable quicksort cannot break a tie differently from our stable order. float32, as
torchreid's torch distance matrix.
torchreid gets the junk-free matrix (what its dataset loader hands it); ours is timed on that same matrix and
on the full one (it drops pid -1 itself). CMC (first 50) must be identical and mAP equal (Python path: 1e-9;
Cython path: 1e-6, else the max difference is reported: it accumulates AP and mAP in float32).

**Re-ranking** (k1=20, k2=6, lambda=0.3) on Euclidean distances of random identity-clustered 64-d features:
each measurement runs in a fresh subprocess that loads the inputs from .npy files, then times one call and
reads the peak RSS of the call (VmHWM, reset to the current RSS just before it through /proc/self/clear_refs)
above the RSS after loading (so inputs are excluded). At ``--small``
a second subprocess per implementation measures the peak of numpy's traced allocations (``tracemalloc``), to
check the footprint models. The models (``torchreid_footprint``, ``ours_footprint``) list what each algorithm
holds at each phase, from reading the two sources; they give the MSMT17-sized figures, which are computed,
not run (torchreid's dense version needs ~20 N^2 bytes there).

Writes ``<out>.json`` (meta: machine, CPU flags, date, command, git commit, versions; all rows) and
``<out>.csv`` / ``<out>_rerank.csv`` / ``<out>_footprint.csv``; prints the tables.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine_meta  # noqa: E402
CACHE = ROOT / ".cache" / "eval_bench"
TR_VERSION = "0.2.5"
SDIST_NAME = f"torchreid-{TR_VERSION}.tar.gz"
SDIST_SHA256 = "bc1055c6fb8444968798708dd13fdad00148e9d7cf3cb18cf52f4b949857fe08"
SDIST_RANK = f"torchreid-{TR_VERSION}/torchreid/reid/metrics/rank.py"
SDIST_RERANK = f"torchreid-{TR_VERSION}/torchreid/reid/utils/rerank.py"
SDIST_PYX = f"torchreid-{TR_VERSION}/torchreid/reid/metrics/rank_cylib/rank_cy.pyx"  # absent from the 0.2.5 sdist
PYX_COMMIT = "8b44b18c1da7729f5448f6ba8a7b6cc5ad7ce267"  # goksenin-uav/torchreid-pip, "update version" to 0.2.5
PYX_URL = (f"https://raw.githubusercontent.com/goksenin-uav/torchreid-pip/{PYX_COMMIT}/"
           "torchreid/reid/metrics/rank_cylib/rank_cy.pyx")
PYX_SHA256 = "f9a41fdf672fcb35e5a6be5858d3a75c451bdc3219cf80f14846feebdbb35dbf"
MARKET = (3368, 15913)
MSMT17 = (11659, 82161)
GIB = float(1 << 30)
CHUNK = 1 << 23  # reidloop.metrics.rerank._CHUNK_ELEMENTS


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _size(text: str) -> tuple[int, int]:
    q, g = text.lower().split("x")
    return int(q), int(g)


# --------------------------------------------------------------------------------------------------- peers
class Peers:
    """torchreid 0.2.5's eval_market1501 (Python), evaluate_cy (Cython) and re_ranking, or why each is missing."""

    def __init__(self, pyx_arg: str | None) -> None:
        self.eval_py = self.eval_cy = self.rerank = None
        self.why_py = self.why_cy = self.why_rerank = None
        self.provenance: dict = {"sdist": None, "pyx": None, "cython": None, "compiler": None}
        self.rerank_path: Path | None = None
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            tar = self._sdist()
        except Exception as e:  # noqa: BLE001 - any failure: report and go on with ours
            why = f"torchreid {TR_VERSION} sdist unavailable: {e}"
            self.why_py = self.why_cy = self.why_rerank = why
            _loud(why)
            return
        src = CACHE / f"torchreid-{TR_VERSION}-src"
        src.mkdir(exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            names = set(tf.getnames())
            for member, dest in ((SDIST_RANK, "rank.py"), (SDIST_RERANK, "rerank.py")):
                (src / dest).write_bytes(tf.extractfile(member).read())
            pyx_in_sdist = tf.extractfile(SDIST_PYX).read() if SDIST_PYX in names else None
        ns = _exec_file(src / "rank.py")
        self.eval_py = ns["eval_market1501"]
        self.rerank_path = src / "rerank.py"
        self.rerank = _exec_file(self.rerank_path)["re_ranking"]
        try:
            pyx = self._pyx(pyx_in_sdist, pyx_arg)
            self.eval_cy = _load_so(self._build(pyx)).evaluate_cy
        except Exception as e:  # noqa: BLE001
            self.why_cy = f"Cython path unavailable: {e}"
            _loud(self.why_cy)

    def _sdist(self) -> bytes:
        path = CACHE / SDIST_NAME
        if path.exists() and _sha256(path.read_bytes()) == SDIST_SHA256:
            self.provenance["sdist"] = f"{path.relative_to(ROOT)} (cached, sha256 {SDIST_SHA256[:16]})"
            return path.read_bytes()
        errors = []
        try:  # PyPI's JSON API: the sdist's URL and digest
            with urllib.request.urlopen(f"https://pypi.org/pypi/torchreid/{TR_VERSION}/json", timeout=30) as r:
                info = json.load(r)
            url = next(u["url"] for u in info["urls"] if u["packagetype"] == "sdist")
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except Exception as e:  # noqa: BLE001
            errors.append(f"PyPI JSON API: {e}")
            data = None
        if data is None:
            try:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                f"torchreid=={TR_VERSION}", "-d", str(CACHE)], check=True, capture_output=True,
                               text=True, timeout=300)
                data = path.read_bytes()
            except Exception as e:  # noqa: BLE001
                errors.append(f"pip download: {getattr(e, 'stderr', '') or e}")
        if data is None:
            raise RuntimeError("; ".join(errors))
        if _sha256(data) != SDIST_SHA256:
            raise RuntimeError(f"{SDIST_NAME} sha256 {_sha256(data)} is not the pinned {SDIST_SHA256}")
        path.write_bytes(data)
        self.provenance["sdist"] = f"PyPI {SDIST_NAME} (sha256 {SDIST_SHA256[:16]})"
        return data

    def _pyx(self, in_sdist: bytes | None, pyx_arg: str | None) -> bytes:
        if in_sdist is not None:
            self.provenance["pyx"] = f"sdist {SDIST_PYX}"
            return in_sdist
        tried = []
        for cand in [CACHE / "rank_cy.pyx"] + ([Path(pyx_arg)] if pyx_arg else []):
            if cand.exists():
                data = cand.read_bytes()
                if _sha256(data) == PYX_SHA256:
                    self.provenance["pyx"] = f"{cand} (sha256 {PYX_SHA256[:16]}, torchreid-pip@{PYX_COMMIT[:10]})"
                    return data
                tried.append(f"{cand}: sha256 differs from the pinned one")
        try:
            with urllib.request.urlopen(PYX_URL, timeout=30) as r:
                data = r.read()
        except Exception as e:  # noqa: BLE001
            tried.append(f"{PYX_URL}: {e}")
            raise RuntimeError(f"the {SDIST_NAME} sdist has no rank_cy.pyx, and it could not be obtained ("
                               + "; ".join(tried) + "); pass --torchreid-pyx PATH") from None
        if _sha256(data) != PYX_SHA256:
            raise RuntimeError(f"downloaded rank_cy.pyx has sha256 {_sha256(data)}, not the pinned {PYX_SHA256}")
        (CACHE / "rank_cy.pyx").write_bytes(data)
        self.provenance["pyx"] = f"{PYX_URL} (sha256 {PYX_SHA256[:16]})"
        return data

    def _build(self, pyx: bytes) -> Path:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise RuntimeError("no C compiler (gcc/cc) on PATH: apt-get install gcc")
        pydeps = CACHE / "pydeps"
        if not (pydeps / "Cython").is_dir():
            print(f"installing Cython into {pydeps.relative_to(ROOT)} (not into the venv)", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(pydeps), "cython"],
                           check=True, capture_output=True, text=True, timeout=600)
        env = dict(os.environ, PYTHONPATH=str(pydeps))
        cython_version = subprocess.run([sys.executable, "-c", "import Cython; print(Cython.__version__)"],
                                        env=env, check=True, capture_output=True, text=True).stdout.strip()
        self.provenance["cython"] = cython_version
        self.provenance["compiler"] = subprocess.run([cc, "--version"], capture_output=True,
                                                     text=True).stdout.splitlines()[0]
        build = CACHE / "build"
        build.mkdir(exist_ok=True)
        so = build / f"rank_cy{sysconfig.get_config_var('EXT_SUFFIX')}"
        stamp = build / "stamp.json"
        key = {"pyx": _sha256(pyx), "python": sys.version, "numpy": np.__version__, "cython": cython_version}
        if so.exists() and stamp.exists() and json.loads(stamp.read_text()) == key:
            return so
        (build / "rank_cy.pyx").write_bytes(pyx)
        # torchreid's rank_cylib/setup.py, with setuptools for the removed distutils
        (build / "setup.py").write_text(
            "import numpy as np\nfrom setuptools import setup, Extension\nfrom Cython.Build import cythonize\n"
            "setup(name='rank_cy', ext_modules=cythonize([Extension('rank_cy', ['rank_cy.pyx'], "
            "include_dirs=[np.get_include()])]))\n")
        print("building torchreid's rank_cy in .cache/eval_bench/build ...", flush=True)
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build, env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not so.exists():
            raise RuntimeError(f"building rank_cy failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        stamp.write_text(json.dumps(key))
        return so


def _loud(msg: str) -> None:
    bar = "!" * 100
    print(f"{bar}\n!!! {msg}\n{bar}", file=sys.stderr, flush=True)


def _exec_file(path: Path) -> dict:
    """Run a torchreid source file into a fresh namespace; ``import torchreid`` inside it fails on purpose."""
    ns: dict = {"__name__": f"torchreid_{TR_VERSION.replace('.', '_')}_{path.stem}", "__file__": str(path)}
    saved = sys.modules.get("torchreid", None), "torchreid" in sys.modules
    sys.modules["torchreid"] = None  # type: ignore[assignment]  # makes `from torchreid... import` raise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cython evaluation ... is unavailable"
            exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102
    finally:
        if saved[1]:
            sys.modules["torchreid"] = saved[0]
        else:
            del sys.modules["torchreid"]
    return ns


def _load_so(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("rank_cy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------- data
def make_eval_data(num_q: int, num_g: int, num_ids: int, cams: int, junk: int, signal: float, seed: int) -> dict:
    """Market-like ids/cameras and a tie-free float32 distance matrix (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ids = max(1, min(num_ids, num_q))
    q_pids = rng.permutation(np.arange(num_q) % ids + 1)
    q_cams = rng.integers(0, cams, num_q)
    n_distr = int(round(num_g * 2793 / 15913))
    n_real = num_g - n_distr
    if n_real < ids:
        raise SystemExit(f"--gallery {num_g} leaves {n_real} real images for {ids} identities")
    first_q = np.full(ids + 1, -1)
    first_q[q_pids[::-1]] = np.arange(num_q)[::-1]  # one query of each identity
    sure = np.arange(1, ids + 1)
    sure_cams = (q_cams[first_q[sure]] + rng.integers(1, max(cams, 2), ids)) % max(cams, 1)
    g_pids = np.concatenate([sure, rng.integers(1, ids + 1, n_real - ids), np.zeros(n_distr, np.int64),
                             np.full(junk, -1)])
    g_cams = np.concatenate([sure_cams, rng.integers(0, cams, n_real - ids + n_distr + junk)])
    perm = rng.permutation(g_pids.shape[0])
    g_pids, g_cams = g_pids[perm].astype(np.int64), g_cams[perm].astype(np.int64)
    n = g_pids.shape[0]
    shift = int(round(signal * n))
    scale = np.float32(1.0 / (2 * (n + shift)))
    dist = np.empty((num_q, n), dtype=np.float32)
    base = np.arange(n, dtype=np.int32)
    step = max(1, (1 << 22) // n)
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        noise = rng.permuted(np.broadcast_to(base, (e - s, n)), axis=1).astype(np.int64)
        match = g_pids[None, :] == q_pids[s:e, None]
        keys = 2 * noise + np.where(match, 1, 2 * shift)  # matches: odd, `shift` lower than negatives: all distinct
        dist[s:e] = keys.astype(np.float32) * scale  # exact ints < 2**24, spacing >> float32 ulp: still distinct
    return {"dist": dist, "q_pids": q_pids.astype(np.int64), "q_cams": q_cams.astype(np.int64),
            "g_pids": g_pids, "g_cams": g_cams, "distractors": n_distr, "junk": junk}


def make_rerank_inputs(num_q: int, num_g: int, seed: int, folder: Path) -> dict:
    """q_g, q_q, g_g Euclidean distances (float32) of identity-clustered 64-d features, saved as .npy."""
    from reidloop.metrics.distance import pairwise_distance

    rng = np.random.default_rng(seed + 1)
    ids = max(1, min(750, num_q))
    centers = rng.standard_normal((ids + 1, 64)).astype(np.float32)
    q_ids = np.arange(num_q) % ids + 1
    g_ids = np.where(rng.random(num_g) < 0.2, 0, rng.integers(1, ids + 1, num_g))  # 0: distractor, own feature
    qf = centers[q_ids] + 0.8 * rng.standard_normal((num_q, 64)).astype(np.float32)
    gf = np.where(g_ids[:, None] > 0, centers[g_ids], 0) + 0.8 * rng.standard_normal((num_g, 64)).astype(np.float32)
    gf = gf.astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, a, b in (("q_g", qf, gf), ("q_q", qf, qf), ("g_g", gf, gf)):
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], np.maximum(pairwise_distance(a, b), 0).astype(np.float32, copy=False))
    return paths


# --------------------------------------------------------------------------------------------------- eval
def time_median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def eval_rows(data: dict, peers: Peers, repeats: int, skip_python: bool, max_rank: int = 50,
              python_repeats: int = 1) -> list[dict]:
    from reidloop.metrics import evaluate_rank

    d, qp, qc, gp, gc = data["dist"], data["q_pids"], data["q_cams"], data["g_pids"], data["g_cams"]
    keep = gp != -1
    dk, gpk, gck = np.ascontiguousarray(d[:, keep]), gp[keep], gc[keep]
    rows = []

    def row(name, matrix, fn, why=None, n=None):
        n = repeats if n is None else n
        r = {"impl": name, "matrix": f"{matrix[0]}x{matrix[1]}", "repeats": n}
        if why:
            r.update(status=f"not run: {why}")
            print(f"  {name}: not run: {why}", flush=True)
        else:
            print(f"  {name} ...", flush=True)
            sec, (cmc, m_ap) = time_median(fn, n)
            r.update(status="ok", seconds=sec, cmc=np.asarray(cmc, dtype=np.float64)[:max_rank].tolist(),
                     mAP=float(m_ap), rank1=float(cmc[0]))
        rows.append(r)

    def ours(mat, g_p, g_c, threads=None):
        res = evaluate_rank(mat, qp, g_p, qc, g_c, max_rank=max_rank, threads=threads)
        return res.cmc, res.mAP

    row("ours (junk-free matrix)", dk.shape, lambda: ours(dk, gpk, gck))
    row("ours (junk-free, 1 thread)", dk.shape, lambda: ours(dk, gpk, gck, threads=1))  # as torchreid: one core
    row("ours (with junk columns)", d.shape, lambda: ours(d, gp, gc))
    row(f"torchreid {TR_VERSION} Cython", dk.shape, lambda: peers.eval_cy(dk, qp, gpk, qc, gck, max_rank),
        peers.why_cy if peers.eval_cy is None else None)
    why_py = "--skip-python" if skip_python else (peers.why_py if peers.eval_py is None else None)
    row(f"torchreid {TR_VERSION} Python", dk.shape, lambda: peers.eval_py(dk, qp, gpk, qc, gck, max_rank), why_py,
        n=python_repeats)

    ref = rows[0]
    cy = next(r for r in rows if "Cython" in r["impl"])
    for r in rows:
        if r["status"] != "ok":
            continue
        r["ratio_vs_cython"] = r["seconds"] / cy["seconds"] if cy["status"] == "ok" else None
        r["max_cmc_diff"] = float(np.max(np.abs(np.float32(ref["cmc"]) - np.float32(r["cmc"]))))
        r["mAP_diff"] = abs(r["mAP"] - ref["mAP"])
        tol = 1e-6 if "Cython" in r["impl"] else 1e-9
        if r["max_cmc_diff"] != 0:
            raise SystemExit(f"CMC differs: {r['impl']} vs {ref['impl']}: max |diff| {r['max_cmc_diff']}")
        if r["mAP_diff"] > tol:
            if "Cython" in r["impl"] and r["mAP_diff"] <= 1e-4:
                r["note"] = "mAP within float32 accumulation (rank_cy sums AP and mAP in float)"
                _loud(f"{r['impl']} mAP differs by {r['mAP_diff']:.2e} (> {tol}): float32 accumulation in rank_cy")
            else:
                raise SystemExit(f"mAP differs: {r['impl']} {r['mAP']!r} vs ours {ref['mAP']!r}")
    return rows


# ------------------------------------------------------------------------------------------------ rerank
def torchreid_footprint(q: int, g: int, itemsize: int = 4) -> dict:
    """Bytes torchreid 0.2.5's ``re_ranking`` holds at each phase (caller's inputs excluded), from its source.

    ``original_dist`` N x N (input dtype, then float32 after ``np.power(...).astype``, which holds three at
    once); ``V`` float32 N x N (``zeros_like(...).astype`` holds two); ``initial_rank``: ``np.argsort`` int64
    N x N then ``.astype(np.int32)``; ``V_qe`` float32 N x N; ``jaccard_dist`` float32 Q x N; the final
    ``jaccard*(1-l) + original*l`` two Q x N temporaries (numpy elides the sum into one of them).
    ``original_dist[:query_num,]`` is a view: the full N x N stays alive to the end; ``invIndex`` holds nnz(V)
    int64 indices (small next to the dense terms, not counted).
    """
    n = q + g
    nn, qn = n * n, q * n
    phases = {
        "concatenate, power, astype": nn * itemsize + 2 * 4 * nn,
        "normalise (1.*d/max)": 2 * 4 * nn,
        "V = zeros_like().astype()": 3 * 4 * nn,
        "argsort int64 -> int32": 4 * nn + 4 * nn + 8 * nn + 4 * nn,
        "query expansion V_qe": 4 * 4 * nn,
        "jaccard + final combine": 2 * 4 * nn + 3 * 4 * qn,
    }
    return {"phases": phases, "peak": max(phases.values()), "peak_phase": max(phases, key=phases.get)}


def ours_footprint(q: int, g: int, nnz: dict | None = None, k1: int = 20, k2: int = 6) -> dict:
    """Bytes reidloop's ``k_reciprocal_rerank`` holds at each phase (caller's inputs excluded), from its source.

    Chunks hold ``C = min(N, 2**23 // N) * N`` cells of the joint matrix (``_JointDistance.rows`` concatenates
    and copies: 3 x 4C bytes; ``_stable_topk`` partition/masks: ~20C, as traced). Sparse: ``initial_rank`` N x (k1+1)
    int64, the two reciprocal sets, R* as (row, col) int64 pairs + float32 values (E entries), local query
    expansion over L = sum of |R*(g)| over each row's k2 neighbours (``np.unique`` with inverse: ~10 int64
    arrays of L), V_qe (E_qe entries). Jaccard: the Q x G float32 output plus three float64 chunks of
    ``2**23 // G`` rows. Final: ``(1-l)*J + l*d`` in place in J, one chunk of ``2**23 // N`` query rows of the
    joint matrix at a time (its parts and their concatenation: 2 x 4 bytes a cell).
    ``nnz``: per-row E, L, E_qe measured on a run (defaults: 30, 6*30, 120 per row).
    """
    n = q + g
    per_row = nnz or {"E": 30.0, "L": 180.0, "E_qe": 120.0}
    e, l_, e_qe = (per_row[k] * n for k in ("E", "L", "E_qe"))
    k_top = k1 + 1
    k_half = int(round(k1 / 2.0))
    c = min(n, max(1, CHUNK // n)) * n
    c_j = min(q, max(1, CHUNK // g)) * g
    qg = q * g
    rank = 8 * n * k_top
    phases = {
        "input checks (bool temp)": min(max(q, g), max(1, CHUNK // max(q, g))) * max(q, g),  # row chunks
        "row max / top-k chunks": rank + 20 * c,
        "reciprocal sets, R*": rank + 8 * n * (k_top + k_half + 1) + 32 * e + 2 * min(CHUNK, n * (k_top * k_top * (k_half + 1))),
        "query expansion": rank + 20 * e + 80 * l_,
        "jaccard": rank + 40 * e_qe + 4 * qg + 24 * c_j,
        "final combine": rank + 20 * e_qe + 4 * qg + 8 * min(q, max(1, CHUNK // n)) * n,
    }
    return {"phases": phases, "peak": max(phases.values()), "peak_phase": max(phases, key=phases.get)}


def inputs_bytes(q: int, g: int) -> int:
    return 4 * (q * g + q * q + g * g)


def _proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: "5" into /proc/self/clear_refs) and
    return that RSS in KiB, so that VmHWM afterwards is the peak of what runs next."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_kib("VmRSS")


def child_rerank(spec: dict) -> None:
    """In a fresh process: load inputs, run one re-ranking, print time / peak RSS / tracemalloc peak as JSON."""
    import tracemalloc

    arrs = {k: np.load(v) for k, v in spec["paths"].items()}
    stats: dict = {}
    if spec["impl"] == "ours":
        import reidloop.metrics.rerank as rr

        qe = rr._query_expansion

        def counted(rows, cols, vals, nbrs, n):  # records nnz of R*, L and V_qe; no change to the result
            stats["E"] = int(rows.shape[0])
            stats["L"] = int(np.bincount(rows, minlength=n)[nbrs].sum())
            out = qe(rows, cols, vals, nbrs, n)
            stats["E_qe"] = int(out[0].shape[0])
            return out

        rr._query_expansion = counted
        fn = rr.k_reciprocal_rerank
    else:
        fn = _exec_file(Path(spec["rerank_path"]))["re_ranking"]
    rss0 = _reset_peak_rss()  # the peak from here on: the imports' and the loading's peaks are forgotten
    if spec["trace"]:
        tracemalloc.start()
    t = time.perf_counter()
    out = fn(arrs["q_g"], arrs["q_q"], arrs["g_g"], k1=20, k2=6, lambda_value=0.3)
    sec = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1] if spec["trace"] else None
    rss1 = _proc_status_kib("VmHWM")
    if spec.get("save"):
        np.save(spec["save"], np.asarray(out, dtype=np.float32))
    print("RESULT " + json.dumps({"seconds": sec, "rss_peak_delta": (rss1 - rss0) * 1024, "rss_peak": rss1 * 1024,
                                  "traced_peak": traced, "nnz": stats}), flush=True)


def run_child(impl: str, paths: dict, peers: Peers, trace: bool, save: str | None) -> dict:
    spec = {"impl": impl, "paths": paths, "trace": trace, "save": save,
            "rerank_path": str(peers.rerank_path) if peers.rerank_path else None}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"rerank child ({impl}) failed, rc {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(line[len("RESULT "):])


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def rerank_rows(sizes: list[tuple[int, int]], small: tuple[int, int], peers: Peers, seed: int,
                skip_peer: bool) -> tuple[list[dict], dict]:
    rows, nnz_per_row = [], {}
    for (q, g) in [small] + [s for s in sizes if s != small]:
        trace = (q, g) == small
        folder = CACHE / f"rerank_{q}x{g}_seed{seed}"
        print(f"re-ranking {q}x{g}: inputs ...", flush=True)
        paths = make_rerank_inputs(q, g, seed, folder)
        outs = {}
        for impl in ("ours", "torchreid"):
            model = (ours_footprint(q, g) if impl == "ours" else torchreid_footprint(q, g))["peak"]
            r = {"impl": impl if impl == "ours" else f"torchreid {TR_VERSION} re_ranking", "size": f"{q}x{g}",
                 "N": q + g, "model_peak_gib": model / GIB}
            why = None
            if impl != "ours":
                if skip_peer:
                    why = "--skip-peer-rerank"
                elif peers.rerank is None:
                    why = peers.why_rerank
                elif model + inputs_bytes(q, g) > 0.7 * mem_available():
                    why = (f"modeled {model / GIB:.1f} GiB + inputs does not fit in 70% of MemAvailable "
                           f"({mem_available() / GIB:.1f} GiB)")
            if why:
                r["status"] = f"not run: {why}"
                rows.append(r)
                continue
            print(f"  {r['impl']} ...", flush=True)
            save = str(folder / f"out_{impl}.npy")
            res = run_child(impl, paths, peers, trace=False, save=save)
            outs[impl] = save
            r.update(status="ok", seconds=res["seconds"], rss_peak_delta_gib=res["rss_peak_delta"] / GIB,
                     rss_before_gib=(res["rss_peak"] - res["rss_peak_delta"]) / GIB)
            if res["nnz"]:
                r["nnz_per_row"] = {k: v / (q + g) for k, v in res["nnz"].items()}
                nnz_per_row = r["nnz_per_row"]
            if trace or impl == "ours":
                tr = run_child(impl, paths, peers, trace=True, save=None)
                r["traced_peak_gib"] = tr["traced_peak"] / GIB
            if impl == "ours":  # the model with the measured nnz
                r["model_peak_gib"] = ours_footprint(q, g, r.get("nnz_per_row"))["peak"] / GIB
            rows.append(r)
        if len(outs) == 2:
            a, b = np.load(outs["ours"]), np.load(outs["torchreid"])
            diff = float(np.max(np.abs(a - b)))
            for r in rows[-2:]:
                r["max_abs_diff_vs_other"] = diff
        shutil.rmtree(folder, ignore_errors=True)
    return rows, nnz_per_row


def footprint_rows(sizes: list[tuple[int, int]], nnz: dict) -> list[dict]:
    rows, seen = [], set()
    for label, (q, g) in sizes:
        if (q, g) in seen:
            continue
        seen.add((q, g))
        tr, ours = torchreid_footprint(q, g), ours_footprint(q, g, nnz or None)
        rows.append({"size": label, "queries": q, "gallery": g, "N": q + g, "inputs_gib": inputs_bytes(q, g) / GIB,
                     "torchreid_peak_gib": tr["peak"] / GIB, "torchreid_peak_phase": tr["peak_phase"],
                     "ours_peak_gib": ours["peak"] / GIB, "ours_peak_phase": ours["peak_phase"],
                     "torchreid_phases_gib": {k: v / GIB for k, v in tr["phases"].items()},
                     "ours_phases_gib": {k: v / GIB for k, v in ours["phases"].items()}})
    return rows


# -------------------------------------------------------------------------------------------------- output
def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def eval_table(rows: list[dict]) -> str:
    out = [f"{'implementation':<28} {'matrix':>12} {'seconds':>9} {'/cython':>8} {'rank-1':>8} {'mAP':>9} "
           f"{'|dCMC|':>7} {'|dmAP|':>9}  status"]
    for r in rows:
        ok = r["status"] == "ok"
        out.append(f"{r['impl']:<28} {r['matrix']:>12} {_fmt(r.get('seconds')):>9} "
                   f"{_fmt(r.get('ratio_vs_cython'), '.2f'):>8} {_fmt(r.get('rank1'), '.4f'):>8} "
                   f"{_fmt(r.get('mAP'), '.6f'):>9} {_fmt(r.get('max_cmc_diff'), '.0e'):>7} "
                   f"{_fmt(r.get('mAP_diff'), '.1e'):>9}  {r['status'] if not ok else r.get('note', 'ok')}")
    return "\n".join(out)


def rerank_table(rows: list[dict]) -> str:
    out = [f"{'re-ranking':<28} {'size':>12} {'seconds':>9} {'RSS peak GiB':>12} {'traced GiB':>10} "
           f"{'model GiB':>9} {'max|diff|':>9}  status"]
    for r in rows:
        out.append(f"{r['impl']:<28} {r['size']:>12} {_fmt(r.get('seconds'), '.2f'):>9} "
                   f"{_fmt(r.get('rss_peak_delta_gib')):>12} {_fmt(r.get('traced_peak_gib')):>10} "
                   f"{_fmt(r.get('model_peak_gib')):>9} {_fmt(r.get('max_abs_diff_vs_other'), '.1e'):>9}  "
                   f"{r['status']}")
    return "\n".join(out)


def footprint_table(rows: list[dict]) -> str:
    out = [f"{'computed footprint (GiB)':<24} {'N':>7} {'inputs':>7} {'torchreid':>10} {'ours':>7}  "
           "peak phase (torchreid / ours)"]
    for r in rows:
        out.append(f"{r['size']:<24} {r['N']:>7} {r['inputs_gib']:>7.2f} {r['torchreid_peak_gib']:>10.2f} "
                   f"{r['ours_peak_gib']:>7.2f}  {r['torchreid_peak_phase']} / {r['ours_peak_phase']}")
    return "\n".join(out)


def write_results(out: Path, meta: dict, tables: dict[str, list[dict]], text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, **tables}, indent=2))
    for name, suffix in (("eval", ""), ("rerank", "_rerank"), ("footprint", "_footprint")):
        rows = tables[name]
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if not isinstance(rows[0].get(k), (list, dict))]
        with open(f"{out}{suffix}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    print(json.dumps(meta))
    print(text)
    print(f"saved {out}.json, {out}.csv, {out}_rerank.csv, {out}_footprint.csv")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_rerank(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=MARKET[0])
    p.add_argument("--gallery", type=int, default=MARKET[1], help="gallery images torchreid sees (junk excluded)")
    p.add_argument("--junk", type=int, default=None, help="extra pid -1 images (default 24%% of --gallery)")
    p.add_argument("--ids", type=int, default=751)
    p.add_argument("--cams", type=int, default=6)
    p.add_argument("--signal", type=float, default=0.1, help="true matches moved down by this fraction of the range")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-python", action="store_true", help="skip torchreid's pure-Python path (~2 min at full size)")
    p.add_argument("--python-repeats", type=int, default=1, help="repeats of torchreid's pure-Python path")
    p.add_argument("--rerank-sizes", nargs="*", default=None,
                   help="QxG sizes to re-rank (default: --queries x --gallery; none: no re-ranking runs)")
    p.add_argument("--small", default=None, help="QxG of the small re-ranking run that also traces allocations "
                                                 "(default: 337x1591, or --queries x --gallery if smaller)")
    p.add_argument("--skip-peer-rerank", action="store_true", help="do not run torchreid's re_ranking")
    p.add_argument("--torchreid-pyx", default=None, help="a local copy of torchreid 0.2.5's rank_cy.pyx")
    p.add_argument("--out", default="benchmarks/results",
                   help="folder of eval_bench.json, eval_bench.csv, eval_bench_rerank.csv, eval_bench_footprint.csv")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    junk = args.junk if args.junk is not None else int(round(args.gallery * 3819 / 15913))
    peers = Peers(args.torchreid_pyx)
    print(f"torchreid sources: {json.dumps(peers.provenance)}", flush=True)

    print(f"data: {args.queries} queries x {args.gallery} gallery (+{junk} junk), seed {args.seed} ...", flush=True)
    data = make_eval_data(args.queries, args.gallery, args.ids, args.cams, junk, args.signal, args.seed)
    print("evaluation:", flush=True)
    ev = eval_rows(data, peers, args.repeats, args.skip_python, python_repeats=args.python_repeats)
    del data

    sizes = [_size(s) for s in args.rerank_sizes] if args.rerank_sizes is not None else [(args.queries, args.gallery)]
    small = _size(args.small) if args.small else (min(args.queries, 337), min(args.gallery, 1591))
    rr, nnz = rerank_rows(sizes, small, peers, args.seed, args.skip_peer_rerank) if sizes else ([], {})
    measured = [r["size"] for r in rr if r.get("nnz_per_row")]
    fp = footprint_rows([(f"small {small[0]}x{small[1]}", small)]
                        + [(f"{q}x{g}", (q, g)) for q, g in sizes]
                        + [("Market-1501 3368x15913", MARKET), ("MSMT17 11659x82161", MSMT17)], nnz)

    meta = machine_meta()
    meta.update(queries=args.queries, gallery=args.gallery, junk=junk, distractors=int(round(args.gallery * 2793 / 15913)),
                ids=min(args.ids, args.queries), cams=args.cams, signal=args.signal, seed=args.seed,
                repeats=args.repeats, torchreid=TR_VERSION, torchreid_sources=peers.provenance,
                rerank_params={"k1": 20, "k2": 6, "lambda_value": 0.3},
                notes=["eval seconds: median of --repeats on the same inputs; torchreid gets the junk-free matrix",
                       "re-ranking seconds: one call in a fresh subprocess; RSS peak: VmHWM of the call (reset just "
                       "before it) above the RSS after loading the inputs; traced: tracemalloc peak of numpy allocations in a second run (ours: every size; torchreid: --small only)",
                       "footprints: computed from the algorithms (torchreid_footprint / ours_footprint), caller's "
                       f"inputs listed separately; ours' sparse terms from nnz per row measured at {measured or 'defaults'}"])
    text = "\n\n".join([eval_table(ev), rerank_table(rr), footprint_table(fp)])
    write_results(Path(args.out) / "eval_bench", meta, {"eval": ev, "rerank": rr, "footprint": fp}, text)


if __name__ == "__main__":
    main()
