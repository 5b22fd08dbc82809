"""The image-classification active-learning experiment of L2R-AL (§IV-A) on a CIFAR-10 folder.

One run = one acquisition strategy × one seed. Cycle c = 0..cycles−1: train the target model on the
labelled set (SGD on Eq. 2, the strategy's loss-prediction module beside it), measure test accuracy
and — for strategies with a module — the Spearman correlation between predicted and true test losses
(Fig. 5); then, except after the last cycle, score a random subset of the unlabelled pool and label
the strategy's ``per_cycle`` picks. With one seed every strategy starts from the same initial set,
model initialisation and test subset, and draws its subsets from the same random stream (§IV-A).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.l2r import CifarDataConfig, L2RExperimentJob, TargetTrainConfig
from ..data.images import list_images, load_image, require_dir
from ..data.records import DatasetError
from .acquisition import AcquisitionInputs, build_acquisition
from .loss_module import LossLearner
from .sorter import GRUSorter, spearman

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ------------------------------------------------------------------ data
@dataclass
class CifarData:
    train_images: np.ndarray  # (N, 32, 32, 3) uint8 — the pool
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray

    def channel_stats(self, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the pool in [0, 1] (§IV-A normalisation), accumulated in chunks."""
        s, s2 = np.zeros(3), np.zeros(3)
        for i in range(0, len(self.train_images), chunk):
            x = self.train_images[i:i + chunk].reshape(-1, 3).astype(np.float64) / 255.0
            s += x.sum(0)
            s2 += np.square(x).sum(0)
        n = len(self.train_images) * 32 * 32
        mean = s / n
        return mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))


def list_cifar_split(root: str | Path, split: str, per_class: Optional[int] = None) -> tuple[list[Path], np.ndarray]:
    """The image files of ``root/split/<class>/`` (first ``per_class`` by name per class) and their labels."""
    folder = require_dir(Path(root) / split, f"CIFAR-10 {split} folder")
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        found = list_images(require_dir(folder / name, f"CIFAR-10 class folder ({split})"))[:per_class]
        if not found:
            raise DatasetError(f"{folder / name}: no images")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def decode(files: Sequence[Path]) -> np.ndarray:
    """32×32 RGB image files → uint8 (N, 32, 32, 3); a missing, broken or wrongly sized file is named."""
    images = []
    for f in files:
        img = load_image(f)
        if img.size != (32, 32):
            raise DatasetError(f"{f}: expected a 32x32 CIFAR image, got {img.size[0]}x{img.size[1]}")
        images.append(np.asarray(img, dtype=np.uint8))
    return np.stack(images)


def load_cifar(cfg: CifarDataConfig) -> CifarData:
    """The pool (first ``train_per_class`` per class) and the test set (a fixed random ``test_size`` subset)."""
    train_files, ytr = list_cifar_split(cfg.root, "train", cfg.train_per_class)
    test_files, yte = list_cifar_split(cfg.root, "test")
    if cfg.test_size is not None and cfg.test_size < len(yte):
        keep = np.sort(np.random.default_rng(2019).choice(len(yte), cfg.test_size, replace=False))
        test_files, yte = [test_files[i] for i in keep], yte[keep]
    return CifarData(decode(train_files), ytr, decode(test_files), yte)


class Augment:
    """§IV-A: random 32×32 crop of the zero-padded image, random horizontal flip, per-channel normalisation."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, padding: int, flip: bool) -> None:
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.padding, self.flip = padding, flip

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 32, 32, 3) → normalised float (B, 3, 32, 32)."""
        return (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.normalise(x)
        b, _, h, w = x.shape
        if self.padding:
            p = self.padding
            xp = F.pad(x, (p, p, p, p))  # zero padding of the normalised image, as torchvision's RandomCrop
            oy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            x = xp[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            x = torch.where((torch.rand(b, generator=g) < 0.5).to(x.device).view(b, 1, 1, 1), x.flip(3), x)
        return x


# ---------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class CifarResNet18(nn.Module):
    """The CIFAR ResNet-18 of LL4AL and L2R-AL (3×3 stem, no max-pool, blocks of 64/128/256/512)."""

    channels = (64, 128, 256, 512)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cin, layers = 64, []
        for i, c in enumerate(self.channels):
            layers.append(nn.Sequential(BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)))
            cin = c
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, [output of each block]); the last block's output feeds GAP → FC."""
        feats, out = [], self.stem(x)
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        return self.fc(out.mean(dim=(2, 3))), feats


class SmallCNN(nn.Module):
    """A CPU-sized target model: three conv-BN-ReLU-maxpool blocks (w, 2w, 4w channels), GAP, FC."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.channels = (width, 2 * width, 4 * width)
        cin, blocks = 3, []
        for c in self.channels:
            blocks.append(nn.Sequential(nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats, out = [], x
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        return self.fc(out.mean(dim=(2, 3))), feats


def build_classifier(cfg: TargetTrainConfig, num_classes: int = len(CLASSES)) -> nn.Module:
    return CifarResNet18(num_classes) if cfg.model == "resnet18" else SmallCNN(cfg.width, num_classes)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r} but CUDA is not available")
    return torch.device(name)


# -------------------------------------------------------------- training
def train_cycle(model: nn.Module, learner: Optional[LossLearner], images: torch.Tensor, labels: torch.Tensor,
                labelled: np.ndarray, cfg: TargetTrainConfig, augment: Augment, g: torch.Generator,
                module_lr: float) -> dict[str, float]:
    """Train the target model on Eq. 2 (and the learner's module on its own loss) for ``cfg.epochs``.

    One backward pass per batch on ``l_target + weight · l_module``: L2R-AL's module sees detached
    features, so its rank loss (Eq. 6) updates only the module and Eq. 2 only the target model.
    """
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, 0.1)
    if learner is not None:
        learner.optimizer = torch.optim.Adam(learner.module.parameters(), lr=module_lr)
        learner.module.train()
    model.train()
    n = len(labelled)
    bs = min(cfg.batch_size, n - n % 2)  # LL4AL pairs the batch up: keep it even
    idx = torch.as_tensor(labelled, device=images.device)
    stats = {"target_loss": 0.0, "module_loss": 0.0}
    for epoch in range(cfg.epochs):
        perm = idx[torch.randperm(n, generator=g).to(images.device)]
        totals, batches = [0.0, 0.0], n // bs
        for b in range(batches):
            bi = perm[b * bs:(b + 1) * bs]
            logits, feats = model(augment(images[bi], g))
            per_sample = F.cross_entropy(logits, labels[bi], reduction="none")
            loss = per_sample.mean()  # Eq. 2
            totals[0] += float(loss.detach())
            if learner is not None:
                module_loss = learner.loss(feats, per_sample, epoch)
                totals[1] += float(module_loss.detach())
                loss = loss + learner.weight * module_loss
                learner.optimizer.zero_grad(set_to_none=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if learner is not None:
                learner.optimizer.step()
        sched.step()
        stats = {"target_loss": totals[0] / batches, "module_loss": totals[1] / batches}
    return stats


@torch.no_grad()
def forward_all(model: nn.Module, learner: Optional[LossLearner], images: torch.Tensor, idx: np.ndarray,
                augment: Augment, labels: Optional[torch.Tensor] = None, batch: int = 500) -> dict[str, np.ndarray]:
    """Eval-mode outputs over ``images[idx]``: probs, embeddings (GAP of the last block), predicted and true losses."""
    model.eval()
    if learner is not None:
        learner.module.eval()
    out: dict[str, list] = {"probs": [], "embeddings": [], "predicted_loss": [], "loss": []}
    t = torch.as_tensor(idx, device=images.device)
    for s in range(0, len(t), batch):
        bi = t[s:s + batch]
        logits, feats = model(augment.normalise(images[bi]))
        out["probs"].append(logits.softmax(1).cpu())
        out["embeddings"].append(feats[-1].mean(dim=(2, 3)).cpu())
        if learner is not None:
            out["predicted_loss"].append(learner.predict(feats).cpu())
        if labels is not None:
            out["loss"].append(F.cross_entropy(logits, labels[bi], reduction="none").cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


# ------------------------------------------------------------------ runs
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
    device = resolve_device(cfg.device)
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
        if learner is not None:
            learner.module.to(device)
        return model, learner

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
