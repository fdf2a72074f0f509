"""Paths of the checkout the tests run from: one place, instead of ``Path(__file__).parents[k]`` in each test
(which breaks when a test file moves). tests/conftest.py puts this folder on sys.path."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src"
#: The images bundled with the package (src/iqadef/data/images).
BUNDLED_IMAGES = SRC / "iqadef" / "data" / "images"
