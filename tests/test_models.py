import pytest
import torch
import torchvision

from reidloop.config.schema import ModelConfig
from reidloop.models import (
    ReidNet,
    ReidOutput,
    build_backbone,
    build_model,
    load_checkpoint,
    save_checkpoint,
)

X = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                      ("mobilenet_v2", 1280)])
def test_output_shapes_train_and_eval(name, dim):
    model = ReidNet(name, num_classes=5)
    assert model.embed_dim == dim
    out = model.train()(X)
    assert isinstance(out, ReidOutput)
    assert out.features.shape == (2, dim) and out.logits.shape == (2, 5)
    with torch.no_grad():
        emb = model.eval()(X)
    assert emb.shape == (2, dim) and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_last_stride_doubles_the_final_map(name):
    with torch.no_grad():
        map1 = build_backbone(name, last_stride=1)[0].eval()(X)
        map2 = build_backbone(name, last_stride=2)[0].eval()(X)
    assert map2.shape[2:] == (2, 1)  # 64×32 / 32
    assert map1.shape[2:] == (4, 2)  # 64×32 / 16


def test_backbone_keeps_torchvision_names():
    body, _ = build_backbone("resnet18")
    ref = torchvision.models.resnet18(weights=None).state_dict()
    assert set(body.state_dict()) == {k for k in ref if not k.startswith("fc.")}


def test_bnneck_embedding_and_frozen_bias():
    model = ReidNet("mobilenet_v2", num_classes=3, neck="bnneck")
    assert not model.bottleneck.bias.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model.train()(X)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])).backward()
    opt.step()
    assert torch.equal(model.bottleneck.bias, torch.zeros(model.embed_dim))
    model.eval()
    with torch.no_grad():
        f = model.pool(model.backbone(X)).flatten(1)
        assert torch.allclose(model(X), model.bottleneck(f))
        assert not torch.allclose(model(X), f)


def test_no_neck_returns_pooled_feature():
    model = ReidNet("mobilenet_v2", num_classes=3, neck="none").eval()
    assert model.bottleneck is None
    with torch.no_grad():
        assert torch.allclose(model(X), model.pool(model.backbone(X)).flatten(1))


def test_classifier_optional_and_resettable():
    model = ReidNet("mobilenet_v2", num_classes=0)
    assert model.classifier is None and model.train()(X).logits is None
    model.reset_classifier(7)
    assert model.classifier.bias is None and model.classifier.weight.shape == (7, 1280)
    assert model.train()(X).logits.shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="backbone: 'vgg16'"):
        ReidNet("vgg16", 2)
    with pytest.raises(ValueError, match="neck: 'bn'"):
        ReidNet("resnet18", 2, neck="bn")
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet18", last_stride=3)


def test_build_model_loads_local_weights(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(ModelConfig(backbone="resnet18", weights=str(path), last_stride=2), num_classes=4)
    assert model.last_stride == 2 and model.classifier.weight.shape == (4, 512)
    got = model.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items() if not k.startswith("fc."))
    assert ModelConfig().backbone == "resnet50" and build_model(
        ModelConfig(backbone="mobilenet_v2"), 0).classifier is None


def test_checkpoint_roundtrip(tmp_path):
    model = ReidNet("mobilenet_v2", num_classes=3, neck="bnneck", last_stride=2)
    model.train()(X)  # moves BN running stats away from their init
    path = tmp_path / "sub" / "ckpt.pt"
    extra = {"epoch": 3, "metrics": {"mAP": 0.5, "cmc": [0.1, 0.2]}, "pids": torch.arange(3), "note": None}
    save_checkpoint(path, model, extra)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no tmp file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"] == {"backbone": "mobilenet_v2", "neck": "bnneck", "last_stride": 2}
    assert raw["num_classes"] == 3
    loaded, got_extra = load_checkpoint(path)
    assert got_extra["epoch"] == 3 and got_extra["metrics"] == extra["metrics"]
    assert torch.equal(got_extra["pids"], extra["pids"])
    ref, new = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(new) and all(torch.equal(ref[k], new[k]) for k in ref)
    with torch.no_grad():
        assert torch.equal(model.eval()(X), loaded.eval()(X))


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    model = ReidNet("mobilenet_v2", num_classes=2)
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, {})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ValueError, match="plain.pt: not a reidloop checkpoint"):
        load_checkpoint(plain)
    ckpt = torch.load(good, weights_only=True)
    ckpt["config"]["backbone"] = "resnet18"
    wrong = tmp_path / "wrong.pt"
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match="wrong.pt: checkpoint does not match its config"):
        load_checkpoint(wrong)
    with pytest.raises(TypeError, match=r"extra.obj: object cannot be stored"):
        save_checkpoint(tmp_path / "bad.pt", model, {"obj": object()})
    assert not (tmp_path / "bad.pt").exists()
