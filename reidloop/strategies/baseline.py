"""Baseline (DRAL §4.2): the pre-trained CNN used as is — no question, no fine-tuning."""
from __future__ import annotations

from .base import Strategy


class BaselineStrategy(Strategy):
    name = "baseline"
    asks_questions = False
    finetune = "none"

    def select(self, env, obs, mask) -> int:
        raise RuntimeError("the Baseline asks no questions")
