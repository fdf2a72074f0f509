"""Random-rotation purifier: a small random turn breaks the pixel alignment an attack relies on."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import uniform_per_image


class RandomRotate(Defence):
    """Random rotate: turn each image by a random angle in [-limit, limit] degrees (corners filled black).

    Reference: torchvision ``RandomRotation(angle_limit)`` (nearest interpolation, no expansion, fill 0) in
    msu-video-group/adversarial-defenses-for-iqa (metrics/defences/random-rotate/run.py). The reference casts
    ``angle_limit`` to ``int``, so the limit is a whole number of degrees here (12.5 is refused rather than
    silently turned into 12). The reference draws one angle per call; here each image of a batch gets its own
    angle, drawn from the seed, so the clean and the attacked image of a pair are turned alike.
    """

    name = "random-rotate"
    randomized = True
    geometric = True
    differentiable = True
    params = (
        Param(
            "angle_limit",
            int,
            15,
            low=0,
            high=180,
            presets=(10, 15, 20, 30, 50),
            help="largest rotation in whole degrees (the reference's int(angle_limit)); "
            "the angle is uniform in [-limit, limit]",
        ),
        Param(
            "interpolation",
            str,
            "nearest",
            choices=("nearest", "bilinear"),
            help="resampling of the rotated image (reference: nearest)",
        ),
    )
    angle_limit: int
    interpolation: str

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF  # lazily: torchvision's import costs ~2 s at every CLI start

        angles = uniform_per_image(self.generator(seed, images.device), images, -self.angle_limit, self.angle_limit)
        mode = TF.InterpolationMode(self.interpolation)
        turned = [TF.rotate(image, angle, interpolation=mode, fill=[0.0]) for image, angle in zip(images, angles)]
        return torch.stack(turned)


@hookimpl
def iqadef_register_defences(register):
    register(RandomRotate)
