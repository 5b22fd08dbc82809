"""What each run of an `active_compare.py` folder asked: positive rate per round and, for DRAL, Eq. 9 by answer.

    .venv/bin/python benchmarks/answer_stats.py runs/bench_active/<name> --name <name>

For every run folder below the given one (a folder with `answers/`), prints the answers asked, the
"same person" answers among them, the share of "same" answers in each round, and, when the run left a
DRAL agent (`strategy.pt`), the mean Eq. 9 reward of the run's "same" and "different" answers (and the
share of zero rewards) and, per band of candidate positions (0 = nearest), the number of questions, the
mean reward and the share of "same" answers, read from the agent's replay buffer (without the warm-up
transitions of `dral.warmstart_passes`). Writes benchmarks/results/answer_stats_<name>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from reidloop.answer_log import AnswerLog

RESULTS = Path(__file__).resolve().parent / "results"
BANDS = ((0, 3), (3, 6), (6, 10), (10, 15), (15, 20), (20, 10**6))


def positive_rates(answers_dir: Path) -> dict:
    t = AnswerLog(answers_dir).read()  # one row per question, even after an interrupted compaction
    rounds = t.column("round").to_numpy()
    same = t.column("answer").to_numpy() == 1
    per_round = {int(r): round(float(same[rounds == r].mean()), 3) for r in np.unique(rounds)}
    return {"answers": t.num_rows, "positives": int(same.sum()), "positive_rate_per_round": per_round}


def reward_by_answer(strategy_pt: Path, answers: int) -> dict | None:
    """Over the run's own ``answers`` transitions: the newest ones in the replay ring (a warm-started
    agent's buffer also holds its warm-up on the labelled images, which came first)."""
    state = torch.load(strategy_pt, map_location="cpu", weights_only=True)
    if "agent" not in state:
        return None
    replay = state["agent"]["replay"]
    size, pos, cap = int(replay["size"]), int(replay["pos"]), int(replay["capacity"])
    n = min(answers, size)
    idx = (pos - n + np.arange(n)) % cap if size == cap else np.arange(size - n, size)
    ns = replay["next_mask"].shape[1]
    action = replay["action"].numpy()[idx]
    reward = replay["reward"].numpy()[idx]
    # the observation ends with the ns answers (+1/-1/0); the next one holds the answer just given
    y = replay["next_obs"].numpy()[idx, -ns:][np.arange(n), action]
    bands = {}
    for lo, hi in BANDS:
        sel = (action >= lo) & (action < hi)
        if sel.any():
            label = f"{lo}-{hi - 1}" if hi < BANDS[-1][1] else f"{lo}+"
            bands[label] = {"n": int(sel.sum()), "mean_reward": round(float(reward[sel].mean()), 3),
                            "same_share": round(float((y[sel] == 1).mean()), 3)}
    out: dict = {"by_position": bands}
    for name, sel in (("same", y == 1), ("different", y == -1)):
        out[name] = {"n": int(sel.sum()), "mean_reward": round(float(reward[sel].mean()), 3) if sel.any() else None,
                     "zero_share": round(float((reward[sel] == 0).mean()), 3) if sel.any() else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", help="a folder written by active_compare.py (its --out/<name>)")
    p.add_argument("--name", required=True, help="results/answer_stats_<name>.json")
    args = p.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        p.error(f"runs folder {root} does not exist")
    rows = []
    for answers in sorted(root.rglob("answers")):
        run = answers.parent
        if not any(answers.glob("*.parquet")):
            continue
        row = {"run": str(run.relative_to(root)), **positive_rates(answers)}
        if (run / "strategy.pt").is_file():
            row["reward_by_answer"] = reward_by_answer(run / "strategy.pt", row["answers"])
        rows.append(row)
        rates = " ".join(f"{v:.3f}" for v in row["positive_rate_per_round"].values())
        line = f"{row['run']:<32} answers {row['answers']:5d}  same {row['positives']:4d}  same-rate/round {rates}"
        rba = row.get("reward_by_answer")
        if rba:
            line += "  Eq.9 reward same {mean_reward} (zero {zero_share})".format(**rba["same"])
            line += "  different {mean_reward} (zero {zero_share})".format(**rba["different"])
        print(line)
        if rba and rba["by_position"]:
            bands = (f"{k}: n {v['n']} reward {v['mean_reward']:.3f} same {v['same_share']:.2f}"
                     for k, v in rba["by_position"].items())
            print("    by position: " + "  ".join(bands))
    if not rows:
        print(f"no answer logs under {root}", file=sys.stderr)
        return 1
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"answer_stats_{args.name}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
