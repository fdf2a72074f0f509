"""MetaIQA: the ``metaiqa.pth`` state dict (official ``Net(resnet18, BaselineModel1(1, 0.5, 1000))`` layout)
loads strictly, scores lie in [0, 1], dropout is off, batches score like single images, gradients flow;
the default input is the image at its own size (the MSU wrapper), ``preprocess: official`` is the original
test transform (``skimage.transform.resize`` to 224x224), checked against scikit-image."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from official_layout import images, random_state
from skimage import transform
from torch import nn

from iqadef import WeightsError
from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet


def official_net_on_meta() -> nn.Module:
    """``Net(resnet18(pretrained=False), BaselineModel1(1, 0.5, 1000))`` of MetaIQA_FineTune_WILDLIVE.py."""
    with torch.device("meta"):
        head = nn.Module()
        head.fc1, head.bn1, head.relu1 = nn.Linear(1000, 1024), nn.BatchNorm1d(1024), nn.PReLU()
        head.drop1 = nn.Dropout(0.5)
        head.fc2, head.bn2, head.relu2 = nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.PReLU()
        head.drop2, head.fc3, head.sig = nn.Dropout(0.5), nn.Linear(512, 1), nn.Sigmoid()
        model = nn.Module()
        model.resnet_layer, model.net = torchvision.models.resnet18(), head
    return model


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("metaiqa") / "metaiqa.pth"
    torch.save(random_state(official_net_on_meta(), seed=0), path)
    return path


@pytest.fixture(scope="module")
def metric(checkpoint_path):
    return MetaIQA(resize=64, weights_path=str(checkpoint_path)).load("cpu")


def test_official_key_names_and_shapes_match_the_network():
    official = {k: tuple(v.shape) for k, v in official_net_on_meta().state_dict().items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in MetaIQANet().state_dict().items()}
    assert ours == official
    assert official["resnet_layer.fc.weight"] == (1000, 512)  # the ImageNet fc is kept
    assert official["net.fc1.weight"] == (1024, 1000) and official["net.relu1.weight"] == (1,)
    assert official["net.fc3.weight"] == (1, 512)


def test_metadata():
    metric = MetaIQA()
    assert metric.name == "metaiqa" and metric.higher_is_better and metric.range == (0.0, 1.0)
    assert metric.preprocess == "msu" and metric.resize is None  # the MSU wrapper: native size
    assert MetaIQA().key() != MetaIQA(preprocess="official").key()


MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def original_test_input(array: np.ndarray) -> torch.Tensor:
    """MetaIQA_FineTune_WILDLIVE.py's test transform: ``Rescale((224, 224))`` (skimage on the uint8 array),
    ``Normalize()``, ``ToTensor()`` (double), then ``.float()`` as computeSpearman does."""
    image = transform.resize(array, (224, 224))
    image = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return torch.from_numpy(image.transpose((2, 0, 1))).double()[None].float()


def test_default_scores_the_image_at_its_own_size(metric, checkpoint_path):
    """As the MSU wrapper: ``Normalize`` then the network, no resize."""
    native = MetaIQA(weights_path=str(checkpoint_path)).load("cpu")
    x = images(1, size=(45, 61))
    with torch.no_grad():
        torch.testing.assert_close(native.score(x), native.net((x - MEAN) / STD), rtol=0, atol=1e-6)


@pytest.mark.parametrize("array", [skimage.data.chelsea(), skimage.data.astronaut()], ids=["chelsea", "astronaut"])
def test_official_preprocess_is_the_original_test_transform(checkpoint_path, array):
    official = MetaIQA(preprocess="official", weights_path=str(checkpoint_path)).load("cpu")
    x = (torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    expected_input = original_test_input(array)
    ours_input = (official.prepare(x) - MEAN) / STD
    assert (ours_input - expected_input).abs().max() < 1e-5
    score = official.score(x)
    with torch.no_grad():
        torch.testing.assert_close(score.detach(), official.net(expected_input), rtol=0, atol=1e-5)
    score.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loads_scores_in_unit_interval_and_dropout_is_off(metric):
    assert not metric.net.training
    x = images(3)
    with torch.no_grad():
        first, second = metric.score(x), metric.score(x)
    assert first.shape == (3,) and torch.isfinite(first).all()
    assert ((first >= 0) & (first <= 1)).all()
    assert torch.equal(first, second)  # no dropout randomness
    assert first.max() - first.min() > 1e-6  # the score depends on the image


def test_batch_scores_like_single_images(metric):
    x = images(3, seed=1, size=(50, 45))
    with torch.no_grad():
        batched = metric.score(x)
        single = torch.cat([metric.score(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_input(metric):
    x = images(2, seed=2).requires_grad_(True)
    metric.score(x).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_data_parallel_prefix_and_wrapped_state_dict_are_accepted(tmp_path, checkpoint_path):
    state = torch.load(checkpoint_path, weights_only=True)
    wrapped = tmp_path / "metaiqa_module.pth"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items())}, wrapped)
    metric = MetaIQA(resize=64, weights_path=str(wrapped)).load("cpu")
    reference = MetaIQA(resize=64, weights_path=str(checkpoint_path)).load("cpu")
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(metric.score(x), reference.score(x))


def test_wrong_file_is_refused_with_the_key_named(tmp_path, checkpoint_path):
    state = torch.load(checkpoint_path, weights_only=True)
    state["net.fc4.weight"] = torch.zeros(1)
    del state["net.relu2.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"missing keys \[net.relu2.weight\].*unexpected keys \[net.fc4.weight\]"):
        MetaIQA(weights_path=str(bad)).load("cpu")
    state = torch.load(checkpoint_path, weights_only=True)
    state["net.fc1.weight"] = torch.zeros(1024, 999)
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="size mismatch.*net.fc1.weight"):
        MetaIQA(weights_path=str(bad)).load("cpu")


def test_html_instead_of_checkpoint_is_refused(tmp_path):
    page = tmp_path / "metaiqa.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in to continue</body></html>")
    with pytest.raises(WeightsError, match="web page"):
        MetaIQA(weights_path=str(page)).load("cpu")


def test_scoring_before_load_loads_lazily_and_bad_shapes_are_refused(checkpoint_path):
    metric = MetaIQA(resize=32, weights_path=str(checkpoint_path))
    with torch.no_grad():
        assert metric.score(images(1)).shape == (1,)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(3, 40, 56\)"):
        metric.score(images(1)[0])
