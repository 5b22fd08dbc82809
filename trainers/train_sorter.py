"""Pre-train the differentiable sorter of L2R-AL (§III-B, §IV) on synthetic lists and save it.

    python -m trainers.train_sorter --config tune_configs/l2r_cifar10_cpu.yaml [--set sorter.steps=500] [--output F]

Reads the ``sorter`` section of an L2R experiment config, writes the checkpoint to ``--output`` (default:
the config's ``sorter_path``, else ``<output_dir>/sorter.pt``) and prints its Spearman correlation on
held-out synthetic lists at the shortest and the longest trained length.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from reidloop.config.l2r import L2RExperimentJob, SorterConfig
from reidloop.l2r.sorter import GRUSorter, evaluate_sorter, save_sorter, sorter_summary, train_sorter

from .cli import load, parser, run_or_exit

log = logging.getLogger("train_sorter")


def pretrain(cfg: SorterConfig, output: str | Path, device: str = "cpu") -> tuple[GRUSorter, dict]:
    """Train, evaluate on held-out lists, save; returns the frozen sorter and its metrics."""
    start = time.perf_counter()
    every = max(1, cfg.steps // 10)

    def progress(step: int, loss: float) -> None:
        if (step + 1) % every == 0:
            log.info("sorter step %d/%d  L1 rank loss %.4f", step + 1, cfg.steps, loss)

    sorter = train_sorter(cfg, progress, device=device)
    lo, hi = cfg.lengths
    metrics = evaluate_sorter(sorter, cfg, length=hi)
    if lo != hi:
        metrics["at_min_len"] = evaluate_sorter(sorter, cfg, length=lo)
    metrics["seconds"] = time.perf_counter() - start
    save_sorter(output, sorter, cfg, metrics)
    log.info("sorter saved to %s: %s", output, sorter_summary(metrics))
    if lo != hi:
        log.info("  at the shortest length: %s", sorter_summary(metrics["at_min_len"]))
    return sorter, metrics


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--output", help="checkpoint path (default: sorter_path, else <output_dir>/sorter.pt)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    args = p.parse_args(argv)
    job = load(L2RExperimentJob, args)
    output = args.output or job.sorter_path or str(Path(job.output_dir) / "sorter.pt")
    run_or_exit(pretrain, job.sorter, output, args.device)


if __name__ == "__main__":
    main()
