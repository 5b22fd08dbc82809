"""Compare acquisition strategies at equal budget, averaged over seeds (DRAL §4.3–4.4).

    .venv/bin/python benchmarks/active_compare.py --config tune_configs/synthetic.yaml \
        --strategies baseline random dral --seeds 0 1 2 --name synthetic

Every (strategy, seed) runs the in-process loop. All runs start from the same pre-trained model: the
labelled/unlabelled identity split follows `data.seed`, so the CNN is pre-trained once and copied;
the seed varies the query order, the oracle, the agent and the fine-tuning. With
`--pretrain-seeds P1 P2 ...` the whole comparison is repeated on CNNs pre-trained with each
`pretrain.seed`, since the starting CNN moves the outcome as much as the learner does. Within a seed every
strategy browses the same queries with the same budget (n_queries · Kmax). Prints mean ± std of the final metrics and writes
benchmarks/results/active_<name>.{json,csv,png}.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import LoopJob, load_config

METRICS = ("rank1", "rank5", "rank10", "mAP")


def run_one(config: str, overrides: list[str], strategy: str, seed: int, out: Path) -> list[dict]:
    job = load_config(LoopJob, config, overrides + [f"strategy={strategy}", f"seed={seed}",
                                                     f"oracle.seed={seed}", f"output_dir={out}"])
    start = time.perf_counter()
    result = ActiveLearningLoop(job, progress=False).run()
    for row in result.rounds:
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result.rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--strategies", nargs="+", default=["baseline", "random", "dral"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--name", default="synthetic")
    p.add_argument("--out", default="runs/bench_active")
    p.add_argument("--pretrain-seeds", nargs="+", type=int,
                   help="repeat everything for CNNs pre-trained with each of these pretrain.seed values")
    p.add_argument("--pretrained", help="reuse this pre-trained CNN (a pretrained.pt of an earlier run "
                                        "with the same data and pretrain settings) instead of training it")
    args = p.parse_args()
    if args.pretrain_seeds and args.pretrained:
        p.error("--pretrained is one CNN; it cannot be combined with --pretrain-seeds")
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out) / args.name
    rows: list[dict] = []
    for pseed in args.pretrain_seeds or [None]:
        shared = Path(args.pretrained) if args.pretrained else None
        overrides = args.overrides + ([] if pseed is None else [f"pretrain.seed={pseed}"])
        tag = "" if pseed is None else f"pretrain {pseed} "
        for seed in args.seeds:
            for strategy in args.strategies:
                out = root / ("" if pseed is None else f"pretrain{pseed}") / f"seed{seed}" / strategy
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir(parents=True)
                if shared is not None:
                    shutil.copy(shared, out / "pretrained.pt")  # same pre-trained CNN for every strategy
                rounds = run_one(args.config, overrides, strategy, seed, out)
                shared = shared or out / "pretrained.pt"
                final = rounds[-1]
                final["positives"] = positives_found(out)
                for r in rounds:
                    r["pretrain_seed"] = pseed
                print(f"{tag}seed {seed} {strategy:<10} answers {final['answers']:>5}  "
                      f"positives {final['positives']:>4}  mAP {100 * final['mAP']:6.2f}  "
                      f"rank-1 {100 * final['rank1']:6.2f}  ({final['wall_seconds']:.0f} s)", flush=True)
                rows += rounds
    table = summarise(rows, args.strategies)
    print()
    print(table)
    res = Path("benchmarks/results")
    res.mkdir(parents=True, exist_ok=True)
    (res / f"active_{args.name}.json").write_text(json.dumps(
        {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
         "pretrain_seeds": args.pretrain_seeds, "rows": rows,
         "table": table}, indent=2))
    with open(res / f"active_{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.strategies, res / f"active_{args.name}.png", args.name)
    print(f"saved {res}/active_{args.name}.*")


def positives_found(out: Path) -> int:
    """"Same person" answers in a run's answer log."""
    from reidloop.answer_log import AnswerLog

    if not (out / "answers").exists():
        return 0
    return int((AnswerLog(out / "answers").read().column("answer").to_numpy() > 0).sum())


def summarise(rows: list[dict], strategies: list[str]) -> str:
    """Mean ± std of the final metrics over every (pre-train seed, seed) run, and mAP per starting CNN."""
    last = max(r["round"] for r in rows)
    lines = [f"{'strategy':<11}{'runs':>5}{'answers':>9}{'positives':>11}" + "".join(f"{m:>16}" for m in METRICS)]
    for s in strategies:
        fin = [r for r in rows if r["strategy"] == s and r["round"] == last]
        ans = np.mean([r["answers"] for r in fin])
        pos = np.mean([r.get("positives", 0) for r in fin])
        cells = "".join(f"{100 * np.mean([r[m] for r in fin]):>9.2f} ± {100 * np.std([r[m] for r in fin]):4.2f}"
                        for m in METRICS)
        lines.append(f"{s:<11}{len(fin):>5}{ans:>9.0f}{pos:>11.0f}{cells}")
    pseeds = sorted({r["pretrain_seed"] for r in rows if r.get("pretrain_seed") is not None})
    if len(pseeds) > 1:
        lines.append("")
        lines.append("final mAP per pre-trained CNN (mean over seeds)")
        lines.append(f"{'strategy':<11}" + "".join(f"{'pretrain ' + str(p):>14}" for p in pseeds))
        for s in strategies:
            cells = "".join(f"{100 * np.mean([r['mAP'] for r in rows if r['strategy'] == s and r['round'] == last and r['pretrain_seed'] == p]):>14.2f}"
                            for p in pseeds)
            lines.append(f"{s:<11}{cells}")
    return "\n".join(lines)


def plot(rows: list[dict], strategies: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for s in strategies:
        rs = sorted({r["round"] for r in rows if r["strategy"] == s})
        x = [np.mean([r["answers"] for r in rows if r["strategy"] == s and r["round"] == k]) for k in rs]
        for ax, m in zip(axes, ("mAP", "rank1")):
            y = [100 * np.mean([r[m] for r in rows if r["strategy"] == s and r["round"] == k]) for k in rs]
            if max(x) == 0:  # a reference that asks nothing (Baseline, UpperBound): a level, not a curve
                ax.axhline(y[-1], ls="--", color="grey" if s == "baseline" else "black", label=s)
            else:
                ax.plot(x, y, "o-", label=s)
    for ax, m in zip(axes, ("mAP", "rank-1")):
        ax.set_xlabel("answers")
        ax.set_ylabel(f"{m} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
