"""Commands, the Python API and everyday CLI use: bad arguments are one line (exit 2), trainers never lose their
weights, a broken plugin command disables only itself, files follow the umask (docs/reliability.md,
"Commands and API")."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from iqadef.cli import main
from iqadef.core.errors import ConfigError, IqadefError
from iqadef.core.weights import save_trained_weights
from iqadef.store.results import atomic_write_bytes


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# -- trainers ---------------------------------------------------------------------------------------------


def test_a_checkpoint_named_like_its_own_record_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "dms.json"
    with pytest.raises(ConfigError, match="training record"):
        save_trained_weights(out, {"model": {"w": torch.ones(2)}}, {"epochs": 1})
    assert not out.exists()
    save_trained_weights(tmp_path / "dms.pt", {"model": {"w": torch.ones(2)}}, {"epochs": 1})
    assert torch.load(tmp_path / "dms.pt", weights_only=True)["model"]["w"].tolist() == [1.0, 1.0]
    assert json.loads((tmp_path / "dms.json").read_text()) == {"epochs": 1}


@pytest.mark.parametrize("command", ["train-dms", "train-fcn"])
def test_trainers_refuse_a_json_out_before_training(tmp_path, command, capsys):
    assert main([command, str(tmp_path / "no-run"), "--out", str(tmp_path / "w.json")]) == 2
    assert "training record" in _one_error_line(capsys)


def test_non_finite_trained_weights_are_not_saved(tmp_path):
    out = tmp_path / "w.pt"
    with pytest.raises(IqadefError, match="NaN or infinite"):
        save_trained_weights(out, {"model": {"conv.weight": torch.tensor([1.0, float("nan")])}, "sigma": 0.1}, {})
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--batch-size", "0"),
        ("--sigma", "inf"),
        ("--sigma", "nan"),
        ("--epochs", "0"),
        ("--lr", "-1"),
        ("--rank-weight", "inf"),
    ],
)
def test_train_dms_refuses_bad_parameters_in_one_line(tmp_path, option, value, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    assert main(["train-dms", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt"), option, value]) == 2
    assert _one_error_line(capsys).startswith(f"error: {option}:")
    assert not (tmp_path / "w.pt").exists()


def test_train_dms_names_a_run_json_that_is_not_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{not json")
    assert main(["train-dms", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt")]) == 2
    assert "run.json: cannot be read" in _one_error_line(capsys)


# -- files follow the umask ---------------------------------------------------------------------------------


def test_atomic_writes_follow_the_umask(tmp_path):
    from iqadef.plugins.attacks.uap import save_perturbation

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.html", b"<html>")
        save_perturbation(torch.zeros(3, 4, 4), tmp_path / "uap.pt")  # the UAP cache: the same helper
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.csv", b"a,b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "uap.pt").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.csv", "report.html", "uap.pt"]  # no temp left
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600


# -- a broken plugin command disables only itself ---------------------------------------------------------


def _command_plugins():
    import types

    from iqadef import Command, hookimpl

    class BadInit(Command):
        name, help = "bad-init", "raises in its constructor"

        def __init__(self):
            raise RuntimeError("no GPU driver")

    class BadConfigure(Command):
        name, help = "bad-configure", "raises in configure()"

        def configure(self, parser):
            parser.add_argument("--x")
            parser.add_argument("--x")  # argparse: conflicting option string

    class Clash(Command):
        name, help = "report", "takes a built-in's name"

    class Good(Command):
        name, help = "good", "works"

        def run(self, args):
            print("good ran")
            return 0

    module = types.ModuleType("iqadef_broken_commands")

    @hookimpl
    def iqadef_register_commands(register):
        for cls in (BadInit, BadConfigure, Clash, Good):
            register(cls)

    module.iqadef_register_commands = iqadef_register_commands
    return module


@pytest.fixture()
def broken_command_registry(monkeypatch):
    import iqadef.cli as cli
    from iqadef.core.plugins import InstalledPlugins

    registry = InstalledPlugins(extra=[_command_plugins()], entry_points=False, strict=False)
    monkeypatch.setattr(cli, "_plugins", lambda: registry)
    monkeypatch.setenv("IQADEF_STRICT_PLUGINS", "0")  # restored after the test (main() sets it for --strict)
    return registry


def test_a_plugin_command_that_fails_to_set_up_disables_only_itself(broken_command_registry, capsys, recwarn):
    assert main(["good"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "good ran"
    said = captured.err + "\n".join(str(w.message) for w in recwarn)
    for name in ("bad-init", "bad-configure", "report"):
        assert "plugin 'iqadef_broken_commands' (distribution '<local>')" in said and repr(name) in said
    assert "RuntimeError: no GPU driver" in said and "Traceback" not in said
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    assert "train-dms" in listed and "good" in listed and "export" in listed
    assert "bad-init" not in listed and "bad-configure" not in listed and "takes a built-in's name" not in listed
    with pytest.raises(SystemExit) as done:
        main(["bad-init"])
    assert done.value.code == 2


def test_the_builtin_keeps_working_beside_a_plugin_command_of_its_name(broken_command_registry, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2  # the built-in report, not the plugin's
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])  # a plugin command of the built-in plugins still works
    assert done.value.code == 0


def test_strict_plugins_makes_a_broken_plugin_command_fatal(broken_command_registry, monkeypatch, capsys):
    assert main(["--strict-plugins", "good"]) == 2
    line = _one_error_line(capsys)
    assert "iqadef_broken_commands" in line and "strict plugin mode" in line


# -- the Python API ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, limit=-1, **kw), "limit=-1"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, limit=0, **kw), "limit=0"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, limit="2", **kw), "limit='2'"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, limit=True, **kw), "limit=True"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, fresh="yes", **kw), "fresh='yes'"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(cfg, device=0, **kw), "device=0"),
        (lambda cfg, **kw: __import__("iqadef").run_grid(42, **kw), "config=42"),
    ],
)
def test_run_grid_refuses_bad_arguments_naming_them(tmp_path, image_dir, toy_registry, call, argument):
    import yaml
    from toy_plugins import SMALL_GRID

    config = yaml.safe_load(SMALL_GRID.format(images=image_dir, output=str(tmp_path / "run")))
    with pytest.raises(ConfigError) as refused:
        call(config, plugins=toy_registry, verbose=False)
    assert str(refused.value).startswith(f"run_grid: {argument} ") and "\n" not in str(refused.value)
    assert not (tmp_path / "run" / "results.sqlite").exists()


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: __import__("iqadef").load_attack("ifgsm", preset=[1]), "load_attack: preset=[1]"),
        (lambda: __import__("iqadef").load_metric(None), "load_metric: name=None"),
        (lambda: __import__("iqadef").load_defence("jpeg", device=3), "load_defence: device=3"),
        (lambda: __import__("iqadef").load_defence([1, 2]), "load_defence: name=[1, 2]"),
    ],
)
def test_load_functions_refuse_bad_arguments_naming_them(call, argument):
    with pytest.raises(ConfigError) as refused:
        call()
    assert str(refused.value).startswith(argument)


def test_run_grid_states_and_returns_where_the_results_and_report_are(tmp_path, image_dir, toy_registry, capsys):
    import yaml
    from toy_plugins import SMALL_GRID

    import iqadef

    config = yaml.safe_load(SMALL_GRID.format(images=image_dir, output="ignored"))
    df = iqadef.run_grid(config, out=tmp_path / "run", plugins=toy_registry, limit=2, report=True)
    assert df["image"].nunique() == 2
    report = Path(df.attrs["files"]["report.html"])
    assert report.is_file() and report.parent == tmp_path / "run" == Path(df.attrs["run_dir"])
    assert f"report: {report}" in capsys.readouterr().out


def test_load_images_reads_a_file_a_folder_or_the_bundled_set(tmp_path, image_dir):
    import iqadef

    builtin = iqadef.load_images("builtin", limit=3)
    assert builtin.shape[0] == 3 and builtin.shape[1] == 3 and 0 <= builtin.min() and builtin.max() <= 1
    folder = iqadef.load_images(image_dir, limit=4)  # img0..img3: 24x24
    with pytest.raises(ConfigError, match="2 sizes .* pass stack=False"):
        iqadef.load_images(image_dir)
    first = sorted(p for p in image_dir.rglob("*.png"))[0]
    one = iqadef.load_images(first)
    assert one.shape[0] == 1 and torch.equal(one[0], folder[0])
    listed = iqadef.load_images(image_dir, stack=False, limit=2)
    assert isinstance(listed, list) and len(listed) == 2 and listed[0].dim() == 3
    with pytest.raises(ConfigError, match="does not exist"):
        iqadef.load_images(tmp_path / "nowhere")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="bad.png: not a readable image"):
        iqadef.load_images(tmp_path / "bad.png")


# -- config-time checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, key",
    [
        ("{name: mean-smoothing, low: 5, high: 1}", "certified[0].low"),
        ("{name: mean-smoothing, low: 3, high: 3}", "certified[0].low"),
        ("{name: mean-smoothing, low: 1000}", "certified[0].low"),
        ("{name: mean-smoothing, high: -1000}", "certified[0].high"),
    ],
)
def test_mean_smoothing_bounds_are_checked_when_the_registry_is_read(tmp_path, image_dir, toy_registry, entry, key):
    from iqadef.config.registry import load_run_config

    path = tmp_path / "r.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: out\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
        f"certified: [{entry}]\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_run_config(path, plugins=toy_registry)
    assert key in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_list_help_names_every_kind(capsys):
    from iqadef.core.kinds import LISTED

    with pytest.raises(SystemExit):
        main(["--help"])
    overview = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("list "))
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    own = " ".join(capsys.readouterr().out.split())
    named = ", ".join(LISTED[:-1]) + " or " + LISTED[-1]
    assert "certified" in LISTED and "datasets" in LISTED
    assert named in overview and f"The installed {named}" in own


# -- progress without a terminal ------------------------------------------------------------------------------


def test_a_run_and_verify_print_plain_progress_lines_when_stderr_is_not_a_terminal(
    tmp_path, image_dir, toy_registry, monkeypatch, capsys
):
    import re
    import time

    from toy_plugins import small_grid_config

    import iqadef.cli as cli
    import iqadef.execute.executors as executors
    import iqadef.execute.local as local
    import iqadef.execute.progress as progress
    import iqadef.execute.verify as verify

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.02)
    real = local.execute_local

    def slow(*args, **kwargs):  # each unit takes at least 0.1 s: several intervals pass
        for item in real(*args, **kwargs):
            time.sleep(0.1)
            yield item

    monkeypatch.setitem(executors.EXECUTORS, "local", slow)  # the driver looks its executor up in the table
    monkeypatch.setattr(verify, "execute_local", slow)  # verify holds its own reference
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    small_grid_config(tmp_path, image_dir, toy_registry, "run")
    assert cli.main(["run", str(tmp_path / "run.yaml"), "--no-report"]) == 0  # stderr is captured: not a tty
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert lines, "no progress line"
    pattern = r"progress: (\d)/3 units, (\d+)/12 cells( \(\d+%\))?, \d+ s elapsed, eta (\d+ s|unknown)"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert int(re.fullmatch(pattern, lines[-1]).group(1)) >= 2  # it moves
    assert cli.main(["verify", str(tmp_path / "run"), "--cells", "4", "--seed", "1"]) == 0
    verify_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("verify: ")]
    assert verify_lines and re.fullmatch(r"verify: \d/\d units, \d+/\d+ cells.*", verify_lines[-1])
    assert cli.main(["verify", str(tmp_path / "run"), "--cells", "4", "--seed", "1", "--no-progress"]) == 0
    assert "verify: " not in capsys.readouterr().err


def test_the_plain_line_estimates_the_rest_from_the_cells_rate():
    from iqadef.execute.progress import _progress

    lines = _progress(None, 10, 120)
    lines.bar = None
    assert lines.plain_line(5.0) == "progress: 0/10 units, 0/120 cells (0%), 5 s elapsed, eta unknown"
    with _progress(False, 10, 120) as bar:
        bar.cell(30)
        bar.unit(30)
    off = _progress(None, 10, 120)
    off.bar = bar
    assert off.plain_line(60.0) == "progress: 1/10 units, 30/120 cells (25%), 60 s elapsed, eta 3 min"


# -- iqadef weights ---------------------------------------------------------------------------------------------


def test_weights_listing_fits_100_columns_with_sizes_and_the_authors_copies(monkeypatch, capsys, home):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for line in out.splitlines():  # a URL or path longer than that stays whole, alone on its line
        assert len(line) <= 100 or (line.startswith("  ") and " " not in line.strip()), line
    assert "│" not in out and "┃" not in out
    entries = out.split("\n" + "attack zhang-lpips: vgg16-397923af.pth")
    assert len(entries) == 2 and entries[1].split("\n")[0] == ", missing, size 553.4 MB"
    linearity = out.split("metric linearity: p1q2.pth")[1].split("\nmetric ")[0]
    assert "https://pan.baidu.com/s/1MRamimHWX8F-SOQ_QsIrvg (code 4z7z)" in linearity
    assert "https://drive.google.com/drive/folders/1H79ptqjcR4NH6HP4wLsEmqwhNqNNqXwh" in linearity


def test_the_missing_weights_error_names_the_authors_copies(offline_home):
    from iqadef.core.errors import WeightsError
    from iqadef.core.weights import resolve_weights
    from iqadef.plugins.metrics.spaq import BL_RELEASE

    with pytest.raises(WeightsError) as missing:
        resolve_weights(BL_RELEASE)
    assert "https://drive.google.com/file/d/1pXjXAIItViTFs7qUBY-b11WY50mzoVM2/view" in str(missing.value)
    assert "by hand" in str(missing.value) and "\n" not in str(missing.value)


# -- attack parameter aliases --------------------------------------------------------------------------------


def test_torchattacks_style_names_reach_each_attacks_canonical_parameter(tmp_path, image_dir):
    import iqadef
    from iqadef.config.registry import load_run_config

    plain = iqadef.load_attack("ifgsm", eps="4/255", iters=3, alpha="1/255", device="cpu")
    aliased = iqadef.load_attack("ifgsm", eps="4/255", steps=3, step_size="1/255", device="cpu")
    assert aliased.config == plain.config and aliased.label == plain.label and aliased.key() == plain.key()
    pgd = iqadef.load_attack("pgd-linf", iters=4, alpha="2/255", device="cpu")
    assert (pgd.steps, pgd.step_size) == (4, pytest.approx(2 / 255)) and "iters" not in pgd.config
    assert iqadef.load_attack("zhang-ssim", steps=3, device="cpu").iterations == 3
    assert (
        iqadef.load_attack("ifgsm", preset={"step_size": 2}).alpha
        == iqadef.load_attack("ifgsm", preset={"alpha": 2}).alpha
    )
    with pytest.raises(ConfigError, match=r"'iters' and 'steps' are the same parameter \('iters'\)"):
        iqadef.load_attack("ifgsm", iters=3, steps=4)
    path = tmp_path / "r.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [tiny-iqa]\nattacks: [{{name: pgd-linf, iters: 2, "
        f"alpha: 1/255}}, {{name: ifgsm, sweep: {{steps: [1, 2]}}}}]\n"
    )
    config = load_run_config(path)
    assert [a.label for a in config.attacks] == [
        "pgd-linf[steps=2,step_size=1/255]",
        "ifgsm[iters=1]",
        "ifgsm[iters=2]",
    ]


def test_aliases_stay_with_attacks():
    from iqadef.plugins.certified.median_smoothing import MedianSmoothing

    with pytest.raises(ConfigError, match="unknown parameter"):
        MedianSmoothing(step_size=0.01)  # `alpha` of a smoothing is a confidence level, not a step


# -- labels are for reading; cells are keyed by identity ----------------------------------------------------

LABELLED_GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
metrics: [toy-metric]
attacks: [{{name: toy-sign, eps: 2/255}}]
defences: [no-defence, {{name: toy-noise-defence, sweep: {{sigma: [0.01, 0.02]}}}}]
"""


def test_readable_labels_change_no_key_and_an_older_runs_cells_are_reused_under_them(
    tmp_path, image_dir, toy_registry, monkeypatch
):
    import iqadef.core.contract as base  # where Plugin and its label formatting live
    from iqadef.config.registry import load_run_config
    from iqadef.execute import run_grid

    path = tmp_path / "r.yaml"
    path.write_text(LABELLED_GRID.format(images=image_dir, output=tmp_path / "run"))
    config = load_run_config(path, plugins=toy_registry)
    assert [a.label for a in config.attacks] == ["toy-sign[eps=2/255]"]
    assert [d.label for d in config.defences] == [
        "no-defence",
        "toy-noise-defence[sigma=0.01]",
        "toy-noise-defence[sigma=0.02]",
    ]  # 0.02: the default
    plain = toy_registry.get("defences", "toy-noise-defence")()
    assert plain.label == "toy-noise-defence" and plain.key() == config.defences[2].key()
    assert plain.identity() == config.defences[2].identity()

    # an older iqadef labelled the same cells `toy-sign[eps=0.00784314]` and `toy-noise-defence`
    with monkeypatch.context() as old:
        old.setattr(base, "_fmt", lambda v: f"{v:.6g}" if isinstance(v, float) else str(v))
        old.setattr(base.Plugin, "label_params", property(lambda self: frozenset(), lambda self, v: None))
        first = run_grid(load_run_config(path, plugins=toy_registry), plugins=toy_registry, progress=False)
        assert set(first.table["attack"]) == {"toy-sign[eps=0.00784314]"}
    again = run_grid(load_run_config(path, plugins=toy_registry), plugins=toy_registry, progress=False)
    assert (again.computed, again.skipped) == (0, 18)  # nothing recomputed: same keys
    import pandas as pd

    df = pd.read_parquet(again.files["results.parquet"])
    assert set(df["attack"]) == {"toy-sign[eps=2/255]"}
    assert set(df["defence"]) == {"no-defence", "toy-noise-defence[sigma=0.01]", "toy-noise-defence[sigma=0.02]"}


def test_a_configuration_listed_plainly_and_as_a_sweeps_default_is_listed_twice(tmp_path, image_dir, toy_registry):
    from iqadef.config.registry import load_run_config

    path = tmp_path / "r.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
        f"defences: [toy-noise-defence, {{name: toy-noise-defence, sweep: {{sigma: presets}}}}]\n"
    )
    with pytest.raises(ConfigError, match=r"'toy-noise-defence\[sigma=0.02\]' is listed twice"):
        load_run_config(path, plugins=toy_registry)
