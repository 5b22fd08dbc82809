"""The image-classification active-learning experiment of L2R-AL (§IV-A) on a CIFAR-10 folder.

One run = one acquisition strategy × one seed. Cycle c = 0..cycles−1: train the target model on the
labelled set (SGD on Eq. 2, the strategy's loss-prediction module beside it), measure test accuracy
and — for strategies with a module — the Spearman correlation between predicted and true test losses
(Fig. 5); then, except after the last cycle, score a random subset of the unlabelled pool and label
the strategy's ``per_cycle`` picks. With one seed every strategy starts from the same initial set,
model initialisation and test subset, and draws its subsets from the same random stream (§IV-A).
The runs of every strategy × seed are then summarised (mean ± std over seeds) in tables and a plot.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config.l2r import L2RExperimentJob
from ..engine.precision import resolve_device
from .acquisition import AcquisitionInputs, build_acquisition
from .cifar import Augment, CifarData
from .classifier import build_classifier, forward_all, train_cycle
from .loss_module import LossLearner
from .sorter import GRUSorter, spearman


@dataclass
class CycleResult:
    cycle: int
    labelled: int
    accuracy: float  # test accuracy, %
    spearman: Optional[float]  # predicted vs true test losses (Fig. 5); None without a module
    target_loss: float
    module_loss: Optional[float]
    seconds: float


@dataclass
class RunResult:
    strategy: str
    seed: int
    cycles: list[CycleResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_strategy(job: L2RExperimentJob, strategy: str, seed: int, data: CifarData,
                 sorter: Optional[GRUSorter] = None,
                 progress: Optional[Callable[[CycleResult], None]] = None) -> RunResult:
    """One active-learning run of ``strategy`` with ``seed`` (§IV-A protocol from ``job.protocol``)."""
    p, cfg = job.protocol, job.train
    n_pool = len(data.train_labels)
    need = p.initial + (p.cycles - 1) * p.per_cycle
    if need > n_pool:
        raise ValueError(f"protocol: {p.initial} + {p.cycles - 1}×{p.per_cycle} = {need} labels exceed the pool "
                         f"of {n_pool} images")
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ValueError(f"train.{exc}") from None
    acq = build_acquisition(strategy, job.module, sorter)
    images, labels, test_x, test_y = (_tensor(a, device) for a in (data.train_images, data.train_labels,
                                                                     data.test_images, data.test_labels))
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in data.channel_stats())
    augment = Augment(mean, std, job.data.crop_padding, job.data.flip)
    g = torch.Generator().manual_seed(seed)
    labelled = np.sort(np.random.default_rng([seed, 0]).choice(n_pool, p.initial, replace=False))
    pick_rng = np.random.default_rng([seed, 2])

    def fresh(cycle: int) -> tuple[nn.Module, Optional[LossLearner]]:
        torch.manual_seed(seed * 1000 + cycle)
        model = build_classifier(cfg).to(device)
        learner = acq.make_learner(list(model.channels))
        return model, learner.to(device) if learner is not None else None

    model, learner = fresh(0)
    result = RunResult(strategy, seed)
    for cycle in range(p.cycles):
        start = time.perf_counter()
        if cycle and cfg.reinit_each_cycle:
            model, learner = fresh(cycle)
        stats = train_cycle(model, learner, images, labels, labelled, cfg, augment, g, job.module.lr)
        test = forward_all(model, learner, test_x, np.arange(len(test_y)), augment, labels=test_y)
        acc = 100.0 * float((test["probs"].argmax(1) == data.test_labels).mean())
        rho = None
        if learner is not None:
            rho = float(spearman(torch.as_tensor(test["predicted_loss"]), torch.as_tensor(test["loss"])))
        n_labelled = len(labelled)
        if cycle < p.cycles - 1:
            picks = query(acq, model, learner, images, labelled, augment, p.subset, p.per_cycle,
                          np.random.default_rng([seed, 1, cycle]), pick_rng)
            labelled = np.concatenate([labelled, picks])
        row = CycleResult(cycle, n_labelled, acc, rho, stats["target_loss"],
                          stats["module_loss"] if learner is not None else None, time.perf_counter() - start)
        result.cycles.append(row)
        if progress is not None:
            progress(row)
    return result


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor over ``a`` (copied when read-only, e.g. an array shared through Ray's object store)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def query(acq, model: nn.Module, learner: Optional[LossLearner], images: torch.Tensor, labelled: np.ndarray,
          augment: Augment, subset_size: int, k: int, subset_rng: np.random.Generator,
          pick_rng: np.random.Generator) -> np.ndarray:
    """§III-E: score a random subset of the unlabelled pool; return the pool indices of the ``k`` picks."""
    unlabelled = np.setdiff1d(np.arange(len(images)), labelled)
    subset = subset_rng.permutation(unlabelled)[:subset_size]
    out = forward_all(model, learner, images, subset, augment) if acq.requires else {}
    inputs = AcquisitionInputs(size=len(subset), probs=out.get("probs"), embeddings=out.get("embeddings"),
                               predicted_loss=out.get("predicted_loss"))
    if "labelled_embeddings" in acq.requires:
        inputs.labelled_embeddings = forward_all(model, learner, images, labelled, augment)["embeddings"]
    return subset[acq.select(inputs, k, pick_rng)]


# --------------------------------------------------------------- reports
def aggregate(runs: Sequence[dict], key: str) -> dict[str, list[tuple[int, float, float, int]]]:
    """Per strategy, per cycle: (labelled, mean, sample std, n_runs) of ``key`` over seeds (None values skipped)."""
    out: dict[str, list[tuple[int, float, float, int]]] = {}
    for name in dict.fromkeys(r["strategy"] for r in runs):
        cycles = [r["cycles"] for r in runs if r["strategy"] == name]
        rows = []
        for c in range(max(len(cs) for cs in cycles)):
            vals = [cs[c][key] for cs in cycles if len(cs) > c and cs[c][key] is not None]
            if vals:
                labelled = next(cs[c]["labelled"] for cs in cycles if len(cs) > c)
                rows.append((labelled, float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                             len(vals)))
        if rows:
            out[name] = rows
    return out


def markdown_table(agg: dict[str, list[tuple[int, float, float, int]]], fmt: str = "{:.2f} ± {:.2f}") -> str:
    """Strategies × labelled-set sizes, cells ``mean ± std``."""
    if not agg:
        return "(no run has this value)"
    sizes = sorted({row[0] for rows in agg.values() for row in rows})
    lines = ["| strategy | " + " | ".join(str(s) for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name, rows in agg.items():
        cell = {row[0]: fmt.format(row[1], row[2]) for row in rows}
        lines.append(f"| {name} | " + " | ".join(cell.get(s, "—") for s in sizes) + " |")
    return "\n".join(lines)


def plot_results(runs: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Left: test accuracy (mean ± std over seeds) against labelled images; right: test-loss Spearman (Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r["strategy"] for r in runs))}
    for ax, key, ylabel in ((axes[0], "accuracy", "test accuracy (%)"),
                            (axes[1], "spearman", "Spearman, predicted vs true test loss")):
        for name, rows in aggregate(runs, key).items():
            x, m, s = (np.array([r[i] for r in rows]) for i in range(3))
            ax.plot(x, m, "o-", label=name, ms=3, color=colours[name])
            ax.fill_between(x, m - s, m + s, alpha=0.15, color=colours[name])
        ax.set_xlabel("labelled images")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
