"""One prepared device check: the Ray-free core on a GPU, every figure measured in one run (issue 22, item 5).

A device session is short (minutes), has no network and no Ray, and returns at most 8 files: this script
runs every check there in one go, each section in its own try/except (a failure records its traceback and
the next section runs), prints a table per section as it goes, and writes ``gpu_check.json`` (every figure,
versions, date, commit) and ``gpu_check.md`` into ``--out``. About 3 minutes on an H200 without ``--quick``.

    # here: what to carry (11 MB): CUHK01 100 ids x 4 JPEGs, CIFAR-10 200 + 100 PNGs per class, and pydeps/,
    # the pure-Python packages the core imports that the device image lacks (gymnasium and its two deps)
    .venv/bin/python benchmarks/gpu_check.py --make-subset ../shared/data runs/gpu_subset
    # on the device (carry runs/gpu_subset):
    PYTHONPATH=runs/gpu_subset/pydeps python3 benchmarks/gpu_check.py --out "$OUT" \
        --cuhk01 runs/gpu_subset/cuhk01 --cifar10 runs/gpu_subset/cifar10
    # the CPU smoke run (tests/test_gpu_check.py):
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_check

Sections (``--sections`` picks some):
- **env**: versions, the device, bf16 support, CPUs; the measured dense matmul peak (4096³ products after a
  warm-up, bf16, fp32 and, on CUDA, TF32), which the other sections quote their FLOP rates against.
- **extract**: ResNet-50 (the paper's) and MobileNetV2 at 256×128, random init: images/s of our pipeline
  (``embed_batches`` / ``extract_features`` with ``amp: auto``, channels_last) against a plain eager fp32 loop
  (NCHW, ``no_grad``, batch 100, as ``benchmarks/extract_bench.py``'s torchreid-style row), on the same model
  and images: real CUHK01 JPEGs (``--cuhk01``, decoded in each pass) and already decoded tensors.
- **finetune**: ResNet-50 256×128 P×K (16×4) training steps: ours (``engine.train.train_epoch``, amp auto)
  against a plain fp32 loop and a plain autocast loop (NCHW) doing the same forward/backward/Adam step.
- **dral**: a short in-process DRAL run (``ActiveLearningLoop``) on tiny synthetic data with the CNN on the
  device, twice: the agent where the loop puts it (CPU: ``DralStrategy`` has no device setting) and moved to
  the device; questions/s, whether it finished, where the parameters were.
- **l2r**: the sorter's pre-training (``l2r.sorter.train_sorter``) on the device, and with ``--cifar10`` a
  shortened L2R-AL run (``l2r.experiment.run_strategy``, the paper's ResNet-18, 2 cycles, a small subset);
  the sorter and the loss learner must run on the configured device.
- **eval**: ``metrics.rank.evaluate_rank`` at Market-1501 size (3,368 × 15,913 random distances, from
  ``benchmarks/eval_bench.py``): the numpy path against the torch path on the device (same mAP).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine_meta, markdown_table  # noqa: E402

# Pure-Python packages the core imports that the device image lacks (gymnasium: reidloop.dral.env):
# --make-subset copies them into DST/pydeps, which the device run puts on PYTHONPATH
CARRIED = ("gymnasium", "cloudpickle", "farama_notifications")
# what the core imports from the device image itself (checked and recorded by the env section)
IMAGE_PACKAGES = ("numpy", "PIL", "pyarrow", "yaml", "matplotlib", "filelock", "tqdm")
SECTIONS = ("env", "extract", "finetune", "dral", "l2r", "eval")
# seconds each section should take on an H200 without --quick (printed beside the elapsed time)
BUDGET_S = {"env": 15, "extract": 60, "finetune": 45, "dral": 45, "l2r": 45, "eval": 30}


# ------------------------------------------------------------------ timing on any device
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of ``fn()``, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def devices_of(module: torch.nn.Module) -> list[str]:
    return sorted({str(p.device) for p in module.parameters()})


def peak_for(precision: str, device: torch.device, peaks: dict) -> float | None:
    """The matmul peak (TFLOP/s) a pipeline described by ``precision`` can reach: bf16/fp16 autocast's, else
    fp32's, or TF32's on CUDA where cuDNN may use it for fp32 convolutions (torch's default)."""
    if "bf16" in precision or "fp16" in precision:
        return peaks.get("bf16")
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return peaks.get("tf32")
    return peaks.get("fp32")


def on_device(found: Iterable[str], device: torch.device) -> bool:
    """Whether every device in ``found`` is ``device`` ("cuda:0" counts as "cuda")."""
    found = list(found)
    return bool(found) and all(torch.device(d).type == device.type for d in found)


# ------------------------------------------------------------------ env
def matmul_tflops(dtype: torch.dtype, device: torch.device, n: int, reps: int, windows: int = 3) -> float:
    """Dense n³ GEMM rate (TFLOP/s) in ``dtype``: the best of ``windows`` timed windows of ``reps`` products
    after a warm-up (a peak: a window slowed by other work is not the device's rate)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(windows):
        seconds, _ = timed(lambda: [a @ b for _ in range(reps)], device)
        best = max(best, 2 * n ** 3 * reps / seconds / 1e12)
    return best


def section_env(args, device: torch.device, ctx: dict) -> dict:
    import torchvision

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    memory_gib=round(props.total_memory / 2 ** 30, 1), multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        from reidloop.engine.precision import cpu_has_native_bf16

        info.update(device_name=machine_meta()["cpu"], bf16_supported=cpu_has_native_bf16())
    n = 4096 if device.type == "cuda" else (256 if args.quick else 1024)
    reps = 50 if device.type == "cuda" else 3
    rows = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        rows.append({"precision": name, "n": n, "tflops": matmul_tflops(dtype, device, n, reps)})
    if device.type == "cuda":  # what fp32 convolutions and matmuls become when TF32 is allowed
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            rows.append({"precision": "tf32", "n": n, "tflops": matmul_tflops(torch.float32, device, n, reps)})
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    ctx["peak_tflops"] = {r["precision"]: r["tflops"] for r in rows}
    info["packages"] = {name: package_origin(name) for name in (*IMAGE_PACKAGES, *CARRIED)}
    return {"info": info, "tables": {"matmul": rows}}


def package_origin(name: str) -> str:
    """Where ``name`` would be imported from, or "MISSING" (a carried one: PYTHONPATH=<subset>/pydeps)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        spec = None
    if spec is None:
        return "MISSING"
    if spec.submodule_search_locations:  # a package: the folder that holds it (its sys.path entry)
        return str(Path(next(iter(spec.submodule_search_locations))).parent)
    return str(Path(spec.origin or "?").parent)


ENV_COLUMNS = [("precision", "precision", None), ("n", "n", "d"), ("tflops", "TFLOP/s", ".3f")]


# ------------------------------------------------------------------ extract
def sizes(args) -> dict:
    """The run's sizes: the paper's on a device, tiny ones with --quick."""
    if args.quick:
        return {"height": 64, "width": 32, "backbones": ["resnet18", "mobilenet_v2"], "images": 24,
                "repeats": 1, "train_backbone": "resnet18", "pk": (4, 2), "steps": 2, "warmup_steps": 1,
                "dral_backbone": "resnet18", "dral_hw": (32, 16), "max_queries": 8, "sorter_steps": 10,
                "eval": (200, 1000), "eval_repeats": 1}
    return {"height": 256, "width": 128, "backbones": ["resnet50", "mobilenet_v2"], "images": 1024,
            "repeats": 3, "train_backbone": "resnet50", "pk": (16, 4), "steps": 30, "warmup_steps": 5,
            "dral_backbone": "resnet50", "dral_hw": (128, 64), "max_queries": 40, "sorter_steps": 300,
            "eval": (3368, 15913), "eval_repeats": 3}


def real_records(root: str | None, limit: int):
    """The CUHK01 images of ``root`` (every split, at most ``limit``), or None without ``--cuhk01``."""
    if not root:
        return None
    from reidloop.data.cuhk01 import read_cuhk01

    s = read_cuhk01(root)
    return [*s.train, *s.query, *s.gallery][:limit]


def plain_loop(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The plain eager fp32 loop: NCHW, ``no_grad``, features copied back per batch."""
    model.eval()
    out = []
    with torch.no_grad():
        for x in batches:
            out.append(model(x.to(device)).float().cpu())
    return torch.cat(out)


def split(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return list(torch.split(x, batch))


def section_extract(args, device: torch.device, ctx: dict) -> dict:
    from torch.utils.data import DataLoader

    from benchmarks.extract_bench import PlainImages, decoded_batches, gflop_per_image, torchreid_transform
    from reidloop.config import ModelConfig
    from reidloop.engine.features import embed_batches, extract_features
    from reidloop.engine.precision import checked_precision, resolve_precision
    from reidloop.models import build_model

    sz = sizes(args)
    h, w, n, reps = sz["height"], sz["width"], sz["images"], sz["repeats"]
    records = real_records(args.cuhk01, n)
    workers = args.workers
    # the decoded tensors: the real images through each pipeline's own transform, else synthetic noise
    gen = torch.Generator().manual_seed(0)
    if records:
        ours_x = torch.cat(decoded_batches(records, h, w, 64))
        plain_x = torch.cat(decoded_batches(records, h, w, 100, torchreid_transform(h, w)))
    else:
        ours_x = plain_x = torch.randn(n, 3, h, w, generator=gen)
    info = {"images": f"{len(records)} CUHK01 JPEGs from {args.cuhk01}" if records
            else f"{n} synthetic tensors (no --cuhk01: the decode+model rows are not run)",
            "input": f"{h}x{w}", "repeats": reps, "loader_workers": workers, "weights": "random init"}
    peaks = ctx.get("peak_tflops", {})
    rows = []
    for backbone in sz["backbones"]:
        torch.manual_seed(0)
        base = build_model(ModelConfig(backbone=backbone), num_classes=0).eval()
        gflop = gflop_per_image(copy.deepcopy(base), h, w)
        plain = copy.deepcopy(base).to(device)
        precision = checked_precision(resolve_precision("auto", device), copy.deepcopy(base), h, w)
        ours = precision.prepare(copy.deepcopy(base))
        runs: dict[str, tuple[str, int, Callable[[], torch.Tensor]]] = {
            "plain eager fp32, decoded": ("fp32 NCHW", len(plain_x),
                                          lambda: plain_loop(plain, split(plain_x, 100), device)),
            "ours, decoded": (precision.describe(), len(ours_x),
                              lambda: embed_batches(ours, split(ours_x, 64), precision)),
        }
        if records:
            def plain_jpegs() -> torch.Tensor:
                loader = DataLoader(PlainImages(records, torchreid_transform(h, w)), batch_size=100,
                                    num_workers=workers)
                return plain_loop(plain, loader, device)

            runs["plain eager fp32, JPEG decode+model"] = ("fp32 NCHW", len(records), plain_jpegs)
            runs["ours, JPEG decode+model"] = (precision.describe(), len(records), lambda: torch.from_numpy(
                extract_features(ours, records, height=h, width=w, precision=precision, batch_size=64,
                                 num_workers=workers, progress=False)))
        for _, _, fn in runs.values():  # warm-up: cuDNN autotuning, allocator, page cache
            fn()
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        feats: dict[str, torch.Tensor] = {}
        for _ in range(reps):  # interleaved: drifts hit every pipeline alike
            for name, (_, _, fn) in runs.items():
                t, feats[name] = timed(fn, device)
                seconds[name].append(t)
        ref = statistics.median(seconds["plain eager fp32, decoded"]) / len(plain_x)
        for name, (prec, count, _) in runs.items():
            med = statistics.median(seconds[name])
            ips = count / med
            peak = peak_for(prec, device, peaks)
            other = feats["plain eager fp32, decoded"] if "ours" in name else feats["ours, decoded"]
            # every row embeds the same images in the same order: its features against the other pipeline's
            cos = float(torch.nn.functional.cosine_similarity(feats[name].float(), other.float()).min())
            rows.append({"backbone": backbone, "pipeline": name, "precision": prec, "images": count,
                         "img_per_s": ips, "vs_plain": ref / (med / count), "gflop_per_image": gflop,
                         "pct_of_peak": 100 * ips * gflop / (peak * 1e3) if peak else None,
                         "min_cosine_vs_other": cos, "seconds_all": seconds[name]})
        plain = ours = None  # free the device memory before the next backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"info": info, "tables": {"extract": rows}}


EXTRACT_COLUMNS = [("backbone", "backbone", None), ("pipeline", "pipeline", None), ("precision", "precision", None),
                   ("images", "images", "d"), ("img_per_s", "img/s", ".1f"), ("vs_plain", "× plain decoded", ".2f"),
                   ("pct_of_peak", "% of matmul peak", ".1f"),
                   ("min_cosine_vs_other", "min cos (ours vs plain)", ".4f")]


# ------------------------------------------------------------------ finetune
def pk_batches(p: int, k: int, h: int, w: int, classes: int, count: int) -> list[tuple]:
    """``count`` synthetic P×K batches (images, labels, camids, indices), as ``engine.train.train_loader`` yields."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randperm(classes, generator=gen)[:p]
        labels = ids.repeat_interleave(k)
        out.append((torch.randn(p * k, 3, h, w, generator=gen), labels, torch.zeros(p * k, dtype=torch.long),
                    torch.arange(p * k)))
    return out


DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def plain_train(model, opt, scaler, batches, device: torch.device, cfg, amp_dtype: torch.dtype | None) -> float:
    """The plain loop: NCHW, the same losses (``reidloop.losses.reid_loss``) and Adam step; autocast with
    ``amp_dtype`` (fp16 with ``scaler``), fp32 when None; the last loss."""
    from reidloop.losses import reid_loss

    model.train()
    loss = torch.zeros(())
    for x, y, _, _ in batches:
        x, y = x.to(device), y.to(device)
        with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()):
            out = model(x)
        out = type(out)(*(t.float() for t in out))
        loss = reid_loss(out, y, margin=cfg.triplet_margin, epsilon=cfg.label_smoothing)["total"]
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        loss.item()  # a loop logs its loss: one read per step (ours reads four)
    return float(loss.detach())


def section_finetune(args, device: torch.device, ctx: dict) -> dict:
    from benchmarks.extract_bench import gflop_per_image
    from reidloop.config import ModelConfig, TrainConfig
    from reidloop.engine.precision import checked_precision, resolve_precision
    from reidloop.engine.train import make_optimizer, train_epoch
    from reidloop.models import build_model

    sz = sizes(args)
    h, w, (p, k), steps, warm = sz["height"], sz["width"], sz["pk"], sz["steps"], sz["warmup_steps"]
    backbone, classes = sz["train_backbone"], 100
    cfg = TrainConfig(ids_per_batch=p, images_per_id=k)
    batches = pk_batches(p, k, h, w, classes, 4)
    warm_b = [batches[i % len(batches)] for i in range(warm)]
    timed_b = [batches[i % len(batches)] for i in range(steps)]
    torch.manual_seed(0)
    base = build_model(ModelConfig(backbone=backbone), num_classes=classes)
    gflop = 3 * gflop_per_image(copy.deepcopy(base), h, w)  # forward + backward ≈ 3 forwards
    auto = resolve_precision("auto", device)
    peaks = ctx.get("peak_tflops", {})
    rows = []

    def ours() -> Callable[[list], float]:
        precision = checked_precision(auto, copy.deepcopy(base), h, w)
        model = precision.prepare(copy.deepcopy(base))
        opt = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None
        rows_info["ours (train_epoch)"] = (precision.describe(), devices_of(model))
        return lambda b: train_epoch(model, b, opt, cfg, precision, 0, scaler, progress=False).loss

    def plain(dtype: torch.dtype | None) -> Callable[[list], float]:
        model = copy.deepcopy(base).to(device)
        opt = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        name = "plain fp32" if dtype is None else "plain autocast"
        desc = f"{device.type}/{DTYPE_NAMES[dtype]} NCHW"
        rows_info[name] = (desc, devices_of(model))
        return lambda b: plain_train(model, opt, scaler, b, device, cfg, dtype)

    rows_info: dict[str, tuple[str, list[str]]] = {}
    loops = {"ours (train_epoch)": ours(), "plain fp32": plain(None)}
    if auto.dtype is not None:  # a CPU without native bf16 emulates it (tens of times slower): no autocast row
        loops["plain autocast"] = plain(auto.dtype)
    for name, step in loops.items():
        step(warm_b)
        seconds, loss = timed(lambda: step(timed_b), device)
        ips = steps * p * k / seconds
        prec, where = rows_info[name]
        peak = peak_for(prec, device, peaks)
        rows.append({"backbone": backbone, "loop": name, "precision": prec, "batch": f"{p}x{k}", "steps": steps,
                     "img_per_s": ips, "ms_per_step": 1e3 * seconds / steps, "last_loss": loss,
                     "pct_of_peak": 100 * ips * gflop / (peak * 1e3) if peak else None,
                     "params_on": where, "on_device": on_device(where, device)})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = next(r["img_per_s"] for r in rows if r["loop"] == "plain fp32")
    for r in rows:
        r["vs_plain_fp32"] = r["img_per_s"] / ref
    info = {"input": f"{h}x{w}", "images": "synthetic tensors (the step, not decoding)", "warmup_steps": warm,
            "gflop_per_image_train": gflop,
            "plain_autocast": "run" if auto.dtype is not None else "not run: amp auto is fp32 here (no native bf16)"}
    return {"info": info, "tables": {"finetune": rows}}


FINETUNE_COLUMNS = [("backbone", "backbone", None), ("loop", "loop", None), ("precision", "precision", None),
                    ("batch", "P×K", None), ("steps", "steps", "d"), ("img_per_s", "img/s", ".1f"),
                    ("ms_per_step", "ms/step", ".1f"), ("vs_plain_fp32", "× plain fp32", ".2f"),
                    ("pct_of_peak", "% of matmul peak", ".1f"), ("last_loss", "last loss", ".3f"),
                    ("on_device", "params on device", None)]


# ------------------------------------------------------------------ dral
def checked_loop_class():
    """An ``ActiveLearningLoop`` that puts the DRAL agent on ``agent_device``, times the questions and records
    where the CNN and the agent were (through the loop's own override points)."""
    from reidloop.active.loop import ActiveLearningLoop
    from reidloop.dral.agent import DQNAgent
    from reidloop.strategies.dral import DralStrategy

    class CheckedLoop(ActiveLearningLoop):
        def __init__(self, job, agent_device: torch.device | None) -> None:
            super().__init__(job, progress=False)
            self.agent_device = agent_device
            self.ask_seconds = 0.0
            self.seen: dict[str, list[str]] = {}

        def make_strategy(self):
            strategy = super().make_strategy()
            if isinstance(strategy, DralStrategy):
                self.seen["agent_as_built"] = devices_of(strategy.agent.online)
                if self.agent_device is not None:
                    a = strategy.agent
                    strategy.agent = DQNAgent(a.obs_dim, a.n_actions, strategy.cfg, seed=self.job.seed,
                                              device=self.agent_device)
            return strategy

        def embed(self, model, records, desc):
            out = super().embed(model, records, desc)
            self.seen["cnn_embedding"] = devices_of(model)
            return out

        def finetune(self, model, *a, **kw):
            out = super().finetune(model, *a, **kw)
            self.seen["cnn_finetuned"] = devices_of(model)
            return out

        def ask_round(self, round_, queries, features, metric, strategy, oracle, knowledge=None):
            seconds, browsed = timed(lambda: super(CheckedLoop, self).ask_round(
                round_, queries, features, metric, strategy, oracle, knowledge), self.device)
            self.ask_seconds += seconds
            self.seen["agent_asking"] = devices_of(strategy.agent.online)
            return browsed

    return CheckedLoop


def section_dral(args, device: torch.device, ctx: dict) -> dict:
    from reidloop.config import LoopJob, ModelConfig, load_config
    from reidloop.models import build_model, save_checkpoint

    sz = sizes(args)
    h, w = sz["dral_hw"]
    backbone = sz["dral_backbone"]
    CheckedLoop = checked_loop_class()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_dral_") as tmp:
        ckpt = Path(tmp) / "init.pt"
        torch.manual_seed(0)
        save_checkpoint(ckpt, build_model(ModelConfig(backbone=backbone), num_classes=0))
        sets = [f"data.root={tmp}/data", f"data.height={h}", f"data.width={w}",
                "data.synthetic.train_ids=16", "data.synthetic.test_ids=8", "data.synthetic.images_per_camera=2",
                f"data.synthetic.height={h}", f"data.synthetic.width={w}",
                f"model.backbone={backbone}", f"checkpoint={ckpt}", "strategy=dral",
                "dral.ns=10", "dral.kmax=5", "dral.kappa=5", "dral.batch_size=16", "dral.replay_size=2000",
                "finetune.lr=1e-4", "finetune.every=0.5", "finetune.epochs=1", "finetune.queries_per_batch=4",
                "eval.batch_size=64", f"max_queries={sz['max_queries']}", f"pretrain.device={device}"]
        for label, agent_device in (("as shipped", None), ("on the device", device)):
            job = load_config(LoopJob, None, sets + [f"output_dir={tmp}/run-{len(rows)}"])
            loop = CheckedLoop(job, agent_device)
            wall, result = timed(loop.run, device)
            finished = (Path(job.output_dir) / "summary.json").exists()
            agent = loop.seen.get("agent_asking", [])
            cnn = sorted(set(loop.seen.get("cnn_embedding", [])) | set(loop.seen.get("cnn_finetuned", [])))
            rows.append({"agent": label, "backbone": backbone, "input": f"{h}x{w}", "rounds": len(result.rounds) - 1,
                         "questions": result.answers, "ask_seconds": loop.ask_seconds,
                         "questions_per_s": result.answers / max(loop.ask_seconds, 1e-9), "wall_seconds": wall,
                         "final_mAP": 100 * result.final().get("mAP", float("nan")), "finished": finished,
                         "agent_built_on": loop.seen.get("agent_as_built"), "agent_on": agent, "cnn_on": cnn,
                         "cnn_on_device": on_device(cnn, device),
                         "agent_on_device": on_device(agent, device)})
    info = {"data": "synthetic: 16 train ids (the pool, from a random-init checkpoint), 8 test ids, "
                    "2 images per camera",
            "note": "the loop builds the DRAL agent on the CPU (DralStrategy passes no device; no config setting); "
                    "the 'on the device' row moves it there through make_strategy",
            "settings": sets}
    return {"info": info, "tables": {"dral": rows}}


DRAL_COLUMNS = [("agent", "agent", None), ("backbone", "backbone", None), ("input", "input", None),
                ("rounds", "rounds", "d"), ("questions", "questions", "d"), ("questions_per_s", "questions/s", ".1f"),
                ("wall_seconds", "wall s", ".1f"), ("final_mAP", "final mAP", ".1f"), ("finished", "finished", None),
                ("agent_on", "agent on", ", ".join), ("cnn_on", "CNN on", ", ".join),
                ("agent_on_device", "agent on device", None), ("cnn_on_device", "CNN on device", None)]


# ------------------------------------------------------------------ l2r
def seen_sorter_class():
    """A ``GRUSorter`` that records the device of each input (the loss learner's predictions) and its weights."""
    from reidloop.l2r.sorter import GRUSorter

    class SeenSorter(GRUSorter):
        def __init__(self, hidden: int, layers: int) -> None:
            super().__init__(hidden, layers)
            self.seen: set[tuple[str, str]] = set()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.add((str(x.device), str(next(self.parameters()).device)))
            return super().forward(x)

    return SeenSorter


def section_l2r(args, device: torch.device, ctx: dict) -> dict:
    from reidloop.config.l2r import L2RExperimentJob
    from reidloop.config.loader import load_config
    from reidloop.l2r.sorter import evaluate_sorter, freeze, train_sorter

    sz = sizes(args)
    paper = ROOT / "tune_configs" / "l2r_cifar10_paper.yaml"
    steps = sz["sorter_steps"]
    sets = [f"sorter.steps={steps}", f"sorter.lr_step={max(1, steps // 2)}", f"train.device={device}",
            "strategies=[l2r]", "seeds=[0]"]
    if args.quick:
        sets += ["sorter.hidden=16", "sorter.layers=1", "sorter.batch_size=16", "sorter.seq_len=16",
                 "sorter.eval_sequences=64", "train.batch_size=16", "train.model=small_cnn", "train.width=8",
                 "protocol.initial=20", "protocol.per_cycle=20", "protocol.subset=40", "train.epochs=1",
                 "train.milestones=[]"]
    else:  # the paper's ResNet-18, batch 64 and sorter; a few hundred labels, 3 epochs a cycle
        sets += ["protocol.initial=500", "protocol.per_cycle=500", "protocol.subset=1000", "train.epochs=3",
                 "train.milestones=[2]"]
    sets += ["protocol.cycles=2", "module.ll4al_detach_epoch=0"]  # ll4al is not run
    rows, info = [], {"config": str(paper.relative_to(ROOT)), "overrides": sets}
    job = load_config(L2RExperimentJob, paper, sets)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    seconds, sorter = timed(lambda: train_sorter(job.sorter, device=device), device)
    trained_on = str(device)
    if device.type == "cuda" and torch.cuda.max_memory_allocated(device) <= before:
        trained_on = "cpu? (no CUDA memory was allocated while it trained)"
    metrics = evaluate_sorter(sorter, job.sorter)
    rows.append({"what": "sorter pre-training", "steps": steps,
                 "per_s": steps / seconds, "unit": "steps/s", "seconds": seconds,
                 "result": f"held-out Spearman {metrics['spearman']:.3f}", "ran_on": trained_on,
                 "on_device": on_device([trained_on], device) if "?" not in trained_on else False})
    info["sorter"] = {"hidden": job.sorter.hidden, "layers": job.sorter.layers, "batch_size": job.sorter.batch_size,
                      "seq_len": job.sorter.seq_len, "metrics": metrics,
                      "returned_on": devices_of(sorter) + ["(train_sorter returns it on the CPU, by design)"]}
    if not args.cifar10:
        info["experiment"] = "skipped: no --cifar10"
        return {"info": info, "tables": {"l2r": rows}}

    from reidloop.l2r.cifar import load_cifar
    from reidloop.l2r.experiment import run_strategy

    job = load_config(L2RExperimentJob, paper, sets + [
        f"data.root={args.cifar10}", "data.train_per_class=null", "data.test_size=null"])
    data = load_cifar(job.data)
    seen = seen_sorter_class()(job.sorter.hidden, job.sorter.layers)
    seen.load_state_dict(sorter.state_dict())
    seen = freeze(seen)
    cycles = []
    wall, result = timed(lambda: run_strategy(job, "l2r", 0, data, sorter=seen, progress=cycles.append), device)
    learner_on = sorted({x for x, _ in seen.seen})
    sorter_on = sorted({p for _, p in seen.seen})
    trained_images = sum(c.labelled for c in result.cycles) * job.train.epochs
    rows.append({"what": f"L2R-AL, {job.train.model}, {len(result.cycles)} cycles", "steps": len(result.cycles),
                 "per_s": trained_images / wall, "unit": "trained img/s (whole cycles)", "seconds": wall,
                 "result": "accuracy " + " → ".join(f"{c.accuracy:.1f}%" for c in result.cycles)
                 + "; Spearman " + ", ".join(f"{c.spearman:.3f}" for c in result.cycles if c.spearman is not None),
                 "ran_on": ", ".join(learner_on + sorter_on),
                 "on_device": on_device(learner_on, device) and on_device(sorter_on, device)})
    info["experiment"] = {"data": f"{len(data.train_labels)} train / {len(data.test_labels)} test images "
                                  f"from {args.cifar10}", "learner_output_on": learner_on, "sorter_on": sorter_on,
                          "cycles": [c.__dict__ for c in result.cycles]}
    return {"info": info, "tables": {"l2r": rows}}


L2R_COLUMNS = [("what", "what", None), ("steps", "steps/cycles", "d"), ("per_s", "rate", ".1f"), ("unit", "unit", None),
               ("seconds", "seconds", ".1f"), ("result", "result", None), ("ran_on", "ran on", None),
               ("on_device", "on device", None)]


# ------------------------------------------------------------------ eval
def section_eval(args, device: torch.device, ctx: dict) -> dict:
    from benchmarks.eval_bench import make_eval_data
    from reidloop.metrics.rank import evaluate_rank

    sz = sizes(args)
    num_q, num_g = sz["eval"]
    junk = int(round(0.24 * num_g))
    data = make_eval_data(num_q, num_g, 751, 6, junk, 0.1, seed=0)
    ids = (data["q_pids"], data["g_pids"], data["q_cams"], data["g_cams"])
    t_copy, dist_t = timed(lambda: torch.from_numpy(data["dist"]).to(device), device)
    runs = {"numpy (CPU threads)": lambda: evaluate_rank(data["dist"], *ids),
            f"torch on {device.type}": lambda: evaluate_rank(dist_t, *ids)}
    rows = []
    for name, fn in runs.items():
        fn()  # warm-up
        times, res = [], None
        for _ in range(sz["eval_repeats"]):
            t, res = timed(fn, device)
            times.append(t)
        rows.append({"path": name, "queries": num_q, "gallery": num_g + junk, "seconds": statistics.median(times),
                     "mAP": 100 * res.mAP, "rank1": 100 * res.cmc[0], "seconds_all": times})
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = base / r["seconds"]
        r["same_mAP"] = abs(r["mAP"] - rows[0]["mAP"]) < 1e-6
    info = {"torch_path": "metrics.rank.evaluate_rank ranks a torch distance matrix on its own device",
            "host_to_device_copy_s": t_copy, "junk_images": junk, "distractors": data["distractors"]}
    return {"info": info, "tables": {"eval": rows}}


EVAL_COLUMNS = [("path", "path", None), ("queries", "queries", "d"), ("gallery", "gallery (with junk)", "d"),
                ("seconds", "seconds", ".3f"), ("speedup", "× numpy", ".2f"), ("mAP", "mAP", ".3f"),
                ("same_mAP", "same mAP", None)]

COLUMNS = {"matmul": ENV_COLUMNS, "extract": EXTRACT_COLUMNS, "finetune": FINETUNE_COLUMNS, "dral": DRAL_COLUMNS,
           "l2r": L2R_COLUMNS, "eval": EVAL_COLUMNS}
RUNNERS = {"env": section_env, "extract": section_extract, "finetune": section_finetune, "dral": section_dral,
           "l2r": section_l2r, "eval": section_eval}


# ------------------------------------------------------------------ the subset to carry
def make_subset(src: Path, dst: Path, ids: int = 100, train_per_class: int = 200, test_per_class: int = 100) -> dict:
    """Copy a small CUHK01 (``ids`` identities, all their JPEGs) and CIFAR-10 (first N PNGs per class and split)
    from ``src`` (the folder holding cuhk01/ and cifar10/) into ``dst``, which must be git-ignored (data is
    never committed); writes ``dst/SOURCE.json`` (counts, sources, this checkout's commit)."""
    dst = dst.resolve()
    if dst.is_relative_to(ROOT):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(dst)], cwd=ROOT).returncode
        if ignored == 1:
            raise SystemExit(f"{dst} is not git-ignored: put the subset under runs/ (data is never committed)")
    summary: dict = {"source": str(src)}
    campus = src / "cuhk01" / "campus"
    if campus.is_dir():
        files = sorted(campus.glob("*.jpg"))
        keep = sorted({f.name[:4] for f in files})[:ids]
        out = dst / "cuhk01" / "campus"
        out.mkdir(parents=True, exist_ok=True)
        wanted = set(keep)
        chosen = [f for f in files if f.name[:4] in wanted]
        for f in chosen:
            shutil.copy2(f, out / f.name)
        summary["cuhk01"] = {"identities": len(keep), "images": len(chosen)}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        folder = src / "cifar10" / split
        if not folder.is_dir():
            continue
        count = 0
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            out = dst / "cifar10" / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob("*.png"))[:per]:
                shutil.copy2(f, out / f.name)
                count += 1
        summary.setdefault("cifar10", {})[split] = count
    summary["pydeps"] = copy_pydeps(dst / "pydeps")
    summary["git_commit"] = machine_meta()["git_commit"]
    summary["bytes"] = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    (dst / "SOURCE.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def copy_pydeps(dst: Path) -> dict[str, str]:
    """Copy the :data:`CARRIED` packages as installed here into ``dst`` (no bytecode); their versions."""
    import importlib.metadata
    import importlib.util

    versions = {}
    for name in CARRIED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed here as a package: cannot carry it")
        shutil.copytree(next(iter(spec.submodule_search_locations)), dst / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        versions[name] = importlib.metadata.version(name.replace("_", "-"))
    return versions


# ------------------------------------------------------------------ the run
def run_section(name: str, args, device: torch.device, ctx: dict) -> dict:
    """One section, its failure recorded (traceback) instead of raised; prints its tables and elapsed time."""
    print(f"\n## {name}", flush=True)
    start = time.perf_counter()
    try:
        out = {"ok": True, **RUNNERS[name](args, device, ctx), "traceback": None}
    except Exception:  # noqa: BLE001 - recorded, and the next section runs
        out = {"ok": False, "info": {}, "tables": {}, "traceback": traceback.format_exc()}
    out["seconds"] = time.perf_counter() - start
    out["budget_s"] = BUDGET_S[name]
    out["text"] = section_text(name, out)
    print(out["text"], flush=True)
    return out


def section_text(name: str, out: dict) -> str:
    lines = []
    for key, value in out["info"].items():
        if not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {value}")
    for table, rows in out["tables"].items():
        lines += ["", markdown_table(rows, COLUMNS[table])]
    if out["traceback"]:
        lines += ["", "FAILED:", "```", out["traceback"].rstrip(), "```"]
    lines += ["", f"{name}: {out['seconds']:.1f} s (budget {out['budget_s']} s on an H200)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="gpu_check.json and gpu_check.md go here")
    ap.add_argument("--cuhk01", default=None, help="a CUHK01 folder (campus/PPPPNNN.jpg): real JPEGs to extract")
    ap.add_argument("--cifar10", default=None, help="a CIFAR-10 folder (train|test/<class>/*.png): the L2R-AL run")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (the CPU test)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers for the JPEG rows (default: 8 on CUDA, 0 on CPU)")
    ap.add_argument("--make-subset", nargs=2, type=Path, metavar=("SRC", "DST"),
                    help="copy a small CUHK01 + CIFAR-10 subset from SRC (holding cuhk01/, cifar10/) to DST, and stop")
    args = ap.parse_args(argv)
    if args.make_subset:
        print(json.dumps(make_subset(*args.make_subset), indent=2))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    if args.workers is None:
        args.workers = 8 if device.type == "cuda" else 0
    meta = machine_meta()
    if not meta["git_commit"]:  # a copied working tree without .git: the commit the subset was made at
        for root in (args.cuhk01, args.cifar10):
            source = Path(root or "/nonexistent").parent / "SOURCE.json"
            if source.is_file():
                meta["git_commit"] = json.loads(source.read_text()).get("git_commit", "") + " (from SOURCE.json)"
                break
    print(f"gpu_check on {device} ({meta['date']}, commit {meta['git_commit'] or 'unknown'}), "
          f"sections {' '.join(args.sections)}{', quick' if args.quick else ''}", flush=True)
    ctx: dict = {}
    start = time.perf_counter()
    sections = {name: run_section(name, args, device, ctx) for name in args.sections}
    total = time.perf_counter() - start
    failed = [n for n, s in sections.items() if not s["ok"]]
    results = {"meta": {**meta, "device": str(device), "quick": args.quick, "total_seconds": total,
                        "failed_sections": failed},
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "sections": {n: {k: v for k, v in s.items() if k != "text"} for n, s in sections.items()}}
    text = "\n\n".join([f"# gpu_check: {device}, {meta['date']}, commit {meta['git_commit'] or 'unknown'}"]
                       + [f"## {n}\n{s['text']}" for n, s in sections.items()]
                       + [f"total {total:.1f} s; failed sections: {', '.join(failed) or 'none'}"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(f"\ntotal {total:.1f} s; failed sections: {', '.join(failed) or 'none'}\n"
          f"saved {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
