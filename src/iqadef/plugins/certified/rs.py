"""``rs``: randomized smoothing of the binned score with a certified L2 radius (Cohen et al., ICML 2019), as the
certified-IQA study applies it (``katiashh/certified-iqa-defenses`` ``ccrf/calc_rs_*.py``)."""

from __future__ import annotations

from iqadef import BinnedSmoothing, hookimpl


class RandomizedSmoothing(BinnedSmoothing):
    """Most probable score bin under Gaussian noise, certified within an L2 radius or abstained (Cohen et al.).

    The metric's range is cut into 10 bins (+1 below, +1 above); 100 noisy copies select the bin, 1000 more
    bound its probability (Clopper-Pearson, alpha 0.001); radius sigma * Phi^-1(pA), abstain when pA < 0.5."""

    name = "rs"
    version = "1"


@hookimpl
def iqadef_register_certified(register):
    register(RandomizedSmoothing)
