"""Only the extras (pyproject.toml has everything else): the `pyiqa` extra installs the in-tree adapter
distribution plugins/iqadef-pyiqa, which a requirement can only name by an absolute file:// URL."""

from pathlib import Path

from setuptools import setup

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
extras = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["iqadef"]["optional-dependencies"]
extras = {name: list(reqs) for name, reqs in extras.items()}
extras["pyiqa"] = [f"iqadef-pyiqa @ {(HERE / 'plugins' / 'iqadef-pyiqa').as_uri()}"]

setup(extras_require=extras)
