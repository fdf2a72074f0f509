"""DISCO purifier: official checkpoint layout (model spec + state dict), rendering, chunking, gradients."""

from __future__ import annotations

import hashlib

import pytest
import torch

from iqadef import WeightsError
from iqadef.plugins.defences._disco_arch import LIIF, OFFICIAL_CONFIG, make_coord
from iqadef.plugins.defences.disco import DiscoDefence

TINY = dict(n_resblocks=2, n_feats=8, hidden_list=(16, 16))

# sha256 of the sorted "key:shape" lines of the state dict of chihhuiho/disco's model built from
# training/configs/*/pgd.yaml (liif + edsr-baseline(no_upsampling) + mlp [256]*4), computed from the official code.
OFFICIAL_LAYOUT_SHA256 = "fbc915466603614b8f3878ab59b03b14fadfb99eecb0312915cfdcf48b4441bf"


def _spec(n_resblocks=2, n_feats=8, hidden=(16, 16)):
    """The model spec DISCO's train script saves next to the weights (from its yaml config)."""
    return {
        "name": "liif",
        "args": {
            "encoder_spec": {
                "name": "edsr-baseline",
                "args": {"no_upsampling": True, "n_resblocks": n_resblocks, "n_feats": n_feats},
            },
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": list(hidden)}},
        },
    }


def _official_checkpoint(path, *, seed=0):
    """{'model': {name, args, sd}, 'optimizer': {name, args, sd}, 'epoch'} as chihhuiho/disco saves it."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) * 0.1 for k, v in LIIF(**{**OFFICIAL_CONFIG, **TINY}).state_dict().items()}
    optimizer = {
        "name": "adam",
        "args": {"lr": 1e-4},
        "sd": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}],
        },
    }
    torch.save({"model": {**_spec(), "sd": state}, "optimizer": optimizer, "epoch": 3}, path)
    return state


@pytest.fixture
def defence(tmp_path):
    path = tmp_path / "disco_pgd.pth"
    _official_checkpoint(path)
    return DiscoDefence(weights_path=str(path)).load("cpu")


def test_official_config_has_the_official_key_layout():
    with torch.device("meta"):
        state = LIIF(**OFFICIAL_CONFIG).state_dict()
    assert len(state) == 82
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == OFFICIAL_LAYOUT_SHA256
    assert tuple(state["imnet.layers.0.weight"].shape) == (256, 64 * 9 + 4)  # unfolded feature + coord + cell
    assert "encoder.sub_mean.weight" in state and "encoder.body.16.weight" in state


def test_official_layout_checkpoint_builds_from_its_spec(defence, tmp_path):
    network = defence.network
    assert len(network.encoder.body) == 3 and network.encoder.out_dim == 8
    saved = torch.load(tmp_path / "disco_pgd.pth", weights_only=True)["model"]["sd"]
    assert all(torch.equal(network.state_dict()[k], v) for k, v in saved.items())
    images = torch.rand(2, 3, 12, 15)
    out = defence.purify(images)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert defence.differentiable and not defence.randomized and defence.preserves_size


def test_chunking_does_not_change_the_result(defence):
    images = torch.rand(2, 3, 9, 11)
    whole = defence.purify(images)
    defence.query_chunk = 7
    assert torch.allclose(defence.purify(images), whole, atol=1e-6)


def test_batch_members_are_independent(defence):
    images = torch.rand(3, 3, 10, 10)
    batched = defence.purify(images)
    assert torch.allclose(batched[1:2], defence.purify(images[1:2]), atol=1e-6)


def test_local_ensemble_weights_sum_to_one():
    """With an MLP that outputs a constant, the area-weighted blend returns exactly that constant."""
    network = LIIF(**{**OFFICIAL_CONFIG, **TINY})
    last = network.imnet.layers[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.25, -0.5, 0.75]))
    out = network(torch.rand(1, 3, 7, 9))
    assert torch.allclose(out, torch.tensor([0.25, -0.5, 0.75]).view(1, 3, 1, 1).expand(1, 3, 7, 9), atol=1e-6)


def test_make_coord_gives_pixel_centres():
    coord = make_coord(2, 4)
    assert torch.allclose(coord[..., 0][:, 0], torch.tensor([-0.5, 0.5]))
    assert torch.allclose(coord[..., 1][0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_gradients_reach_the_input(defence):
    images = (torch.rand(1, 3, 10, 12) * 0.5 + 0.25).requires_grad_(True)
    defence.forward(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_bare_state_dict_uses_the_class_config(tmp_path):
    class TinyDisco(DiscoDefence):
        arch_config = {**OFFICIAL_CONFIG, **TINY}

    path = tmp_path / "bare.pth"
    torch.save(LIIF(**TinyDisco.arch_config).state_dict(), path)
    assert TinyDisco(weights_path=str(path)).load("cpu").purify(torch.rand(1, 3, 6, 6)).shape == (1, 3, 6, 6)


def test_unsupported_spec_is_a_clear_weights_error(tmp_path):
    path = tmp_path / "rdn.pth"
    spec = _spec()
    spec["args"]["encoder_spec"]["name"] = "rdn"
    torch.save({"model": {**spec, "sd": {}}}, path)
    with pytest.raises(WeightsError, match="rdn"):
        DiscoDefence(weights_path=str(path)).load("cpu")


def test_missing_weights_offline_names_the_file(offline_home):
    with pytest.raises(WeightsError, match="disco_pgd.pth"):
        DiscoDefence().load("cpu")
