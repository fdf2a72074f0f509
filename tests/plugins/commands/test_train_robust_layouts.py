"""train-robust writes each official metric's checkpoint in the layout its ``weights_path`` loads (random
weights in the official key layout; no training: the layout and the folded score map are what is tested)."""

from __future__ import annotations

import pytest
import torch
from official_layout import images, random_state

from iqadef.plugins.commands._robust_training import checkpoint_for
from iqadef.plugins.metrics.linearity import Linearity, LinearityNet
from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet
from iqadef.plugins.metrics.spaq import SPAQ, SPAQBaselineNet


def _random_checkpoint(factory, wrap, path):
    with torch.device("meta"):
        net = factory()
    torch.save(wrap(random_state(net, seed=0)), path)
    return path


CASES = {
    "spaq": (SPAQBaselineNet, lambda s: {"state_dict": s}, lambda p: SPAQ(patch_size=32, stride=16, weights_path=p)),
    "metaiqa": (MetaIQANet, lambda s: s, lambda p: MetaIQA(weights_path=p)),
    "linearity": (
        LinearityNet,
        lambda s: {"model": s, "k": [0.5, 1, 1], "b": [50.0, 0, 0]},
        lambda p: Linearity(resize=[32, 48], weights_path=p),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_checkpoint_loads_with_weights_path_and_carries_the_map(tmp_path, name):
    factory, wrap, make = CASES[name]
    original = make(str(_random_checkpoint(factory, wrap, tmp_path / "official.pt"))).load("cpu")
    x = images(2, size=(40, 56))
    with torch.no_grad():
        before = original.score(x)
    checkpoint, mapped = checkpoint_for(original, (1.5, 2.0), x)
    torch.save(checkpoint, tmp_path / "robust.pt")
    robust = make(str(tmp_path / "robust.pt")).load("cpu")
    with torch.no_grad():
        after = robust.score(x)
    if name == "metaiqa":  # a sigmoid after the last linear layer: the map cannot go in, and is not
        assert not mapped and torch.allclose(after, before, atol=1e-5)
    else:
        assert mapped and torch.allclose(after, 1.5 * before + 2.0, rtol=1e-4, atol=1e-3)
