"""Record which pyiqa files each metric loads first: ``python -m iqadef_pyiqa.scan`` rewrites
``known_files.json`` (declared as the metric's weights, so ``iqadef weights`` lists them and a run fetches
them before any work).

Each metric is built with pyiqa's loader replaced by a recorder that notes the URL and stops the build,
and with torchvision / Hugging Face downloads stopped too (they are noted as backbones). Only the first
file is seen this way; files a metric asks for after it are still resolved by iqadef's rules when the
metric loads (:mod:`.files`), they are just not listed in advance. Run it offline: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import catalog
from .files import routed

OUT = Path(__file__).with_name("known_files.json")


class _Needs(Exception):
    def __init__(self, kind: str, url: str):
        super().__init__(url)
        self.kind, self.url = kind, url


def _pyiqa_file(url, model_dir=None, progress=True, file_name=None):
    raise _Needs("pyiqa", url)


def first_needs(name: str) -> dict:
    import torch.hub

    import pyiqa

    def hub(url, *args, **kwargs):
        raise _Needs("torch-hub", url)

    saved = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = hub
    try:
        with routed(_pyiqa_file):
            pyiqa.create_metric(name, device="cpu", as_loss=True)
        return {"needs": None}
    except _Needs as need:
        return {"needs": need.kind, "url": need.url}
    except Exception as exc:  # noqa: BLE001  (HF offline, missing optional packages: noted as they are)
        return {"needs": "other", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    finally:
        torch.hub.download_url_to_file = saved


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = sys.argv[1:] or [e.pyiqa_name for e in catalog.entries()]
    table = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name in names:
        table[name] = first_needs(name)
        print(name, table[name], flush=True)
    table = {k: table[k] for k in sorted(table)}
    OUT.write_text(json.dumps({"pyiqa": catalog.pyiqa_version(), **{k: v for k, v in table.items() if k != "pyiqa"}},
                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
