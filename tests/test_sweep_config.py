"""Sweep specifications: loading, validation before launch, and the pure result helpers (no Ray)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from reidloop.config import ConfigError, LoopJob, load_config
from reidloop.config.sweep import SEARCHERS, load_sweep
from reidloop.sweeps import (answers_to_target, best_trial, plot_objective, round_report, trial_status,
                             trials_table, write_best_config, write_tables)

ROOT = Path(__file__).resolve().parents[1] / "tune_configs"
BASE = {"data": {"dataset": "synthetic", "height": 32, "width": 16},
        "model": {"backbone": "resnet18"}, "dral": {"ns": 10, "kmax": 3, "kappa": 5},
        "finetune": {"every": 0.5}}


def write_sweep(tmp_path: Path, **fields) -> Path:
    """A sweep file whose base job is a YAML beside it; ``fields`` replace the defaults below."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    tree = {"name": "t", "storage_path": str(tmp_path / "sweeps"), "base": "base.yaml",
            "space": {"dral.kmax": {"grid": [2, 3]}}, "search": {"algorithm": "grid"}} | fields
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("path", sorted(ROOT.glob("sweep_*.yaml")), ids=lambda p: p.name)
def test_repo_sweep_files_load(path, tmp_path):
    try:
        sweep = load_sweep(path)
    except ConfigError as exc:  # GPU/real-data sweeps need the dataset folder, as the main job does
        assert "root" in str(exc) and str(path) in str(exc)
        sweep = load_sweep(path, [f"overrides.data.root={tmp_path}"])
    assert len(sweep.space) >= 2 and sweep.rounds >= 2
    assert Path(sweep.config.storage_path).is_absolute()


def test_paper_sweep_covers_the_dral_hyperparameters(tmp_path):
    sweep = load_sweep(ROOT / "sweep_paper.yaml", [f"overrides.data.root={tmp_path}"])
    assert {"dral.kmax", "dral.ns", "dral.kappa", "dral.thred", "dral.margin", "dral.policy_lr",
            "finetune.lr"} <= set(sweep.space)
    assert sweep.config.scheduler.type == "asha" and sweep.config.resources.gpu > 0


@pytest.mark.parametrize("fields, field, why", [
    ({"space": {"dral.ns": {"grid": [4, 10]}, "dral.kmax": {"grid": [3, 5]}}}, "dral.kmax", "ns=4"),
    ({"space": {"dral.kappa": {"grid": [5, 12]}}}, "dral.kappa", "ns=10"),
    ({"space": {"dral.thred": {"uniform": [0.2, 1.2]}}, "search": {"algorithm": "random"}}, "dral.thred", "[0, 1]"),
    ({"space": {"dral.margin": {"grid": [0.1, -0.1]}}}, "dral.margin", ">= 0"),
    ({"space": {"dral.kmaxx": {"grid": [2]}}}, "space.dral.kmaxx", "unknown parameter"),
    ({"space": {"dral": {"grid": [2]}}}, "space.dral", "whole section"),
    ({"space": {"output_dir": {"grid": ["a"]}}}, "space.output_dir", "cannot be swept"),
    ({"space": {"dral.kmax": {"normal": [2, 3]}}}, "space.dral.kmax", "unknown distribution"),
    ({"space": {"dral.kmax": {"uniform": [2, 3]}}, "search": {"algorithm": "random"}}, "dral.kmax", "randint"),
    ({"space": {"dral.thred": {"uniform": [0.5, 0.2]}}, "search": {"algorithm": "random"}}, "dral.thred", "< high"),
    ({"space": {"finetune.lr": {"loguniform": [0, 1e-3]}}, "search": {"algorithm": "random"}}, "finetune.lr", "> 0"),
    ({"space": {"dral.kmax": {"grid": ["three"]}}}, "space.dral.kmax.grid[0]", "expected int"),
    ({"space": {"dral.thred": {"uniform": [0.2, 0.5]}}}, "space.dral.thred", "algorithm grid"),
    ({"space": {"dral.kmax": {"grid": [2, 2]}}}, "space.dral.kmax.grid", "repeated"),
    ({"spaces": {}}, "spaces", "unknown key"),
    ({"search": {"algorithm": "simulated_annealing"}}, "search.algorithm", "not one of"),
    ({"objective": {"metric": "mAP", "mode": "min"}}, "objective.mode", "worst trial"),
    ({"objective": {"metric": "answers_to_target"}}, "objective.target_map", "must be set"),
    ({"scheduler": {"type": "asha", "grace_period": 3}}, "scheduler.grace_period", "2 rounds"),
    ({"resources": {"cpu": 0.5, "loop": "remote"}}, "resources.loop", "not one of"),
    ({"overrides": {"dral": {"kappa": 11}}}, "dral.kappa", "ns=10"),
    ({"base": "missing.yaml"}, "base", "not found"),
    ({"overrides": {"oracle": {"mode": "human"}}}, "oracle.mode", "must be 'simulated' in a sweep"),
    ({"space": {"oracle.mode": {"grid": ["simulated", "human"]}}}, "oracle.mode", "must be 'simulated' in a sweep"),
])
def test_invalid_sweeps_are_rejected_naming_file_and_field(tmp_path, fields, field, why):
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and field in msg and why in msg, msg


def test_a_combination_is_named_when_only_it_is_invalid(tmp_path):
    # every value is fine on its own with some ns; Kmax=8 with ns=6 is not
    path = write_sweep(tmp_path, space={"dral.ns": {"grid": [6, 12]}, "dral.kmax": {"grid": [3, 8]}})
    with pytest.raises(ConfigError, match=r"dral\.ns=6, dral\.kmax=8.*kmax: 8 must be in \[1, ns=6\]"):
        load_sweep(path)


@pytest.mark.skipif(importlib.util.find_spec("optuna") is not None, reason="optuna is installed")
def test_a_searcher_whose_package_is_missing_is_rejected(tmp_path):
    assert "optuna" in SEARCHERS
    path = write_sweep(tmp_path, search={"algorithm": "optuna"}, space={"dral.kmax": {"choice": [2, 3]}})
    with pytest.raises(ConfigError, match="search.algorithm.*pip install optuna"):
        load_sweep(path)


def test_values_are_typed_paths_absolute_and_jobs_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, search={"algorithm": "random"}, num_samples=3,
                       overrides={"data.root": "cache", "checkpoint": "init.pt"},
                       space={"finetune.lr": {"loguniform": ["1e-6", "1e-4"]},  # YAML reads 1e-6 as a string
                              "dral.kappa": {"randint": [2, 10]},
                              "finetune.every": {"choice": [0.5, 0.25]}})
    sweep = load_sweep(path, ["num_samples=5", "space.dral.kmax={grid: [2, 3]}", "space.dral.kmax="])
    assert sweep.config.num_samples == 5 and "dral.kmax" not in sweep.space  # added, then dropped
    assert sweep.space["finetune.lr"].values == [1e-6, 1e-4]
    assert sweep.rounds == 4  # the longest trial: every=0.25
    assert sweep.base["data"]["root"] == str(tmp_path / "cache")
    assert sweep.base["checkpoint"] == str(tmp_path / "init.pt")
    job = sweep.job({"finetune.lr": np.float64(3e-5), "dral.kappa": np.int64(7), "finetune.every": 0.25},
                    output_dir="out")
    assert isinstance(job, LoopJob) and job.dral.kappa == 7 and type(job.dral.kappa) is int
    assert job.finetune.lr == 3e-5 and job.output_dir == "out" and job.dral.ns == 10


def test_answers_to_target_and_round_report():
    rows = [{"round": 0, "answers": 0, "mAP": 0.2, "rank1": 0.3},
            {"round": 1, "answers": 30, "mAP": 0.45, "rank1": 0.5},
            {"round": 2, "answers": 55, "mAP": 0.41, "rank1": 0.5}]
    assert answers_to_target(rows, 0.4) == 30.0
    assert answers_to_target(rows, 0.5) is None
    report = round_report(rows, 2, target_map=0.5, unreached=999.0)
    assert report["round"] == 2 and report["answers"] == 55 and report["mAP"] == 0.41
    assert report["answers_to_target"] == 999.0 and report["target_reached"] is False
    assert "answers_to_target" not in round_report(rows[:2], 2)


def test_results_table_plot_and_best_config(tmp_path):
    recs = [{"trial_id": f"t{i}", "dral.kmax": k, "dral.metric": m, "mAP": v, "round": r, "rounds_total": 2,
             "status": trial_status(r, 2, error=False)}
            for i, (k, m, v, r) in enumerate([(2, "kissme", 0.3, 2), (3, "euclidean", 0.5, 2),
                                               (5, "kissme", 0.6, 1), (8, "euclidean", None, None)])]
    table = trials_table(recs, ["dral.kmax", "dral.metric"], ["mAP"])
    assert table.column_names[:5] == ["trial_id", "status", "dral.kmax", "dral.metric", "mAP"]
    assert table.column("status").to_pylist() == ["completed", "completed", "stopped_early", "not_started"]
    best = best_trial(table, "mAP", "max")
    assert best["trial_id"] == "t1"  # t2 scored higher but was cut after round 1
    parquet, csv = write_tables(table, tmp_path)
    assert pq.read_table(parquet).num_rows == 4 and csv.read_text().count("\n") == 5
    png = plot_objective(table, ["dral.kmax", "dral.metric"], "mAP", "max", tmp_path / "p.png")
    assert Image.open(png).size[0] > 400
    job = load_config(LoopJob, None, ["dral.kmax=3", "output_dir=runs/best"])
    path = write_best_config(job, tmp_path / "best.yaml", comment="best trial t1\nmAP=0.5")
    assert path.read_text().startswith("# best trial t1\n# mAP=0.5\n")
    assert load_config(LoopJob, path) == job
