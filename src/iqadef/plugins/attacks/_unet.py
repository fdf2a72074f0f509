"""The U-Net generator of the MSU trained attacks (private: not a plugin module).

Rebuilt from ``UnetGenerator`` in adversarial-defenses-for-iqa ``metrics/methods/utils/cnn_model.py``
(the same class is in ``cnn-attack/train.py`` and MSU_Metrics_Robustness_Benchmark
``generative-uap/train.py``) with the attributes' names kept, so a state dict the reference saved
loads unchanged: eight 4x4 stride-2 convolutions down (leaky ReLU 0.2, normalisation from the second
on, none on the innermost), eight transposed convolutions up with skip connections, dropout 0.5 on
the three innermost decoder stages, ``tanh`` output. Both trained attacks build it with
``norm_type='instance'`` (no affine parameters) and ``act_type='relu'``. Its input side must be a
multiple of 256 (eight halvings).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: The bound of :func:`normalize_and_scale`'s output.
OUTPUT_SCALE = 10.0 / 255.0


def normalize_and_scale(delta: torch.Tensor) -> torch.Tensor:
    """The reference's scaling of the generator's tanh output: ``delta * 10.0 / 255.0`` (two roundings,
    as written there)."""
    return delta * 10.0 / 255.0


class UnetGenerator(nn.Module):
    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm_type: str = "instance", act_type: str = "relu"
    ):
        super().__init__()
        widths = (ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8)
        ins = (input_nc,) + widths[:-1]
        for i, (cin, cout) in enumerate(zip(ins, widths), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 4, 2, 1))
        ups = (
            (ngf * 8, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 4),
            (ngf * 8, ngf * 2),
            (ngf * 4, ngf),
            (ngf * 2, output_nc),
        )
        for i, (cin, cout) in enumerate(ups, start=1):
            setattr(self, f"dconv{i}", nn.ConvTranspose2d(cin, cout, 4, 2, 1))
        norm = nn.BatchNorm2d if norm_type == "batch" else nn.InstanceNorm2d
        self.norm, self.norm2, self.norm4, self.norm8 = norm(ngf), norm(ngf * 2), norm(ngf * 4), norm(ngf * 8)
        self.leaky_relu = nn.LeakyReLU(0.2, True)
        self.act = nn.SELU(True) if act_type == "selu" else nn.ReLU(True)
        self.dropout = nn.Dropout(0.5)
        self.tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.conv1(x)
        e2 = self.norm2(self.conv2(self.leaky_relu(e1)))
        e3 = self.norm4(self.conv3(self.leaky_relu(e2)))
        e4 = self.norm8(self.conv4(self.leaky_relu(e3)))
        e5 = self.norm8(self.conv5(self.leaky_relu(e4)))
        e6 = self.norm8(self.conv6(self.leaky_relu(e5)))
        e7 = self.norm8(self.conv7(self.leaky_relu(e6)))
        e8 = self.conv8(self.leaky_relu(e7))
        d = torch.cat((self.dropout(self.norm8(self.dconv1(self.act(e8)))), e7), 1)
        d = torch.cat((self.dropout(self.norm8(self.dconv2(self.act(d)))), e6), 1)
        d = torch.cat((self.dropout(self.norm8(self.dconv3(self.act(d)))), e5), 1)
        d = torch.cat((self.norm8(self.dconv4(self.act(d))), e4), 1)
        d = torch.cat((self.norm4(self.dconv5(self.act(d))), e3), 1)
        d = torch.cat((self.norm2(self.dconv6(self.act(d))), e2), 1)
        d = torch.cat((self.norm(self.dconv7(self.act(d))), e1), 1)
        return self.tanh(self.dconv8(self.act(d)))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Dropout draws from torch's global generator (as in the reference): seed it for this block only and
    restore the caller's state afterwards. Yields a function giving the block's current state (for a
    checkpoint); :func:`restore_global_rng` sets a saved one."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))

        def current() -> dict:
            out = {"cpu": torch.get_rng_state()}
            if devices:
                out["cuda"] = torch.cuda.get_rng_state(device)
            return out

        yield current


def restore_global_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
