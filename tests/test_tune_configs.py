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


def test_cuhk01_paper_config_switches_off_every_addition():
    """The "as published" CUHK01 rows: Algorithm 1's rounds, the paper's fine-tune, no addition of ours."""
    job = load_config(LoopJob, ROOT / "cuhk01_paper.yaml", ["data.root=/x"])
    assert job.rounds == "queries" and job.oracle.budget is None  # n * Kmax, cut by queries
    assert job.infer_answers is False  # no transitive inference
    assert job.finetune.pairs == "asked"  # no settled-pair labels
    assert job.finetune.cross_entropy is False  # §3.3: the triplet loss only
    assert (job.finetune.lr, job.finetune.epochs, job.finetune.every) == (5e-6, 1, 0.25)
    assert job.finetune.upperbound == "identities"  # the paper's fully supervised UpperBound
    assert job.dral.warmstart_passes == 0
    d = job.dral
    assert (d.ns, d.kappa, d.thred, d.margin, d.hidden, d.layers, d.policy_lr) == (30, 15, 0.4, 0.2, 256, 3, 2e-2)


def test_cuhk01_config_compares_at_equal_answers():
    ours = load_config(LoopJob, ROOT / "cuhk01.yaml", ["data.root=/x"])
    paper = load_config(LoopJob, ROOT / "cuhk01_paper.yaml", ["data.root=/x"])
    assert ours.rounds == "answers" and ours.oracle.budget == 2 * 485 * 4
    assert ours.infer_answers and ours.finetune.pairs == "settled" and ours.finetune.upperbound == "learners"
    # the two kinds of row share the data, the source model and the agent
    assert (ours.data, ours.checkpoint, ours.dral) == (paper.data, paper.checkpoint, paper.dral)


def test_rounds_by_answers_need_a_budget():
    with pytest.raises(ConfigError, match="oracle.budget.*rounds: answers"):
        load_config(LoopJob, None, ["rounds=answers"])
    with pytest.raises(ConfigError, match="rounds"):
        load_config(LoopJob, None, ["rounds=tokens", "oracle.budget=10"])


def test_every_cuhk01_table_row_is_a_valid_job_and_each_paper_addition_is_switched_on_alone():
    """benchmarks/cuhk01_table.py ROWS: every row loads (a typo in an override fails here, not hours
    into the table), and each "as published + one addition" row differs from the paper row by that switch."""
    import sys

    sys.path.insert(0, str(ROOT.parent / "benchmarks"))
    from cuhk01_table import ROWS

    jobs = {}
    for name, row in ROWS.items():
        sets = [o.replace("{cuhk03}", "/y") for o in row.overrides]
        jobs[name] = load_config(LoopJob, ROOT.parent / row.config, ["data.root=/x", *sets])
    paper = jobs["dral_paper"]
    for name, field, value in (("dral_paper_infer", "infer_answers", True),
                               ("dral_paper_settled", "pairs", "settled"),
                               ("dral_paper_ce", "cross_entropy", True)):
        job = jobs[name]
        section = job if field == "infer_answers" else job.finetune
        assert getattr(section, field) == value
        assert getattr(paper if field == "infer_answers" else paper.finetune, field) != value
        assert {k: v for k, v in vars(job.finetune).items() if k != field} == \
            {k: v for k, v in vars(paper.finetune).items() if k != field}  # nothing else changed
        assert job.infer_answers == (field == "infer_answers")
        assert job.rounds == paper.rounds == "queries" and job.dral == paper.dral
    ours, noinfer = jobs["dral"], jobs["dral_noinfer"]  # our additions with inference switched off alone
    assert ours.infer_answers and not noinfer.infer_answers
    assert noinfer.finetune == ours.finetune and noinfer.dral == ours.dral and noinfer.rounds == ours.rounds
    assert jobs["dral_links_stop"].dral.stop and jobs["dral_links_stop"].dral.reward == "links"


def test_a_table_from_another_cpu_kind_is_refused_before_its_source_model_is_retrained(tmp_path):
    """Pre-training is seeded: the same CPU kind retrains a table's source model bit for bit, another does not."""
    import json
    import sys

    sys.path.insert(0, str(ROOT.parent / "benchmarks"))
    from cuhk01_table import check_can_retrain, machine

    results, runs = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    check_can_retrain(results, runs)  # a new table: nothing recorded yet
    (results / "source_cuhk03.json").write_text(json.dumps({"machine": machine()}))
    check_can_retrain(results, runs)  # this kind of CPU trained it: retrain here
    (results / "source_cuhk03.json").write_text(json.dumps({"machine": "Some Other CPU, 2 cores, avx2"}))
    with pytest.raises(SystemExit, match=r"trained on Some Other CPU, 2 cores, avx2.*--results NEW_FOLDER"):
        check_can_retrain(results, runs)
    (runs / "cuhk03_source").mkdir(parents=True)
    (runs / "cuhk03_source" / "model.pt").write_bytes(b"cached")
    check_can_retrain(results, runs)  # a cached model is checked by its sha256 instead (check_same_source)


def test_the_default_table_is_the_one_whose_source_model_this_cpu_kind_rebuilds(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(ROOT.parent / "benchmarks"))
    from cuhk01_table import default_results, machine

    tables = ("t_old", "t_mid", "t_new")
    assert default_results(tmp_path, tables) == tmp_path / "t_old"  # nothing recorded: the oldest
    for name, cpu in zip(tables, ("Xeon X, 2 cores, amx_bf16", machine(), "EPYC Y, 2 cores, avx2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "source_cuhk03.json").write_text(json.dumps({"machine": cpu}))
    assert default_results(tmp_path, tables) == tmp_path / "t_mid"
    (tmp_path / "t_mid" / "source_cuhk03.json").write_text(json.dumps({"machine": "Other Z, 2 cores, avx2"}))
    assert default_results(tmp_path, tables) == tmp_path / "t_old"  # no table of this CPU kind


def test_episodes_in_flight_must_be_positive_or_left_to_the_loop():
    assert load_config(LoopJob, None, []).episodes_in_flight is None
    assert load_config(LoopJob, None, ["episodes_in_flight=4"]).episodes_in_flight == 4
    with pytest.raises(ConfigError, match=r"episodes_in_flight: 0 must be >= 1"):
        load_config(LoopJob, None, ["episodes_in_flight=0"])
