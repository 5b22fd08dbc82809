"""What a resumed run may change in its config: the one place that decides.

A run folder resumes from its answer log and round checkpoints; a config that changes what the run
learns or asks (strategy, DRAL's parameters, the budget, the fine-tune, the data split, seeds...) would
silently mix two experiments in one folder, so it is refused, naming every field that differs. Only
where things are and how fast they run may change: ``OPERATIONAL`` lists those fields.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .loader import ConfigError, from_dict, to_dict

# Fields a resumed run may change: locations, parallelism and I/O cadence. Anything else is refused.
OPERATIONAL = frozenset({
    "output_dir",  # the folder was moved
    "data.root", "warmstart_root",  # the datasets were moved
    "data.num_workers", "eval.batch_size",  # data-loader processes, inference batch: same features
    "oracle.flush_every",  # answers per durable part
    "oracle.lease_s",  # human mode: how long a question handed to an annotator stays theirs
    "annotator.host", "annotator.port", "annotator.token_file", "annotator.read_token_file",  # where the page is
    "pretrain.log_every",
    "ray.address", "ray.storage_path", "ray.max_failures", "ray.actor_max_restarts",
    "ray.train_workers", "ray.cpus_per_train_worker", "ray.use_gpu",  # a bigger or smaller cluster
})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def changed_fields(saved: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) of every non-operational field that differs."""
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in OPERATIONAL and a.get(k) != b.get(k)]


def check_resume(path: str | Path, new: Any) -> None:
    """ConfigError naming the differing fields if ``new`` may not resume the run whose config is ``path``.

    The saved config is read through the same typed loader (defaults added since it was written compare
    equal); a saved config that no longer loads is refused too, naming the file.
    """
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
        current = _flatten(to_dict(new))
        for dotted in OPERATIONAL:  # never compared, so never a reason to refuse (e.g. a moved dataset that
            *parents, leaf = dotted.split(".")  # no longer exists): the saved value is read as the new one,
            node = tree  # not dropped, since a dropped required field (data.root of a real dataset) fails
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                node[leaf] = current.get(dotted)
        saved = from_dict(type(new), tree)
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"{path}: the resumed run's saved config cannot be read ({exc}); "
                          "use a new output_dir, or restore the file") from None
    diff = changed_fields(saved, new)
    if diff:
        fields = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
        raise ConfigError(f"{path.parent}: cannot resume with a changed config ({fields}). A run folder holds one "
                          f"experiment: use a new output_dir, or the saved config ({path}). Only "
                          f"{', '.join(sorted(OPERATIONAL))} may change on resume")
