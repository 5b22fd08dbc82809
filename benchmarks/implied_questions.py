"""Count the questions of finished runs whose answer the earlier answers already implied.

    .venv/bin/python benchmarks/implied_questions.py runs/bench_active/synthetic_noinfer --name noinfer

Walks the folder for answer logs (``answers/`` of each run), replays each log in question order through
:class:`reidloop.pair_knowledge.PairKnowledge` and counts the questions that were settled by
transitivity when they were asked ("same" is transitive; "different" spreads over groups). With
``infer_answers: true`` (the default) the count is 0 by construction; run it on logs made with
``--set infer_answers=false`` to see what inference saves. Prints a table and writes
benchmarks/results/implied_<name>.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reidloop.answer_log import AnswerLog
from reidloop.pair_knowledge import PairKnowledge


def count_implied(log_dir: Path) -> dict:
    table = AnswerLog(log_dir).read().sort_by("question_id")
    q, c, y = (table.column(n).to_pylist() for n in ("query", "candidate", "answer"))
    knowledge = PairKnowledge(max(q + c, default=-1) + 1)
    row = {"answers": len(y), "positives": 0, "implied_positives": 0, "negatives": 0, "implied_negatives": 0}
    for a, b, ans in zip(q, c, y):
        kind = "positives" if ans > 0 else "negatives"
        row[kind] += 1
        if knowledge.infer(a, b) is not None:
            row["implied_" + kind] += 1
        else:
            knowledge.add(a, b, ans)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a folder holding finished runs (searched for answers/ folders)")
    p.add_argument("--name", required=True)
    args = p.parse_args()
    logs = sorted(d for d in args.root.rglob("answers") if d.is_dir())
    if not logs:
        raise SystemExit(f"no answers/ folder under {args.root}")
    rows = []
    print(f"{'run':45s} {'answers':>8s} {'pos':>5s} {'implied':>8s} {'neg':>5s} {'implied':>8s} {'share':>6s}")
    for d in logs:
        r = {"run": str(d.parent.relative_to(args.root)), **count_implied(d)}
        r["implied_share"] = round((r["implied_positives"] + r["implied_negatives"]) / max(r["answers"], 1), 4)
        rows.append(r)
        print(f"{r['run']:45s} {r['answers']:8d} {r['positives']:5d} {r['implied_positives']:8d} "
              f"{r['negatives']:5d} {r['implied_negatives']:8d} {r['implied_share']:6.1%}")
    out = Path("benchmarks/results") / f"implied_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"root": str(args.root), "rows": rows}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
