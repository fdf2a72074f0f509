"""The names of the metrics the adapter registers, written out so that registering them imports nothing:
neither pyiqa (seconds: it imports every architecture) nor torch. They are the per-image no-reference metrics
of pyiqa :data:`PYIQA_VERSION` that :mod:`.catalog` keeps (tests/plugins/iqadef-pyiqa checks the two agree); a new pyiqa
version: ``python -m iqadef_pyiqa.table --names`` prints the list anew.
"""

from __future__ import annotations

#: The pyiqa version :data:`NAMES` was read from.
PYIQA_VERSION = "0.1.16"

#: pyiqa's names of the registered metrics (iqadef's name: ``pyiqa-<name>``), in pyiqa's order.
NAMES = (
    "piqe", "niqe", "niqe_matlab", "ilniqe", "brisque", "brisque_matlab", "nrqm", "pi", "cnniqa", "musiq",
    "musiq-ava", "musiq-paq2piq", "musiq-spaq", "nima", "nima-koniq", "nima-spaq", "nima-vgg16-ava", "paq2piq",
    "dbcnn", "maniqa", "maniqa-pipal", "maniqa-kadid", "clipiqa", "clipiqa+", "clipiqa+_vitL14_512",
    "clipiqa+_rn50_512", "fgresq", "tres", "tres-flive", "hyperiqa", "metaiqa", "uranker", "entropy", "topiq_nr",
    "topiq_nr-flive", "topiq_nr-spaq", "topiq_nr-face", "topiq_nr_swin-face", "topiq_nr-face-v1", "topiq_iaa",
    "topiq_iaa_res50", "laion_aes", "liqe", "liqe_mix", "wadiqam_nr", "qalign", "qalign_8bit", "qalign_4bit",
    "qrealign", "qrealign-mini", "qrealign-lite", "qrealign-pro", "compare2score", "unique", "arniqa",
    "arniqa-live", "arniqa-csiq", "arniqa-tid", "arniqa-kadid", "arniqa-clive", "arniqa-flive", "arniqa-spaq",
    "maclip", "qualiclip", "qualiclip+", "qualiclip+-clive", "qualiclip+-flive", "qualiclip+-spaq", "afine_nr",
)


def class_name(pyiqa_name: str) -> str:
    """The name of a metric's class in :mod:`.metrics` (``Pyiqa_`` and the name, other characters as ``_``)."""
    return "Pyiqa_" + "".join(ch if ch.isalnum() else "_" for ch in pyiqa_name)

