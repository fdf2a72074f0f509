"""Plugin-provided commands (``iqadef_register_commands``) and the core's import boundary."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
CORE = ROOT / "src" / "iqadef" / "core"


def _install_command_plugin(tmp_path: Path, command_name: str) -> dict[str, str]:
    """A third-party distribution whose only contribution is one command; returns a subprocess env."""
    site = tmp_path / "site"
    info = site / "iqadef_hello-0.2.dist-info"
    info.mkdir(parents=True)
    (site / "iqadef_hello.py").write_text(
        textwrap.dedent(f'''
        from iqadef import Command, IqadefError, hookimpl

        class Hello(Command):
            """Greets; refuses an empty name."""
            name = {command_name!r}
            help = "say hello (a third-party command)"

            def configure(self, parser):
                parser.add_argument("who")
                parser.add_argument("--times", type=int, default=1)

            def run(self, args):
                if not args.who:
                    raise IqadefError("who: give a name")
                print(" ".join(["hello " + args.who] * args.times))
                return 0

        @hookimpl
        def iqadef_register_commands(register):
            register(Hello)
    ''')
    )
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: iqadef-hello\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[iqadef]\nhello = iqadef_hello\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _iqadef(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iqadef", *args], capture_output=True, text=True, env=env, timeout=300)


def test_third_party_command_is_listed_parsed_and_run(tmp_path):
    env = _install_command_plugin(tmp_path, "hello")
    done = _iqadef("hello", "world", "--times", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello world hello world"
    assert "say hello (a third-party command)" in _iqadef("--help", env=env).stdout
    mistake = _iqadef("hello", "", env=env)
    assert mistake.returncode == 2 and mistake.stderr.strip() == "error: who: give a name"
    plugins = _iqadef("plugins", "--json", env=env)
    assert '"commands": [\n' in plugins.stdout and '"hello"' in plugins.stdout


def test_a_plugin_command_may_not_take_a_builtin_name(tmp_path):
    env = _install_command_plugin(tmp_path, "report")
    env.pop("IQADEF_STRICT_PLUGINS", None)  # an in-process `main(["--strict-plugins", ...])` of another test sets it
    done = _iqadef("--help", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "registers the command 'report', which is a built-in iqadef command" in done.stderr
    assert "'iqadef-hello:hello'" in done.stderr  # the warning names the plugin; only its command is left out
    strict = _iqadef("--strict-plugins", "--help", env=env)
    assert strict.returncode == 2 and "strict plugin mode" in strict.stderr


def test_builtin_commands_do_not_load_plugins(tmp_path):
    """`iqadef run` etc. parse without importing any plugin; the plugin registry loads only when needed."""
    code = (
        "import sys\nfrom iqadef.cli import build_parser\nbuild_parser().parse_args(['report', 'x'])\n"
        "print(any(m.startswith('iqadef.plugins.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    version = (
        "import sys\nfrom iqadef.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(any(m.startswith('iqadef.plugins.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", version], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_train_fcn_command_lives_in_the_fcn_plugin_and_trains_from_a_run(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"""
dataset: {{images: builtin}}
output: {tmp_path / "run"}
metrics: [tiny-iqa]
attacks: [{{name: fgsm}}]
defences: [no-defence]
""")
    run = _iqadef("run", str(registry), "--limit", "3", "--no-report", "--no-progress")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "fcn.pt"
    trained = _iqadef("train-fcn", str(tmp_path / "run"), "--out", str(out), "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    state = torch.load(out, weights_only=True)
    assert set(state) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias"}
    from iqadef.plugins.defences.fcn import FCNDefence, TrainFCNCommand

    assert TrainFCNCommand.name == "train-fcn"
    defence = FCNDefence(weights_path=out)
    defence.load(torch.device("cpu"))
    assert defence.purify(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    missing = _iqadef("train-fcn", str(tmp_path / "nowhere"), "--out", str(out))
    assert missing.returncode == 2 and "no results.parquet" in missing.stderr


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_never_imports_a_plugin_or_the_cli():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = sorted(
            m
            for m in _imported_modules(path, _package_of(path))
            if m == "iqadef.plugins" or m.startswith("iqadef.plugins.") or m.startswith("iqadef.cli")
        )
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_the_import_scan_resolves_relative_imports(tmp_path):
    """The scan above would see `from ..plugins.defences import fcn` written in a core module."""
    fake = tmp_path / "probe.py"
    fake.write_text("from ..plugins.defences import fcn\nfrom .plugins import installed_plugins\n")
    names = _imported_modules(fake, "iqadef.core")
    assert "iqadef.plugins.defences.fcn" in names and "iqadef.core.plugins.installed_plugins" in names
