"""Every YAML in tune_configs/ loads into its typed config (with the required folder given)."""
from pathlib import Path

import pytest

from reidloop.config import ConfigError, LoopJob, PretrainJob, load_config

ROOT = Path(__file__).resolve().parents[1] / "tune_configs"
KIND = {"pretrain_": PretrainJob}


def kind(path: Path):
    return next((cls for prefix, cls in KIND.items() if path.name.startswith(prefix)), LoopJob)


@pytest.mark.parametrize("path", sorted(p for p in ROOT.glob("*.yaml")
                                        if not p.name.startswith(("serve", "sweep", "l2r_"))), ids=lambda p: p.name)
def test_config_loads(path, tmp_path):
    try:
        cfg = load_config(kind(path), path)
    except ConfigError as exc:
        assert "root" in str(exc) and str(path) in str(exc)  # the dataset folder is the one thing to give
        cfg = load_config(kind(path), path, [f"data.root={tmp_path}"])
    assert cfg.data.height >= 16


def test_paper_defaults_file_is_the_paper():
    job = load_config(LoopJob, ROOT / "dral_paper.yaml", ["data.root=/x"])
    d = job.dral
    assert (d.kmax, d.ns, d.kappa, d.thred, d.margin, d.hidden, d.layers, d.policy_lr) == \
        (10, 30, 15, 0.4, 0.2, 256, 3, 2e-2)
    assert (job.finetune.lr, job.finetune.every) == (5e-6, 0.25)
    assert (job.model.backbone, job.data.height, job.data.width, job.pretrain.epochs, job.pretrain.lr) == \
        ("resnet50", 256, 128, 60, 5e-4)
