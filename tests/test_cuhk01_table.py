"""The CUHK01 table's summary of pipelines (benchmarks/cuhk01_table.py), on hand-made results."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cuhk01_table import pipeline_kind, pipeline_table  # noqa: E402


def res(row, seed, curve=None, final=None, kmax=5):
    rounds = [{"answers": a, "mAP": m} for a, m in (curve or [(0, final)])]
    return {"row": row, "kmax": kmax, "seed": seed, "rounds": rounds, "final": {"mAP": rounds[-1]["mAP"]}}


def test_pipeline_kinds():
    assert pipeline_kind("baseline") == pipeline_kind("dral_paper") == "source model + strategy"
    assert pipeline_kind("unsupervised") == pipeline_kind("nearest_adapted") == "adapted model + strategy"
    assert pipeline_kind("cluster") == pipeline_kind("cluster_adapted") == pipeline_kind("cluster_adapted_rounds") \
        == "cluster-aware"
    assert pipeline_kind("nearest_adapted_rounds") == pipeline_kind("unsupervised_rho") == "adapted model + strategy"
    assert pipeline_kind("upperbound") is None and pipeline_kind("upperbound_paper") is None


def test_the_best_pipeline_of_each_kind_is_the_best_of_the_rows_on_the_most_splits_and_a_partial_row_ahead_is_named():
    n = 10
    results = [
        res("baseline", 0, final=0.30), res("baseline", 1, final=0.32),
        res("nearest", 0, [(0, 0.30), (10, 0.40), (20, 0.50)]), res("nearest", 1, [(0, 0.32), (10, 0.42), (20, 0.52)]),
        res("nearest", 2, [(0, 0.31), (10, 0.41), (20, 0.51)]),
        # on the same three splits as Nearest-first: behind it on two, ahead on average thanks to the third
        res("random", 0, [(0, 0.30), (10, 0.35), (20, 0.45)]), res("random", 1, [(0, 0.32), (10, 0.37), (20, 0.47)]),
        res("random", 2, [(0, 0.31), (10, 0.60), (20, 0.70)]),
        res("qbc", 0, [(0, 0.30), (10, 0.39), (20, 0.55)]), res("qbc", 1, [(0, 0.32), (10, 0.30), (20, 0.40)]),
        res("dral_paper", 0, [(0, 0.30), (50, 0.60)]), res("dral_paper", 1, [(0, 0.32), (50, 0.60)]),  # 36, 38.4 at 1n
        res("unsupervised", 0, final=0.45), res("unsupervised", 1, final=0.47),
        res("nearest_adapted", 0, [(0, 0.45), (20, 0.65)]),  # 55 at 1n, interpolated
        res("upperbound", 0, final=0.80), res("upperbound", 1, final=0.80),  # no user can run it
    ]
    text, records = pipeline_table(results, n)
    cell = {(r["kind"], r["budget"]): r for r in records}
    src, ada = "source model + strategy", "adapted model + strategy"
    assert (cell[src, 0]["row"], cell[src, 0]["seeds"]) == ("baseline", [0, 1])
    # Random's 44.0 mean beats Nearest-first's 41.0 on the three splits both ran; the rest ran on two, where
    # DRAL as published is ahead of Random at 1n (36.8 against 36.0; QBC 34.5 is not)
    assert (cell[src, 10]["row"], cell[src, 10]["mAP"]) == ("random", [0.35, 0.37, 0.60])
    assert cell[src, 10]["ahead"] == {"row": "dral_paper", "kmax": 5, "seeds": [0, 1], "mAP": [0.36, 0.376]}
    assert (cell[src, 20]["row"], cell[src, 20]["seeds"]) == ("random", [0, 1, 2])
    # at 2n QBC is ahead of Random on the splits it ran (47.5 against 46.0) and further ahead than DRAL as
    # published (43.1)
    assert cell[src, 20]["ahead"] == {"row": "qbc", "kmax": 5, "seeds": [0, 1], "mAP": [0.55, 0.40]}
    assert (cell[src, 50]["row"], cell[src, 50]["mAP"]) == ("dral_paper", [0.60, 0.60])  # the only one that spends 5n
    assert (cell[ada, 0]["row"], cell[ada, 0]["seeds"]) == ("unsupervised", [0, 1])
    assert cell[ada, 10]["row"] == "nearest_adapted" and abs(cell[ada, 10]["mAP"][0] - 0.55) < 1e-12
    assert cell[ada, 50]["row"] is None
    assert all(cell["cluster-aware", b]["row"] is None for b in (0, 10, 20, 50))
    lines = text.splitlines()
    assert lines[0] == ("| pipeline | best at 0 answers | best at 1n (10) answers | best at 2n (20) answers "
                        "| best at 5n (50) answers |")
    assert lines[2] == ("| source model + strategy | Baseline: 31.00 ± 1.41 (seeds 0,1) | Random: 44.00 ± 13.89 "
                        "(seeds 0,1,2); ahead on seeds 0,1: DRAL as published: 36.80 ± 1.13 | Random: 54.00 ± 13.89 "
                        "(seeds 0,1,2); ahead on seeds 0,1: QBC: 47.50 ± 10.61 "
                        "| DRAL as published: 60.00 ± 0.00 (seeds 0,1) |")
    assert lines[3] == ("| adapted model + strategy | Unsupervised (0 answers): 46.00 ± 1.41 (seeds 0,1) "
                        "| Nearest-first, from the adapted model: 55.00 (seed 0) "
                        "| Nearest-first, from the adapted model: 65.00 (seed 0) | - |")
    assert lines[4] == "| cluster-aware | - | - | - | - |"


def test_a_row_on_one_split_ahead_of_the_best_is_named_with_that_split():
    n = 10
    results = [res("cluster_adapted_rounds", s, [(0, 0.48), (10, 0.55), (20, v)]) for s, v in enumerate((0.57, 0.56, 0.57))]
    results.append(res("cluster_adapted_rounds_5n", 0, [(0, 0.48), (10, 0.53), (20, 0.58), (50, 0.62)], kmax=10))
    text, records = pipeline_table(results, n)
    cell = {(r["kind"], r["budget"]): r for r in records}["cluster-aware", 20]
    assert cell["row"] == "cluster_adapted_rounds" and cell["seeds"] == [0, 1, 2]
    assert cell["ahead"] == {"row": "cluster_adapted_rounds_5n", "kmax": 10, "seeds": [0], "mAP": [0.58]}
    assert "; ahead on seed 0 alone: Cluster-aware, from the adapted model, re-adapted each round, 5n answers, " \
           "Kmax 10: 58.00 |" in text.splitlines()[4]


def test_the_source_record_names_the_commit_that_trained_the_model_not_the_one_that_recorded_it(tmp_path):
    import json

    from cuhk01_table import record_source

    folder, results = tmp_path / "cuhk03_source", tmp_path / "results"
    folder.mkdir()
    results.mkdir()
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "metrics.json").write_text(json.dumps({"mAP": 0.39}))
    (folder / "history.json").write_text(json.dumps([{"epoch": 0, "accuracy": 0.5, "loss": 2.0, "images_per_s": 90}]))
    (folder / "commit.txt").write_text("abc123\n")  # written when training started
    record_source(folder / "model.pt", results)
    record = json.loads((results / "source_cuhk03.json").read_text())
    assert record["commit"] == "abc123" and record["metrics_on_cuhk03_val"] == {"mAP": 0.39}
    assert record["curve"] == [{"epoch": 1, "train_accuracy": 0.5, "loss": 2.0, "images_per_s": 90}]


def test_row_sets_expand_in_order_each_row_once_and_an_unknown_row_is_named():
    import pytest

    from cuhk01_table import ROWS, expand_rows

    assert expand_rows(["first"]) == ["baseline", "upperbound", "random", "nearest", "dral"]
    assert expand_rows(["first", "zero-answer"])[5:] == ["unsupervised", "random_adapted", "nearest_adapted",
                                                         "dral_adapted", "cluster", "cluster_adapted"]
    assert expand_rows(["qbc", "all"]) == ["qbc", *[r for r in ROWS if r != "qbc"]]
    with pytest.raises(SystemExit, match="unknown row 'nope'"):
        expand_rows(["nope"])


def test_a_row_that_reused_another_rows_adaptation_costs_what_it_would_alone():
    from cuhk01_table import row_seconds

    assert row_seconds({"wall_seconds": 400.0}) == 400.0  # a results file from before the cache
    assert row_seconds({"wall_seconds": 400.0, "adapt_seconds": 300.0, "adapt_reused": False}) == 400.0
    assert row_seconds({"wall_seconds": 400.0, "adapt_seconds": 300.0, "adapt_reused": True}) == 700.0
    assert row_seconds({"wall_seconds": 400.0, "adapt_seconds": None, "adapt_reused": False}) == 400.0


def test_a_row_with_its_own_kmax_runs_once_per_seed_at_that_kmax():
    from cuhk01_table import ROWS, planned_runs

    assert ROWS["nearest_5n"].kmax == 10 and ROWS["nearest"].kmax is None
    assert planned_runs(["nearest", "nearest_5n"], [5], [0, 1]) == [
        ("nearest", 5, 0), ("nearest_5n", 10, 0), ("nearest", 5, 1), ("nearest_5n", 10, 1)]
    assert planned_runs(["nearest_5n", "nearest"], [5, 10], [0]) == [
        ("nearest_5n", 10, 0), ("nearest", 5, 0), ("nearest", 10, 0)]


def test_the_5n_rows_can_spend_5n_answers_and_have_points_at_1n_2n_and_5n():
    from cuhk01_table import OURS, ROOT, ROW_SETS, ROWS

    from reidloop.config import LoopJob, load_config

    n = 1940  # the learning images of every CUHK01 split (485 identities x 4)
    for row in ROW_SETS["five-n"]:
        spec = ROWS[row]
        job = load_config(LoopJob, str(ROOT / spec.config), ["data.root=unused", f"dral.kmax={spec.kmax}",
                                                             *spec.overrides])
        assert spec.config == OURS and job.oracle.budget == 5 * n and job.dral.kmax * n >= 2 * job.oracle.budget
        steps = round(1 / job.finetune.every)
        assert {1 * n, 2 * n, 5 * n} <= {job.oracle.budget * (i + 1) // steps for i in range(steps)}


def test_the_adapted_upperbound_adapts_as_the_adapted_rows_do_and_is_no_pipeline():
    from cuhk01_table import REFERENCES, ROOT, ROWS

    from reidloop.config import LoopJob, load_config

    def job(row):
        return load_config(LoopJob, str(ROOT / ROWS[row].config), ["data.root=unused", *ROWS[row].overrides])

    bound, learner = job("upperbound_adapted"), job("nearest_adapted")
    assert bound.strategy == "upperbound" and bound.adapt == learner.adapt and bound.adapt.epochs > 0
    assert bound.finetune == learner.finetune and bound.oracle == learner.oracle
    assert "upperbound_adapted" in REFERENCES and pipeline_kind("upperbound_adapted") is None


def test_a_row_that_browsed_every_query_with_budget_left_is_valued_at_its_budget_and_not_beyond():
    from cuhk01_table import equal_answer_columns

    n = 10
    # DRAL as published + answer inference: every query browsed at 48 of its 50 answers (5n)
    short = {**res("dral_paper_infer", 0, [(0, 0.30), (20, 0.40), (48, 0.60)]), "budget": 50}
    cols = equal_answer_columns(short, 0.30, 0.80, n)
    assert cols["mAP@2n"] == 0.40 and abs(cols["mAP@5n"] - 0.60) < 1e-12
    # a row that spent its budget of 2n has no value at 5n
    spent = {**res("nearest", 0, [(0, 0.30), (10, 0.40), (20, 0.50)]), "budget": 20}
    assert equal_answer_columns(spent, 0.30, 0.80, n)["mAP@5n"] is None
    # nor beyond its own budget when it ended short of it
    assert equal_answer_columns({**short, "budget": 40, "rounds": short["rounds"][:2]}, 0.30, 0.80, n)["mAP@5n"] is None


def _sweep(folder, seed=0, kmax=10, space=("dral.kmax", "dral.ns", "dral.thred")):
    import yaml

    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"sweep": {"name": "cuhk01", "space": {
        k: {"choice": [1, 2]} for k in space}}}))
    (folder / "best_config.yaml").write_text("# Best trial x\n" + yaml.safe_dump(
        {"data": {"seed": seed}, "strategy": "dral", "dral": {"kmax": kmax, "ns": 20, "thred": 0.4286119322919}}))


def test_the_tuned_row_takes_kmax_and_the_swept_settings_from_its_own_tables_seed_0_sweep(tmp_path, monkeypatch):
    from cuhk01_table import OURS, ROOT, ROWS, planned_runs, resolve_tuned

    from reidloop.config import LoopJob, load_config

    monkeypatch.setitem(ROWS, "dral_tuned", ROWS["dral_tuned"])  # resolve_tuned updates the table's row
    _sweep(tmp_path / "sweep_s0")
    assert resolve_tuned(["dral_tuned"], ["nearest", "dral_tuned"], tmp_path) == ["nearest", "dral_tuned"]
    row = ROWS["dral_tuned"]
    assert row.kmax == 10 and row.overrides == ("strategy=dral", "dral.kmax=10", "dral.ns=20", "dral.thred=0.4286119322919")
    assert planned_runs(["dral_tuned"], [3, 5], [1, 2]) == [("dral_tuned", 10, 1), ("dral_tuned", 10, 2)]
    job = load_config(LoopJob, str(ROOT / OURS), ["data.root=unused", *row.overrides])  # valid, with those values
    assert (job.dral.kmax, job.dral.ns, job.dral.thred) == (10, 20, 0.4286119322919)


def test_a_tuned_row_without_its_tables_sweep_is_an_error_when_named_and_left_out_of_a_set(tmp_path, monkeypatch, capsys):
    import pytest

    from cuhk01_table import ROWS, expand_rows, resolve_tuned

    monkeypatch.setitem(ROWS, "dral_tuned", ROWS["dral_tuned"])
    with pytest.raises(SystemExit, match=r"row dral_tuned: .*sweep_s0 lacks best_config.yaml and sweep.yaml"):
        resolve_tuned(["dral_tuned"], ["dral_tuned"], tmp_path)
    rows = expand_rows(["all"])
    assert resolve_tuned(["all"], rows, tmp_path) == [r for r in rows if r != "dral_tuned"]
    assert "dral_tuned: left out" in capsys.readouterr().out
    _sweep(tmp_path / "sweep_s0", seed=1)  # tuned on a test split: not a tuned row of this table
    with pytest.raises(SystemExit, match=r"best_config.yaml: data.seed is 1, not 0"):
        resolve_tuned(["dral_tuned"], ["dral_tuned"], tmp_path)


def test_the_first_tables_tuned_row_ran_with_what_its_sweep_found():
    import json

    from cuhk01_table import ROOT, tuned_settings

    table = ROOT / "benchmarks/results/cuhk01"
    kmax, settings = tuned_settings(table)
    for seed in (0, 1, 2):
        ran = json.loads((table / f"dral_tuned_k{kmax}_s{seed}.json").read_text())["overrides"]
        assert ran[-len(settings):] == list(settings)


def test_the_rows_as_published_at_any_kmax_close_the_gap_to_the_papers_upperbound_of_their_seed():
    from cuhk01_table import build_table

    results = [{**res("baseline", 0, final=0.30), "answers": 0, "label": "Baseline", "rank1": 0},
               {**res("upperbound_paper", 0, final=0.50, kmax=5), "answers": 0, "label": "UB paper"},
               {**res("dral_paper", 0, [(0, 0.30), (30, 0.40)], kmax=10), "answers": 30, "label": "DRAL paper"}]
    for r in results:
        r["final"].update(rank1=0, rank5=0, rank10=0)
        r["wall_seconds"] = 60.0
    _, records = build_table(results, 10)
    dral = next(r for r in records if r["row"] == "dral_paper")
    assert dral["kmax"] == 10 and abs(dral["closure"][0] - 0.5) < 1e-9  # (40 - 30) / (50 - 30)
