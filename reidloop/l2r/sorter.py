"""The differentiable sorter of L2R-AL (§III-B, Fig. 3): a bidirectional GRU that maps a list of
values to their (normalised) ranks, pre-trained on synthetic lists (SoDeep, Engilberge et al. 2019).

Ranks are ascending and normalised to [0, 1]: the smallest value of a list of length d has rank 0,
the largest rank 1 (``rk(x)_i = #{j: x_j < x_i} / (d − 1)``), so "higher loss → higher rank" (§III-E)
and lists of different lengths share one scale. The sorter standardises each input list
(zero mean, unit variance) before the GRU, so it is invariant to the scale and offset of the values —
the predicted losses of §III-A change scale as the target model learns.

Once trained and frozen, it turns the predicted losses of a batch into ranks through which the
rank loss of Eq. 5–6 back-propagates (:func:`reidloop.l2r.loss_module.rank_loss`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..config.l2r import DISTRIBUTIONS, SorterConfig
from ..config.loader import ConfigError, from_dict, to_dict


class GRUSorter(nn.Module):
    """BiGRU(1 → hidden, ``layers``) + a per-position linear read-out: (B, d) values → (B, d) ranks."""

    def __init__(self, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.rnn = nn.GRU(1, hidden, layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(f"the sorter takes (batch, length >= 2) values, got shape {tuple(x.shape)}")
        z = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
        h, _ = self.rnn(z.unsqueeze(-1))
        return self.out(h).squeeze(-1)


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ascending ranks along the last dimension, normalised to [0, 1] (ties: order of appearance)."""
    d = x.shape[-1]
    r = torch.argsort(torch.argsort(x, dim=-1, stable=True), dim=-1).to(torch.float32)
    return r / max(d - 1, 1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation (Eq. 3) between ``a`` and ``b`` along the last dimension."""
    if a.shape != b.shape or a.shape[-1] < 2:
        raise ValueError(f"spearman needs two lists of one shape and length >= 2, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    ra, rb = ranks(a.float()), ranks(b.float())
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / ((ra.square().sum(-1) * rb.square().sum(-1)).sqrt() + 1e-12)


def synthetic_sequences(n: int, length: int, generator: torch.Generator,
                        distributions: tuple[str, ...] | list[str] = DISTRIBUTIONS) -> torch.Tensor:
    """``n`` random lists of ``length`` values, each drawn from one of ``distributions`` (SoDeep's data).

    ``arange`` is an evenly spaced (shuffled) list, ``mixed`` a list whose two parts come from a uniform
    and a normal law; every list gets a random scale and offset.
    """
    unknown = [d for d in distributions if d not in DISTRIBUTIONS]
    if unknown or not distributions:
        raise ValueError(f"distributions: {list(distributions)!r} must be a non-empty list of {list(DISTRIBUTIONS)}")
    g = generator
    kind = torch.randint(len(distributions), (n,), generator=g)
    u = torch.rand(n, length, generator=g)
    z = torch.randn(n, length, generator=g)
    table = {
        "uniform": u,
        "normal": z,
        "exponential": -torch.log1p(-u * (1 - 1e-7)),
        "lognormal": torch.exp(z),
        "bimodal": z * 0.3 + torch.where(torch.rand(n, 1, generator=g) < 0.5, 1.0, -1.0)
        * torch.where(u < torch.rand(n, 1, generator=g), 1.0, -1.0),
        "arange": torch.argsort(u, dim=1).float(),
        "mixed": torch.where(torch.arange(length) < torch.randint(1, length + 1, (n, 1), generator=g), u * 2 - 1, z),
    }
    x = torch.empty(n, length)
    for i, name in enumerate(distributions):
        sel = kind == i
        x[sel] = table[name][sel]
    scale = torch.exp(torch.randn(n, 1, generator=g))
    return x * scale + torch.randn(n, 1, generator=g) * 3


def _lengths(cfg: SorterConfig, generator: torch.Generator) -> int:
    lo, hi = cfg.lengths
    return int(torch.randint(lo, hi + 1, (1,), generator=generator)) if lo < hi else hi


def train_sorter(cfg: SorterConfig, progress: Optional[Callable[[int, float], None]] = None,
                 device: str | torch.device = "cpu") -> GRUSorter:
    """Pre-train a sorter on fresh synthetic lists with SoDeep's L1 loss on the ranks; returns it frozen, on CPU.

    On a CPU it trains with one intra-op thread: a small GRU is bound by its sequential steps, and
    extra threads only contend (several-fold slower on a shared machine).
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        sorter = GRUSorter(cfg.hidden, cfg.layers).to(device)
        opt = torch.optim.Adam(sorter.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, 0.5)
        for step in range(cfg.steps):
            x = synthetic_sequences(cfg.batch_size, _lengths(cfg, g), g, cfg.distributions).to(device)
            loss = (sorter(x) - ranks(x)).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step, float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return freeze(sorter.cpu())


def freeze(sorter: GRUSorter) -> GRUSorter:
    """Eval mode, no parameter gradients: gradients still flow through it to its input (Fig. 3)."""
    sorter.eval()
    for p in sorter.parameters():
        p.requires_grad_(False)
        p.grad = None
    return sorter


@torch.no_grad()
def evaluate_sorter(sorter: GRUSorter, cfg: SorterConfig, length: Optional[int] = None,
                    n: Optional[int] = None, seed: int = 10_000) -> dict[str, float]:
    """Mean Spearman correlation and L1 rank error of the sorter on held-out synthetic lists.

    The held-out lists come from a generator seeded apart from training (``seed`` ≠ ``cfg.seed``).
    """
    if seed == cfg.seed:
        raise ValueError(f"seed {seed} is the training seed: held-out lists must use another")
    g = torch.Generator().manual_seed(seed)
    length = length or cfg.seq_len
    x = synthetic_sequences(n or cfg.eval_sequences, length, g, cfg.distributions)
    pred = sorter(x)
    return {"spearman": float(spearman(pred, x).mean()), "l1": float((pred - ranks(x)).abs().mean()),
            "length": float(length)}


def save_sorter(path: str | Path, sorter: GRUSorter, cfg: SorterConfig, metrics: Optional[dict] = None) -> None:
    """Write the sorter's weights with its config (and held-out metrics) to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "l2r_sorter", "config": to_dict(cfg), "state_dict": sorter.state_dict(),
                "metrics": metrics or {}}, path)


def load_sorter(path: str | Path) -> tuple[GRUSorter, SorterConfig]:
    """Read a checkpoint of :func:`save_sorter`; returns the frozen sorter and its config."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sorter checkpoint {p} does not exist (train one: python -m trainers.train_sorter)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one clear message
        raise ValueError(f"{p}: not a readable torch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "l2r_sorter":
        raise ValueError(f"{p}: not a sorter checkpoint (no kind='l2r_sorter'); was it written by save_sorter?")
    try:
        cfg = from_dict(SorterConfig, ckpt["config"])
    except ConfigError as exc:
        raise ValueError(f"{p}: bad sorter config: {exc}") from None
    sorter = GRUSorter(cfg.hidden, cfg.layers)
    sorter.load_state_dict(ckpt["state_dict"])
    return freeze(sorter), cfg


def sorter_summary(metrics: dict[str, float]) -> str:
    return (f"held-out Spearman {metrics['spearman']:.4f}, L1 rank error {metrics['l1']:.4f} "
            f"(length {int(metrics['length'])})")

