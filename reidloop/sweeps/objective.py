"""What a sweep trial reports after each round of the loop (pure; the trial calls ``tune.report``).

The loop's ``rounds.parquet`` rows (round 0 = the pre-trained CNN) carry the test metrics and the
human answers used so far; from them the report adds ``answers_to_target`` — the annotation cost of
reaching a target mAP, the quantity DRAL's Fig. 4/5 compare strategies by (accuracy per answer).
"""
from __future__ import annotations

from pathlib import Path

from ..active.checkpoints import read_state

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def answers_to_target(rows: list[dict], target_map: float) -> float | None:
    """Answers used at the first round whose mAP reached ``target_map``; None if none did."""
    reached = [r["answers"] for r in rows if r["mAP"] >= target_map]
    return float(min(reached)) if reached else None


def round_report(rows: list[dict], rounds_total: int, target_map: float | None = None,
                 unreached: float = 1.0e6) -> dict:
    """The metrics of the latest round (``rows[-1]``), as reported to Tune."""
    last = rows[-1]
    report = {"round": int(last["round"]), "rounds_total": int(rounds_total), "answers": int(last["answers"]),
              **{k: float(last[k]) for k in METRICS if k in last},
              "finetune_seconds": float(last.get("finetune_seconds", 0.0))}
    if target_map is not None:
        got = answers_to_target(rows, target_map)
        report["target_reached"] = got is not None
        report["answers_to_target"] = got if got is not None else float(unreached)
    return report


def completed_round(loop_dir: str | Path) -> int:
    """The last round whose checkpoint the loop wrote in ``loop_dir`` (0: none)."""
    state = read_state(Path(loop_dir))
    return 0 if state is None else int(state["completed_round"])
