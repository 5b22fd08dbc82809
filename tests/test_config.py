"""The YAML → typed-config loader: defaults, overrides, and errors that name the file and field."""
import pytest

from reidloop.config import (ConfigError, DralConfig, FinetuneConfig, PretrainJob, load_config, save_config)


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_follow_the_paper():
    d = DralConfig()
    assert (d.kmax, d.ns, d.kappa, d.thred, d.margin) == (10, 30, 15, 0.4, 0.2)
    assert (d.hidden, d.layers, d.policy_lr) == (256, 3, 2e-2)
    f = FinetuneConfig()
    assert (f.lr, f.every) == (5e-6, 0.25)
    job = load_config(PretrainJob)
    assert job.model.backbone == "resnet50" and job.train.lr == 5e-4 and job.train.epochs == 60
    assert (job.data.height, job.data.width) == (256, 128)


def test_yaml_and_overrides_reach_typed_fields(tmp_path):
    p = write(tmp_path, "data:\n  dataset: synthetic\n  height: 64\ntrain:\n  lr: 1e-3\n  epochs: 2\n")
    job = load_config(PretrainJob, p, ["train.epochs=5", "model.backbone=resnet18"])
    assert job.data.height == 64 and job.train.lr == 1e-3 and isinstance(job.train.lr, float)
    assert job.train.epochs == 5 and job.model.backbone == "resnet18"


def test_amp_off_means_off_although_yaml_reads_it_as_false(tmp_path):
    p = write(tmp_path, "train:\n  amp: off\n")  # YAML 1.1: off -> False
    job = load_config(PretrainJob, p, ["eval.amp=off"])
    assert job.train.amp == "off" and job.eval.amp == "off"
    with pytest.raises(ConfigError, match="eval.amp: True is not one of"):
        load_config(PretrainJob, None, ["eval.amp=on"])  # "on" is no amp choice


def test_roundtrip_through_save(tmp_path):
    job = load_config(PretrainJob, None, ["train.epochs=3", "data.synthetic.train_ids=10"])
    save_config(job, tmp_path / "out.yaml")
    assert load_config(PretrainJob, tmp_path / "out.yaml") == job


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  epoch: 3\n", "train.epoch: unknown key"),
    ("train:\n  epochs: three\n", "train.epochs: expected int"),
    ("model:\n  backbone: vgg\n", "backbone: 'vgg' is not one of"),
    ("data:\n  dataset: cuhk03\n", "root: None must name the folder"),
    ("model:\n  neck: foo\n", "model.neck: 'foo' is not one of"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train: [1, 2\n", "not valid YAML"),
    ("train:\n  lr: -1\n", "lr: -1.0 must be > 0"),
])
def test_bad_config_names_file_and_field(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(PretrainJob, p)
    assert str(p) in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    (["kmax=31"], "kmax: 31 must be in [1, ns=30]"),
    (["kappa=40"], "kappa: 40 must be in [1, ns=30]"),
    (["thred=1.5"], "thred: 1.5 must be in [0, 1]"),
    (["margin=-0.1"], "margin: -0.1 must be >= 0"),
])
def test_dral_ranges_are_checked(override, fragment):
    with pytest.raises(ConfigError, match=__import__("re").escape(fragment)):
        load_config(DralConfig, None, override)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(PretrainJob, tmp_path / "nope.yaml")
