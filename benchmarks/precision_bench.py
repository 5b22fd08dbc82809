"""fp32 vs bf16 autocast on this machine: speed, and whether accuracy is unchanged.

    .venv/bin/python benchmarks/precision_bench.py [--checkpoint runs/.../model.pt --config tune_configs/x.yaml]

Speed: images per second of inference (eval, no grad) and of training steps (forward, backward, Adam)
for ResNet-50 and MobileNetV2 at 256×128 (the paper's input) and 64×32 (our CPU runs), batch 32,
channels_last in both precisions. bf16 here is `checked_precision`'s verdict, so a size where
autocast is wrong would show as fp32 (and be named). Accuracy: with --checkpoint, the query/gallery
evaluation of that model (the `data` section of --config, e.g. a loop config) in fp32 and in bf16.
Prints a table; writes benchmarks/results/precision_bench.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from reidloop.config import ModelConfig
from reidloop.engine.precision import checked_precision, cpu_has_native_bf16, resolve_precision
from reidloop.models import build_model

CPU = torch.device("cpu")


def images_per_second(model: torch.nn.Module, precision, height: int, width: int, batch: int, train: bool,
                      seconds: float) -> float:
    model = precision.prepare(model)
    x = precision.batch(torch.randn(batch, 3, height, width))
    labels = torch.arange(batch) % 8
    opt = torch.optim.Adam(model.parameters(), lr=1e-5) if train else None
    model.train(train)

    def step() -> None:
        with torch.set_grad_enabled(train), precision.autocast():
            out = model(x)
        if train:
            loss = torch.nn.functional.cross_entropy(out.logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _ in range(2):  # warm-up: oneDNN primitive creation, allocator
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += batch
    return n / (time.perf_counter() - start)


def speed_rows(seconds: float, batch: int) -> list[dict]:
    rows = []
    for backbone in ("resnet50", "mobilenet_v2"):
        for height, width in ((256, 128), (64, 32)):
            torch.manual_seed(0)
            model = build_model(ModelConfig(backbone=backbone), num_classes=8)
            bf16 = checked_precision(resolve_precision("bf16", CPU), model, height, width)
            fp32 = resolve_precision("off", CPU)
            row = {"backbone": backbone, "input": f"{height}x{width}", "batch": batch,
                   "bf16_precision": bf16.describe()}
            for mode in ("inference", "train"):
                for name, p in (("fp32", fp32), ("bf16", bf16)):
                    row[f"{mode}_{name}"] = round(images_per_second(model, p, height, width, batch,
                                                                    mode == "train", seconds), 1)
                row[f"{mode}_speedup"] = round(row[f"{mode}_bf16"] / row[f"{mode}_fp32"], 2)
            print(f"{backbone:<13}{row['input']:>8}  inference {row['inference_fp32']:7.1f} -> "
                  f"{row['inference_bf16']:7.1f} img/s ({row['inference_speedup']:.2f}x)   train "
                  f"{row['train_fp32']:6.1f} -> {row['train_bf16']:6.1f} img/s ({row['train_speedup']:.2f}x)",
                  flush=True)
            rows.append(row)
    return rows


def accuracy_rows(checkpoint: str, config: str, overrides: list[str]) -> list[dict]:
    """Evaluate ``checkpoint`` on the data of ``config`` (only its ``data`` section is read)."""
    from reidloop.config import EvaluateJob, apply_overrides, from_dict
    from reidloop.config.loader import read_yaml_mapping
    from reidloop.engine.jobs import run_evaluate

    data = read_yaml_mapping(config).get("data", {})
    rows = []
    for amp in ("off", "bf16"):
        tree = apply_overrides({"data": data}, overrides + [f"checkpoint={checkpoint}", f"eval.amp={amp}"])
        job = from_dict(EvaluateJob, tree, config)
        m = run_evaluate(job, progress=False)
        rows.append({"amp": amp, "precision": m["precision"], **{k: m[k] for k in ("rank1", "rank5", "mAP")}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--checkpoint", help="a model.pt / pretrained.pt to evaluate in fp32 and bf16")
    p.add_argument("--config", help="config giving the data for --checkpoint (EvaluateJob fields)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results", help="folder of precision_bench.json")
    args = p.parse_args()
    if args.checkpoint and not args.config:
        p.error("--checkpoint needs --config for the data to evaluate on")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    result = {"cpu": cpu, "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "speed": speed_rows(args.seconds, args.batch)}
    if args.checkpoint:
        result["accuracy"] = accuracy_rows(args.checkpoint, args.config, args.overrides)
        for r in result["accuracy"]:
            print(f"{r['precision']:<26} rank-1 {100 * r['rank1']:6.2f}  rank-5 {100 * r['rank5']:6.2f}  "
                  f"mAP {100 * r['mAP']:6.2f}")
    res = Path(args.out)
    res.mkdir(parents=True, exist_ok=True)
    (res / "precision_bench.json").write_text(json.dumps(result, indent=2))
    print(f"saved {res}/precision_bench.json")


if __name__ == "__main__":
    main()
