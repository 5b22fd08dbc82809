"""Acquisition strategies on hand-made cases, and the CIFAR-10 experiment on a tiny PNG folder."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reidloop.config import load_config
from reidloop.config.l2r import ACQUISITIONS, L2RExperimentJob, LossModuleConfig, SorterConfig
from reidloop.data.records import DatasetError
from reidloop.l2r.acquisition import AcquisitionInputs, build_acquisition, entropy, k_center_greedy
from reidloop.l2r.cifar import CLASSES, load_cifar
from reidloop.l2r.experiment import aggregate, markdown_table, plot_results, run_strategy
from reidloop.l2r.loss_module import L2RLearner, LL4ALLearner
from reidloop.l2r.sorter import GRUSorter, freeze, train_sorter

MODULE = LossModuleConfig()
RNG = lambda: np.random.default_rng(0)  # noqa: E731


def test_random_picks_k_distinct_reproducibly():
    acq = build_acquisition("random", MODULE)
    a = acq.select(AcquisitionInputs(size=50), 10, RNG())
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 50
    assert a.tolist() == acq.select(AcquisitionInputs(size=50), 10, RNG()).tolist()


def test_entropy_picks_the_most_uncertain_posteriors():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.9, 0.05, 0.05]])
    assert entropy(probs)[0] == 0.0 and entropy(probs)[1] == pytest.approx(np.log(3))
    picks = build_acquisition("entropy", MODULE).select(AcquisitionInputs(size=4, probs=probs), 3, RNG())
    assert picks.tolist() == [1, 2, 3]


def test_coreset_k_center_greedy_on_a_line():
    points = np.array([[1.0], [2.0], [10.0], [11.0], [5.0]])
    labelled = np.array([[0.0]])
    # farthest from 0 is 11; then, with centres {0, 11}, 5 is the farthest (5 from 0, 6 from 11)
    acq = build_acquisition("coreset", MODULE)
    picks = acq.select(AcquisitionInputs(size=5, embeddings=points, labelled_embeddings=labelled), 2, RNG())
    assert picks.tolist() == [3, 4]
    assert k_center_greedy(points, np.empty((0, 1)), 2).tolist() == [0, 3]  # no centre yet: item 0, then farthest


@pytest.mark.parametrize("name", ["ll4al", "l2r"])
def test_loss_strategies_ask_the_highest_predicted_losses(name):
    sorter = freeze(GRUSorter(4, 1))
    acq = build_acquisition(name, MODULE, sorter)
    loss = np.array([0.1, 3.0, 0.5, 2.0, 2.0])
    assert acq.select(AcquisitionInputs(size=5, predicted_loss=loss), 3, RNG()).tolist() == [1, 3, 4]
    learner = acq.make_learner([4, 8, 16])
    assert isinstance(learner, {"l2r": L2RLearner, "ll4al": LL4ALLearner}[name])


def test_missing_inputs_and_bad_requests_are_named():
    with pytest.raises(ValueError, match="entropy: needs inputs.probs"):
        build_acquisition("entropy", MODULE).select(AcquisitionInputs(size=3), 1, RNG())
    with pytest.raises(ValueError, match="k=4 of a subset of 3"):
        build_acquisition("random", MODULE).select(AcquisitionInputs(size=3), 4, RNG())
    with pytest.raises(ValueError, match="predicted_loss has 2 rows for a subset of 3"):
        build_acquisition("ll4al", MODULE).select(AcquisitionInputs(size=3, predicted_loss=np.ones(2)), 1, RNG())
    with pytest.raises(ValueError, match="'vaal' is not one of"):
        build_acquisition("vaal", MODULE)
    with pytest.raises(ValueError, match="needs a trained sorter"):
        build_acquisition("l2r", MODULE)


# ---------------------------------------------------------- the experiment
def write_cifar(root, per_class_train=4, per_class_test=2):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):  # class-dependent colour so the task is learnable
                img = np.clip(rng.normal(25 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{name}_{i:03d}.png")
    return root


def tiny_experiment(root, **over):
    sets = [f"data.root={root}", "data.test_size=16", "train.model=small_cnn", "train.width=4", "train.epochs=1",
            "train.milestones=[]", "train.batch_size=8", "protocol.initial=10", "protocol.per_cycle=6",
            "protocol.cycles=3", "protocol.subset=12", "sorter.seq_len=8", "module.ll4al_detach_epoch=1",
            "module.hidden=8", "module.ll4al_hidden=4", "seeds=[0]"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(L2RExperimentJob, None, sets)


def test_every_strategy_runs_the_protocol_on_a_png_folder(tmp_path):
    job = tiny_experiment(write_cifar(tmp_path / "cifar"))
    data = load_cifar(job.data)
    assert data.train_images.shape == (40, 32, 32, 3) and len(data.test_labels) == 16
    sorter = train_sorter(SorterConfig(seq_len=8, hidden=8, layers=1, steps=5))
    runs = {name: run_strategy(job, name, 0, data, sorter) for name in ACQUISITIONS}
    for name, run in runs.items():
        assert [c.labelled for c in run.cycles] == [10, 16, 22]
        assert all(0 <= c.accuracy <= 100 for c in run.cycles)
        assert all((c.spearman is not None) == (name in ("l2r", "ll4al")) for c in run.cycles)
    # one seed: same initial set, initialisation and training for the strategies without a module,
    # and L2R's module never touches its target model (§III-C): the same first-cycle accuracy
    first = {name: run.cycles[0].accuracy for name, run in runs.items()}
    assert first["random"] == first["entropy"] == first["coreset"] == first["l2r"]
    rows = [r.to_dict() for r in runs.values()]
    acc = aggregate(rows, "accuracy")
    assert list(acc) == list(ACQUISITIONS) and [r[0] for r in acc["random"]] == [10, 16, 22]
    table = markdown_table(aggregate(rows, "spearman"), "{:.3f} ± {:.3f}")
    assert "| l2r |" in table and "| random |" not in table  # no module, no Spearman
    plot_results(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_bad_cifar_folders_are_named(tmp_path):
    root = write_cifar(tmp_path / "c", per_class_train=1, per_class_test=1)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "cat" / "small.png")
    with pytest.raises(DatasetError, match="small.png: expected a 32x32"):
        load_cifar(tiny_experiment(root).data)
    with pytest.raises(DatasetError, match="nowhere/train"):
        load_cifar(tiny_experiment(tmp_path / "nowhere").data)
    job = tiny_experiment(root, **{"protocol.cycles": 9})
    with pytest.raises(ValueError, match="exceed the pool"):
        run_strategy(job, "random", 0, load_cifar(tiny_experiment(root, **{"data.train_per_class": 1}).data))


# ------------------------------------------------------------- configs
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1] / "tune_configs"


def test_tune_configs_load_and_the_paper_file_is_the_paper():
    cpu = load_config(L2RExperimentJob, ROOT / "l2r_cifar10_cpu.yaml")
    assert cpu.train.model == "small_cnn" and len(cpu.seeds) >= 3 and cpu.strategies == list(ACQUISITIONS)
    job = load_config(L2RExperimentJob, ROOT / "l2r_cifar10_paper.yaml")
    p, t = job.protocol, job.train
    assert (p.initial, p.per_cycle, p.cycles, p.subset) == (1000, 1000, 10, 10000)
    assert (t.model, t.epochs, t.milestones, t.lr, t.momentum, t.weight_decay, t.batch_size) == \
        ("resnet18", 150, [120], 0.1, 0.9, 5e-4, 64)
    assert (job.module.lr, job.module.negative_slope, job.sorter.seq_len, len(job.seeds)) == (1e-3, 0.01, 64, 5)


@pytest.mark.parametrize("override, message", [
    ("strategies=[random, vaal]", "strategies"),
    ("train.batch_size=64", "sorter.seq_len"),  # the sorter (length 8) cannot rank a batch of 64
    ("train.milestones=[5]", "train.milestones"),
    ("protocol.subset=2", "protocol.subset"),
    ("data.crop_padding=-1", "data.crop_padding"),
])
def test_bad_experiment_configs_name_the_field(tmp_path, override, message):
    from reidloop.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_experiment(tmp_path, **dict([override.split("=", 1)]))


@pytest.mark.parametrize("name", ["l2r", "ll4al"])
def test_the_learner_and_the_l2r_sorter_follow_the_configured_device(name):
    """The experiment moves the learner to ``train.device``: the loss module and, for L2R, the frozen sorter
    it runs the rank loss through (once left on the CPU, which a CUDA run would have failed on). The ``meta``
    device stands in for CUDA on machines without one; the optimiser keeps the moved parameters."""
    import torch

    sorter = freeze(GRUSorter(4, 1))
    learner = build_acquisition(name, MODULE, sorter).make_learner([8, 16, 32, 64])
    assert learner.to(torch.device("meta")) is learner
    moved = [*learner.module.parameters(), *(sorter.parameters() if name == "l2r" else [])]
    assert moved and {p.device.type for p in moved} == {"meta"}
    assert {p.device.type for g in learner.optimizer.param_groups for p in g["params"]} == {"meta"}
