"""Shared fixtures and helpers. One real local Ray per test session (started on first use only)."""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also inherited by Ray workers: no oversubscription


def pytest_configure(config):
    # Tiny models on a 2-core machine shared with Ray workers: one intra-op thread avoids
    # OpenMP oversubscription, which slows small convolutions down several-fold.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray for the whole test session: 2 CPUs, no dashboard, 512 MiB object store, auth off (tests only)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024,
                 log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory):
    """A tiny synthetic Re-ID set (real PNG files), shared by the tests that train or serve."""
    from reidloop.config import SyntheticConfig
    from reidloop.data.synthetic import synthetic_splits

    cfg = SyntheticConfig(train_ids=12, test_ids=6, images_per_camera=2, height=32, width=16, seed=0)
    return synthetic_splits(cfg, str(tmp_path_factory.mktemp("synthetic")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained resnet18 checkpoint (the loop's mechanics do not need a good model)."""
    path = tmp_path_factory.mktemp("ckpt") / "init.pt"
    write_checkpoint(path, seed=0)
    return str(path)


# ---------------------------------------------------------------------- helpers shared by test files
# Plain functions (``from conftest import tiny_job``), for module-level parametrize values and the scripts
# some tests run as subprocesses, where fixtures cannot reach. Heavy imports stay inside them.

# The loop's rounds cut by answers: a fine-tune after every 5 answers, 10 in all.
BY_ANSWERS = {"rounds": "answers", "oracle.budget": 10, "oracle.flush_every": 3}


def tiny_job(out, checkpoint, cache, **over):
    """A LoopJob that runs the whole loop in seconds: 8 synthetic identities (cached in ``cache``), resnet18
    from ``checkpoint`` ("" pre-trains one), 12 queries, 2 rounds; ``over``: dotted fields on top."""
    from reidloop.config import LoopJob, load_config

    sets = [
        "data.height=32", "data.width=16", f"data.root={cache}",
        "data.synthetic.train_ids=8", "data.synthetic.test_ids=4", "data.synthetic.images_per_camera=2",
        "data.synthetic.height=32", "data.synthetic.width=16",
        "model.backbone=resnet18", f"checkpoint={checkpoint}",
        "dral.ns=6", "dral.kmax=3", "dral.kappa=3", "dral.batch_size=8", "dral.replay_size=64",
        "finetune.lr=1e-4", "finetune.every=0.5", "finetune.epochs=1", "finetune.queries_per_batch=4",
        "eval.batch_size=64", f"output_dir={out}", "max_queries=12",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_config(LoopJob, None, sets)


def answered(out) -> tuple[list[int], list[int], list[int]]:
    """(queries, candidates, answers) of the run in ``out``, in the answer log's order."""
    from reidloop.answer_log import AnswerLog

    t = AnswerLog(out / "answers").read()
    return t.column("query").to_pylist(), t.column("candidate").to_pylist(), t.column("answer").to_pylist()


def implied_when_asked(out) -> int:
    """How many logged questions the earlier answers already settled (by transitivity)."""
    from reidloop.answer_log import AnswerLog
    from reidloop.pair_knowledge import PairKnowledge

    t = AnswerLog(out / "answers").read().sort_by("question_id")
    k, implied = PairKnowledge(10_000), 0
    for q, c, y in zip(*(t.column(n).to_pylist() for n in ("query", "candidate", "answer"))):
        if k.infer(q, c) is not None:
            implied += 1
        else:
            k.add(q, c, y)
    return implied


class Crash(Exception):
    """Raised by :func:`crashing_loop`'s loop where a killed driver would have died."""


def crashing_loop(job, after: int):
    """An ActiveLearningLoop that dies (raises Crash, like a killed driver) once ``after`` new answers are logged."""
    from reidloop.active.loop import ActiveLearningLoop

    class CrashingLoop(ActiveLearningLoop):
        def __init__(self, job, after):
            super().__init__(job, progress=False)
            self.left = after  # over the whole run, not per round

        def ask_round(self, round_, queries, features, metric, strategy, oracle, knowledge=None):
            ask = oracle.__dict__.setdefault("real_ask", oracle.ask)  # wrapped once, whatever the round

            def dying_ask(*a, **kw):
                if self.left == 0:
                    raise Crash()
                self.left -= 1
                return ask(*a, **kw)

            oracle.ask = dying_ask
            return super().ask_round(round_, queries, features, metric, strategy, oracle, knowledge)

    return CrashingLoop(job, after)


def write_checkpoint(path, seed: int = 0, backbone: str = "resnet18", num_classes: int = 0, **extra):
    """An untrained embedding model seeded by ``seed`` (with a ``num_classes`` classifier, as a supervised
    source model has; none by default), saved with ``extra`` metrics; returned."""
    import torch

    from reidloop.config import ModelConfig
    from reidloop.models import build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone=backbone), num_classes=num_classes)
    save_checkpoint(path, model, extra=extra)
    return model


def encode_image(rgb, fmt: str = "PNG") -> bytes:
    """An (H, W, 3) uint8 array as the bytes of an image file in ``fmt``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def write_image(path, h: int = 16, w: int = 8, seed: int = 0, mode: str = "RGB") -> str:
    """A random h×w image file (format from the suffix, colour ``mode``), its folder created; the path."""
    import numpy as np
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))
    (img if mode == "RGB" else img.convert(mode)).save(path)
    return str(path)


def serve_app_running(app: str) -> bool:
    """Whether the Serve application ``app`` is RUNNING (fails the test at once if its deploy failed)."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is not None and status.status == "DEPLOY_FAILED":
        pytest.fail(f"deploy failed: {status.message}")
    return status is not None and status.status == "RUNNING"


def wait_for(predicate, what: str, deadline_s: float = 30.0, every_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what`` after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        threading.Event().wait(every_s)
    pytest.fail(f"timed out after {deadline_s} s waiting for {what}")


def pair_array(pairs):
    """Index pairs as a (P, 2) int64 array (also when there are none)."""
    import numpy as np

    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def truthful_episode(strategy, features, ids, query: int, ns: int = 4) -> list[int]:
    """One episode of ``strategy`` on ``query`` and its ``ns`` nearest among ``features`` (Euclidean), every
    question answered from ``ids`` and observed; the candidates asked, in order."""
    from reidloop.dral.env import nearest_candidates
    from reidloop.dral.metric import EuclideanMetric
    from reidloop.strategies import Transition

    dist = EuclideanMetric().pairwise(features, features)
    env, obs, info = query_episode(features, query, nearest_candidates(dist, query, ns).tolist(), ns=ns)
    mask, asked = info["action_mask"], []
    while mask.any():
        a = strategy.select(env, obs, mask)
        c = int(env.candidates[a])
        y = 1 if ids[c] == ids[query] else -1
        nxt, r, done, _, info = env.step_with_answer(a, y)
        strategy.observe(Transition(obs, a, r, nxt, info["action_mask"], done, y, query, c))
        obs, mask = nxt, info["action_mask"]
        asked.append(c)
    return asked


def query_episode(features, query: int, candidates, known=None, ns: int = 4):
    """``(env, obs, info)`` of a QueryEpisodeEnv (Kmax = ns, κ = 2) reset on ``query`` and its ``candidates``,
    Euclidean distances between ``features``; ``known``: answers already known by candidate position."""
    import numpy as np

    from reidloop.dral.env import QueryEpisodeEnv
    from reidloop.dral.metric import EuclideanMetric

    env = QueryEpisodeEnv(ns=ns, kmax=ns, kappa=2, thred=0.4, margin=0.2)
    idx = np.concatenate([[query], candidates])
    dist = EuclideanMetric().pairwise(features[idx], features[idx])
    obs, info = env.reset(options={"query": query, "candidates": np.array(candidates), "distances": dist,
                                   "known": known or {}})
    return env, obs, info


BROWSER_PACKAGES = "chromium chromium-driver"


@pytest.fixture
def browser():
    """Headless chromium through selenium (1280x900). Skipped, loudly, when chromium or chromedriver is missing;
    failed instead when $REIDLOOP_REQUIRE_BROWSER=1 (CI)."""
    import shutil

    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    driver_bin = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if chromium is None or driver_bin is None or webdriver is None:
        missing = ", ".join(n for n, ok in (("chromium", chromium), ("chromedriver", driver_bin),
                                            ("selenium (the dev extra)", webdriver)) if not ok)
        message = (f"BROWSER TESTS NOT RUN: {missing} missing. Install them: "
                   f"sudo apt-get install -y {BROWSER_PACKAGES} (and `make venv` for selenium)")
        if os.environ.get("REIDLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " [REIDLOOP_REQUIRE_BROWSER=1]")
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()
