"""model=torchvision: any classification model torchvision lists, its head sized to the data, its stem
adapted to small images, named weights from the torch hub cache, and GradCAM++ target layers."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torchvision.models import ResNet18_Weights, VisionTransformer

from sweeplab import build, models
from sweeplab.checks import check_run
from sweeplab.errors import ConfigError
from sweeplab.explain import ExplainError, cam_method, compute_cams, resolve_layer

from support import ROOT

CPU = torch.device("cpu")


def cfg_with(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["model=torchvision", "trainer.device=cpu", *overrides])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no network: a download attempt fails at once, as without a connection."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_train_a_step_on_cifar_sized_images(name):
    cfg = cfg_with(f"model.name={name}", "model.small_input=true", "optimizer.lr=0.05")
    check_run(cfg)
    torch.manual_seed(0)
    model = build.build_model(cfg, CPU)
    optimizer = build.build_optimizer(cfg, model)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    logits = model(x)
    assert logits.shape == (8, 10)  # data.num_classes of CIFAR-10
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_small_input_gives_resnets_the_cifar_stem_and_other_families_a_stride_1_stem():
    plain = models.torchvision_model("resnet18", 10)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.stride == (2, 2)
    assert isinstance(plain.maxpool, nn.MaxPool2d)
    small = models.torchvision_model("resnet18", 10, small_input=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.padding == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    features = nn.Sequential(*list(small.children())[:-2])(torch.zeros(1, 3, 32, 32))
    assert features.shape[-2:] == (4, 4)  # as the CIFAR ResNet: 32 -> 4 at the last stage (the ImageNet stem: 1)

    mobile = models.torchvision_model("mobilenet_v3_small", 10, small_input=True)
    stem = mobile.features[0][0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)  # kept its 3x3 kernel, lost its stride
    assert not any(isinstance(m, nn.Identity) for m in mobile.modules())  # no max-pool to remove
    with pytest.raises(ConfigError, match="cannot adapt a vision transformer"):
        models.adapt_to_small_input(VisionTransformer(32, 8, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8))


def test_an_unknown_model_name_lists_close_matches():
    with pytest.raises(ConfigError) as err:
        models.torchvision_model("resnet81", 10)
    text = str(err.value)
    assert text.startswith("model.name='resnet81' is not a torchvision classification model; close matches: ")
    assert "resnet18" in text and "\n" not in text
    with pytest.raises(ConfigError, match="see torchvision.models.list_models()"):
        models.torchvision_model("my_own_net", 10)


def test_weights_not_in_the_cache_and_no_network_are_one_line(offline):
    with pytest.raises(ConfigError) as err:
        models.torchvision_model("resnet18", 10, weights="DEFAULT")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("model.weights=DEFAULT: ResNet18_Weights.IMAGENET1K_V1 (resnet18-f37072fd.pth)")
    assert f"is not in the torch hub cache {offline}" in text
    assert "could not be downloaded ([Errno -3] Temporary failure in name resolution)" in text
    with pytest.raises(ConfigError, match="model: model.weights=DEFAULT: .* is not in the torch hub cache"):
        build.build_model(cfg_with("model.weights=DEFAULT"), CPU)  # through the config: the same line


def test_named_weights_load_from_the_torch_hub_cache_with_a_new_head(offline):
    torch.manual_seed(0)
    pretrained = models.torchvision_model("resnet18", 1000)
    offline.mkdir(parents=True)
    torch.save(pretrained.state_dict(), offline / "resnet18-f37072fd.pth")
    assert models.hub_file(ResNet18_Weights.DEFAULT) == offline / "resnet18-f37072fd.pth"
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model = models.torchvision_model("resnet18", 5, weights=name)
        assert torch.equal(model.layer4[1].conv2.weight, pretrained.layer4[1].conv2.weight)
        assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (512, 5)
    same = models.torchvision_model("resnet18", 1000, weights="DEFAULT")
    assert torch.equal(same.fc.weight, pretrained.fc.weight)  # 1000 classes: the head is kept
    small = models.torchvision_model("resnet18", 5, weights="DEFAULT", small_input=True)
    assert small.conv1.kernel_size == (3, 3) and torch.equal(
        small.layer1[0].conv1.weight, pretrained.layer1[0].conv1.weight
    )
    with pytest.raises(ConfigError, match="are not weights of resnet18; use one of DEFAULT, IMAGENET1K_V1"):
        models.torchvision_model("resnet18", 5, weights="IMAGENET9K_V9")
    with pytest.raises(
        ConfigError, match="model.weights=MobileNet_V3_Small_Weights.DEFAULT are not weights of resnet18"
    ):
        models.torchvision_model("resnet18", 5, weights="MobileNet_V3_Small_Weights.DEFAULT")


def test_gradcam_target_layers_of_torchvision_models():
    resnet = models.torchvision_model("resnet18", 10, small_input=True).eval()
    assert resolve_layer(resnet, "layer4") is resnet.layer4[-1]
    mobile = models.torchvision_model("mobilenet_v3_small", 10, small_input=True).eval()
    assert resolve_layer(mobile, "features") is mobile.features[-1]
    assert resolve_layer(mobile, "features.12") is mobile.features[12]
    with pytest.raises(ExplainError, match="use one of features, classifier"):
        resolve_layer(mobile, "layer4")
    x = torch.randn(3, 3, 32, 32)
    for model, layer in ((resnet, "layer4"), (mobile, "features.12")):
        cams = compute_cams(model, resolve_layer(model, layer), cam_method("gradcam++"), x, [0, 1, 2])
        assert cams.shape == (3, 32, 32) and 0 <= cams.min() and cams.max() <= 1
