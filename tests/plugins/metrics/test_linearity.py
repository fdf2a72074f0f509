"""LinearityIQA: the official ``p1q2.pth`` layout loads strictly, scores are calibrated with k[0]/b[0],
batches score like single images, gradients reach the input; the default input is the image at its own
size (the MSU wrapper), ``preprocess: official`` is test_demo.py's PIL pipeline bit for bit.

The checkpoint is rebuilt here from the official ``IQAModel`` description (random weights, the official key
names and shapes) once per module: a full ResNeXt-101 is ~350 MB, so the heavy tests share it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
import torchvision.transforms.functional as TF
from official_layout import images, random_state
from PIL import Image
from torch import nn

from iqadef import ConfigError, WeightsError
from iqadef.core.plugins import installed_plugins
from iqadef.plugins.metrics._official import build_from_state
from iqadef.plugins.metrics.linearity import Linearity, LinearityNet, mapping_coefficient

K = [0.5, 2.0, 3.0]  # [final, layer3 side, layer4 side], Python floats as IQAperformance stores them
B = [50.0, -1.0, -2.0]


def official_iqamodel_on_meta() -> nn.Module:
    """The official ``IQAModel(arch='resnext101_32x8d', pool='avg', use_bn_end=False, P6=1, P7=1)`` layout."""

    def dr(n):
        return nn.Sequential(
            nn.Linear(n, 1024),
            nn.BatchNorm1d(1024),
            nn.Linear(1024, 256),
            nn.BatchNorm1d(256),
            nn.Linear(256, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )

    with torch.device("meta"):
        model = nn.Module()
        model.features = nn.Sequential(*list(torchvision.models.resnext101_32x8d().children())[:-2])
        model.dr6, model.dr7 = dr(1024), dr(2048)
        model.regr6, model.regr7, model.regression = nn.Linear(64, 1), nn.Linear(64, 1), nn.Linear(128, 1)
    return model


def test_official_key_names_and_shapes_match_the_network():
    official = {k: tuple(v.shape) for k, v in official_iqamodel_on_meta().state_dict().items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in LinearityNet().state_dict().items()}
    assert ours == official
    # a few names straight from the official IQAModel (features = children()[:-2], dr6/dr7 Sequential indices)
    assert official["features.0.weight"] == (64, 3, 7, 7)
    assert official["features.6.22.conv3.weight"] == (1024, 1024, 1, 1)
    assert official["features.7.2.bn3.running_var"] == (2048,)
    assert official["dr6.0.weight"] == (1024, 1024) and official["dr7.0.weight"] == (1024, 2048)
    assert official["dr6.5.num_batches_tracked"] == () and official["regression.weight"] == (1, 128)


def test_metadata_and_defaults():
    metric = Linearity()
    assert metric.name == "linearity" and metric.higher_is_better
    assert metric.range == pytest.approx((25.78, 83.23), abs=0.01)
    assert metric.preprocess == "msu" and metric.resize is None  # the MSU wrapper: native size
    assert "linearity" in installed_plugins().names("metrics")


def test_default_input_is_the_image_at_its_own_size():
    x = images(1, size=(45, 61))
    assert torch.equal(Linearity().prepare(x), x)


def test_preprocess_is_part_of_the_identity_and_validated():
    assert Linearity().key() != Linearity(preprocess="official").key()
    assert Linearity(preprocess="official").label == "linearity[preprocess=official]"
    with pytest.raises(ConfigError, match=r"linearity.preprocess: 'pil' is not allowed; expected one of 'msu'"):
        Linearity(preprocess="pil")


def official_demo_input(array: np.ndarray, size=(498, 664)) -> torch.Tensor:
    """test_demo.py: ``resize(Image, (h, w))`` (torchvision on a PIL image: BILINEAR), ``to_tensor``."""
    return TF.to_tensor(TF.resize(Image.fromarray(array), list(size)))[None]


@pytest.mark.parametrize("array", [skimage.data.chelsea(), skimage.data.coffee()], ids=["chelsea", "coffee"])
def test_official_input_is_test_demo_resize_bit_for_bit(array):
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    ours = Linearity(preprocess="official").prepare(x)
    assert ours.shape == (1, 3, 498, 664)
    assert torch.equal((ours * 255).round(), (official_demo_input(array) * 255).round())


def test_official_input_rounds_the_image_to_8_bits_first():
    """A float image is the 8-bit picture the original loads (nearest level), with a straight-through gradient."""
    array = skimage.data.chelsea()[:64, :80]
    x = (torch.from_numpy(array).permute(2, 0, 1)[None].float() + 0.3) / 255  # off the 8-bit grid
    x.requires_grad_(True)
    ours = Linearity(preprocess="official", resize=[40, 50]).prepare(x)
    assert torch.equal((ours.detach() * 255).round(), (official_demo_input(array, (40, 50)) * 255).round())
    ours.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()


@pytest.mark.parametrize("bad", [[64], [64, 64, 3], [64.5, 64], [8, 8], ["a", 64]])
def test_resize_must_be_two_integers(bad):
    with pytest.raises(ConfigError, match="resize"):
        Linearity(resize=bad)


@pytest.mark.parametrize(
    "stored",
    [
        K,
        tuple(K),
        np.array(K),
        np.float64(K[0]),
        torch.tensor(K),
        K[0],
        [np.float32(K[0]), 1.0, 1.0],
        [torch.tensor(K[0]), 1.0, 1.0],
    ],
)
def test_mapping_coefficient_accepts_lists_numpy_and_tensors(stored):
    assert mapping_coefficient(stored, "k", "test") == pytest.approx(K[0])


@pytest.mark.parametrize("stored", [[], "0.5", None, {"a": 1}])
def test_mapping_coefficient_refuses_other_things(stored):
    with pytest.raises(WeightsError, match="'k'"):
        mapping_coefficient(stored, "k", "test")


def test_missing_key_is_named():
    state = random_state(official_iqamodel_on_meta().dr6, 0)  # only dr6: everything else is missing
    with pytest.raises(WeightsError, match="missing keys.*features.0.weight"):
        build_from_state(LinearityNet, {f"dr6.{k}": v for k, v in state.items()}, "p1q2")


def test_checkpoint_without_k_and_b_is_refused(tmp_path):
    path = tmp_path / "p1q2.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}}, path)  # e.g. a SPAQ-style file
    with pytest.raises(WeightsError, match=r"official layout \{'model', 'k', 'b'\}.*state_dict"):
        Linearity(weights_path=str(path)).load("cpu")


def test_offline_error_names_the_expected_path(offline_home):
    with pytest.raises(WeightsError) as info:
        Linearity().load()
    message = str(info.value)
    assert str(offline_home / "hub" / "iqadef" / "p1q2.pth") in message
    assert "titan.gml-team.ru" in message and "weights_path" in message


# -- heavy: one full-size random checkpoint per module -----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("linearity") / "p1q2.pth"
    state = random_state(official_iqamodel_on_meta(), seed=0)
    torch.save(
        {
            "model": state,
            "optimizer": {
                "state": {},
                "param_groups": [
                    {
                        "lr": 1e-4,
                        "betas": (0.9, 0.999),
                        "eps": 1e-8,
                        "weight_decay": 0.0,
                        "amsgrad": False,
                        "params": [0, 1],
                    }
                ],
            },
            "amp": OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": 0}),
            "k": list(K),
            "b": list(B),
        },
        path,
    )
    del state
    return path


@pytest.fixture(scope="module")
def metric(checkpoint_path):
    return Linearity(resize=[32, 48], weights_path=str(checkpoint_path)).load("cpu")


@pytest.mark.slow
def test_official_checkpoint_loads_and_is_calibrated_with_k0_b0(metric):
    assert metric.k == K[0] and metric.b == B[0]
    assert not metric.net.training and not any(p.requires_grad for p in metric.net.parameters())
    x = images(2)
    scores = metric.score(x)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with torch.no_grad():
        raw = metric.net(
            (
                torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", antialias=True, align_corners=False)
                - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            )
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        )
    torch.testing.assert_close(scores, raw * K[0] + B[0], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(scores[0], scores[1])


@pytest.mark.slow
def test_batch_scores_like_single_images_and_is_deterministic(metric):
    x = images(2, seed=1)
    with torch.no_grad():
        batched = metric.score(x)
        single = torch.cat([metric.score(x[i : i + 1]) for i in range(2)])
        again = metric.score(x)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)
    assert torch.equal(batched, again)


@pytest.mark.slow
def test_official_preprocess_scores_the_test_demo_input(checkpoint_path):
    official = Linearity(preprocess="official", resize=[32, 48], weights_path=str(checkpoint_path)).load("cpu")
    array = skimage.data.chelsea()[:45, :61]
    x = (torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    score = official.score(x)
    with torch.no_grad():
        demo = TF.normalize(official_demo_input(array, (32, 48)), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        expected = official.net(demo) * K[0] + B[0]
    torch.testing.assert_close(score.detach(), expected, rtol=1e-5, atol=1e-4)
    score.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.slow
def test_gradients_reach_the_input(metric):
    x = images(2, seed=2).requires_grad_(True)
    metric.score(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[0].abs().sum() > 0) and (x.grad[1].abs().sum() > 0)
