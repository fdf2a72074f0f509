"""``drs``: denoised randomized smoothing (Salman et al., NeurIPS 2020, "Denoised smoothing"; code
``microsoft/denoised-smoothing``): the binned score of ``f(D(x + noise))`` with a denoiser ``D`` trained for
sigma, certified exactly as ``rs`` (any deterministic function of the noisy image keeps the certificate).

The reference's DRS rows (``ccrf/calc_rs_*.py``, the ``rs_dn`` files) load a DnCNN-17 trained by
``microsoft/denoised-smoothing``; iqadef's denoiser is the one ``iqadef train-dms`` trains (a 5-layer residual
CNN; ``--rank-weight 0 --target-weight 0`` trains it with MSE alone, as denoised smoothing's MSE objective):
docs/fidelity.md says so.
"""

from __future__ import annotations

from iqadef import BinnedSmoothing, binned_params, hookimpl

from .dms_iqa import DMSIQA


class DenoisedRandomizedSmoothing(BinnedSmoothing, DMSIQA):
    """rs after a denoiser trained for sigma (`weights_path`, from `iqadef train-dms`): Salman et al. 2020.

    The certified radius and abstention are those of rs (Cohen et al. 2019) for the function x -> bin(f(D(x)))."""

    name = "drs"
    version = "1"
    params = binned_params() + DMSIQA.params[-1:]


@hookimpl
def iqadef_register_certified(register):
    register(DenoisedRandomizedSmoothing)
