"""The records every dataset reader yields, and the splits it returns."""
from __future__ import annotations

from dataclasses import dataclass, field


class DatasetError(ValueError):
    """A dataset folder or image is missing, empty or unreadable; the message names the path."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    pid: int  # person id as in the source (junk = -1; distractors keep the source's id, e.g. 0)
    camid: int  # 0-based camera index


@dataclass
class ReidSplits:
    """Train / query / gallery lists of one dataset, deterministic for a seed."""

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    meta: dict = field(default_factory=dict)

    @property
    def train_pids(self) -> list[int]:
        return sorted({r.pid for r in self.train})

    def summary(self) -> str:
        def row(name, recs):
            return f"  {name:<8}{len({r.pid for r in recs}):>7}{len(recs):>9}{len({r.camid for r in recs}):>9}"

        lines = [f"{self.name}", "  subset      ids   images  cameras",
                 row("train", self.train), row("query", self.query), row("gallery", self.gallery)]
        return "\n".join(lines)

    def check_nonempty(self, root: str) -> None:
        for name in ("train", "query", "gallery"):
            if not getattr(self, name):
                raise DatasetError(f"{root}: the {name} split of {self.name} is empty")
