"""Peak memory of loading one huge image (docs/reliability.md: huge images are decoded at bounded memory).

    python benchmarks/image_memory.py [--side 12000] [--out benchmarks/results/image_memory.json]

For an RGB, an RGBA and a 16-bit grey PNG of SIDE x SIDE pixels (and a JPEG), each load runs in a fresh
process (Linux); the figure is the growth of its peak RSS (``VmHWM``) over the process's peak before
the call, in MB, next to the size of PIL's own decoded image (4 bytes per pixel for RGB/RGBA, 2 for 16-bit).
``--source FILE`` measures another copy of ``iqadef/core/dataset.py`` (e.g. the previous version, from
``git show HEAD~1:src/iqadef/core/dataset.py``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MAKE = """
import sys
import numpy as np
from PIL import Image
side, folder = int(sys.argv[1]), sys.argv[2]
ramp = (np.arange(side) % 256).astype(np.uint8)
rgb = np.empty((side, side, 3), np.uint8)
rgb[..., 0], rgb[..., 1], rgb[..., 2] = ramp[None, :], ramp[:, None], 128
Image.fromarray(rgb).save(f"{folder}/rgb.png", compress_level=1)
Image.fromarray(rgb).save(f"{folder}/rgb.jpg", quality=90)
rgba = np.empty((side, side, 4), np.uint8)
rgba[..., :3], rgba[..., 3] = rgb, ramp[None, :]
del rgb
Image.fromarray(rgba, "RGBA").save(f"{folder}/rgba.png", compress_level=1)
del rgba
grey = (np.arange(side, dtype=np.uint32)[None, :] * 5 % 65536).astype(np.uint16) * np.ones((side, 1), np.uint16)
Image.fromarray(grey).save(f"{folder}/grey16.png", compress_level=1)
"""

MEASURE = """
import importlib.util, json, re, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch  # noqa: F401 - imported before the baseline, as in a run
if sys.argv[2]:
    spec = importlib.util.spec_from_file_location("iqadef.core._measured_dataset", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
else:
    from iqadef.core import dataset as module
def peak_kb():  # VmHWM: ru_maxrss would start from the parent's peak (Linux keeps it across fork + exec)
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
before = peak_kb()
image = module.read_image(Path(sys.argv[1]))
print(json.dumps({"shape": list(image.shape), "peak_growth_mb": round((peak_kb() - before) / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--source", type=Path, help="another dataset.py to measure instead of the installed one")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "image_memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-c", MAKE, str(args.side), folder], check=True)
        results = {}
        for name, bytes_per_pixel in (("rgb.png", 4), ("rgba.png", 4), ("grey16.png", 2), ("rgb.jpg", 4)):
            done = subprocess.run([sys.executable, "-c", MEASURE, f"{folder}/{name}", str(args.source or "")],
                                  check=True, capture_output=True, text=True)
            row = json.loads(done.stdout)
            row["decoded_mb"] = round(args.side * args.side * bytes_per_pixel / 2**20)
            results[name] = row
            print(name, row, flush=True)
    record = {"side": args.side, "source": str(args.source or "installed iqadef"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
