"""Random-crop purifier: keeps a random window, discarding part of the perturbation and shifting the rest."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import randint_per_image


class RandomCrop(Defence):
    """Random crop: cut a random size×size window out of each image (output is smaller than the input).

    Reference: torchvision ``RandomCrop(size)`` in msu-video-group/adversarial-defenses-for-iqa
    (metrics/defences/random-crop/run.py). Each image of a batch gets its own window, drawn from the seed, so the
    clean and the attacked image of a pair are cut alike. Where ``size`` exceeds a side of the image, that side is
    kept whole (the reference would raise instead), so e.g. a 288 crop of a 256×384 image is 256×288.
    """

    name = "random-crop"
    randomized = True
    geometric = True
    differentiable = True
    preserves_size = False
    params = (
        Param(
            "size",
            int,
            128,
            low=1,
            presets=(32, 64, 128, 256, 288),
            help="side of the square crop in pixels; clipped to the image's sides",
        ),
    )
    size: int

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        generator = self.generator(seed, images.device)
        tops = randint_per_image(generator, images, height - crop_h + 1)
        lefts = randint_per_image(generator, images, width - crop_w + 1)
        crops = [image[:, top : top + crop_h, left : left + crop_w] for image, top, left in zip(images, tops, lefts)]
        return torch.stack(crops)


@hookimpl
def iqadef_register_defences(register):
    register(RandomCrop)
