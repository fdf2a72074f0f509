"""Command line: ``iqadef run | plan | plugins | list | report | weights | verify``, plus the commands plugins register
(``iqadef_register_commands``; e.g. ``train-fcn`` from the fcn defence).

User mistakes (:class:`~iqadef.core.errors.IqadefError`) print one line and exit with status 2;
a run in which some cells failed exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from iqadef import __version__
from iqadef.core.errors import IqadefError, PluginError
from iqadef.core.kinds import LISTED as KINDS
from iqadef.core.suggest import did_you_mean

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USER_ERROR = 0, 1, 2


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    from iqadef.analysis.scores import ScoreWarning
    from iqadef.core.dataset import ImageWarning
    from iqadef.core.plugins import PluginLoadWarning
    from iqadef.store.results import StorageWarning

    if issubclass(category, (PluginLoadWarning, ImageWarning, StorageWarning, ScoreWarning)):
        print(f"warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iqadef",
        description="Attacks and purification defences for NR-IQA metrics.",
        epilog="`python -m iqadef ...` is the same command (e.g. in a virtualenv whose scripts are not on PATH).",
    )
    parser.add_argument("--version", action="version", version=f"iqadef {__version__}")
    parser.add_argument("--strict-plugins", action="store_true", help="fail if any plugin fails to load")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run (or resume) the grid of a registry file")
    run.add_argument("registry", type=Path, help="registry YAML file")
    group = run.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        dest="fresh",
        action="store_false",
        default=False,
        help="keep finished cells and compute the rest (default)",
    )
    group.add_argument(
        "--fresh",
        dest="fresh",
        action="store_true",
        help="discard the results, cache and report files iqadef wrote (files of yours stay)",
    )
    run.add_argument("--device", choices=None, help="auto, cpu, cuda or cuda:N (overrides the registry)")
    run.add_argument("--limit", type=int, help="only the first N images")
    run.add_argument("--output", help="run directory (overrides the registry)")
    run.add_argument("--executor", help="where units run: local or ray (overrides the registry)")
    run.add_argument("--ray-address", help="Ray cluster address (`auto` for an existing cluster)")
    run.add_argument(
        "--protocol",
        choices=("quick", "standard"),
        help="add the robustness protocol and its worst-case verdict (overrides the registry; docs/evaluation.md)",
    )
    run.add_argument("--no-report", action="store_true", help="skip report.html/report.md")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress (default: a bar on a terminal, a plain line every 30 s otherwise)",
    )

    plan = sub.add_parser(
        "plan", help="the grid of a registry, its size, cells already stored and its cost, without running it"
    )
    plan.add_argument("registry", type=Path, help="registry YAML file")
    plan.add_argument("--limit", type=int, help="only the first N images")
    plan.add_argument("--output", help="run directory (overrides the registry)")
    plan.add_argument(
        "--measure",
        action="store_true",
        help="time one unit per metric x attack (computed in a temporary folder) and extrapolate",
    )
    plan.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the registry; for --measure)")
    plan.add_argument("--json", action="store_true")

    plugins = sub.add_parser("plugins", help="installed plugins and what they register")
    plugins.add_argument("--json", action="store_true")

    kinds_text = ", ".join(KINDS[:-1]) + " or " + KINDS[-1]  # from core/kinds.py: a new kind is listed too
    lst = sub.add_parser(
        "list",
        help=f"{kinds_text} with their parameters",
        description=f"The installed {kinds_text}, with their parameters (default; presets).",
    )
    lst.add_argument("kind", choices=KINDS, help=f"what to list: {kinds_text}")
    lst.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="write report.html and report.md for a run directory")
    report.add_argument("run_dir", type=Path)

    weights = sub.add_parser("weights", help="model weights each plugin needs, and whether they are present")
    weights.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    weights.add_argument("name", nargs="?", help="plugin name (for fetch)")
    weights.add_argument("--all", action="store_true", help="fetch: every weight file of every installed plugin")
    weights.add_argument("--registry", type=Path, help="fetch: the weight files the plugins of this registry load")
    weights.add_argument("--json", action="store_true")

    verify = sub.add_parser("verify", help="recompute random stored cells from scratch and compare (exit 1: differ)")
    verify.add_argument("run_dir", type=Path, help="a run folder (the `output` of `iqadef run`)")
    verify.add_argument("--cells", type=int, default=20, help="how many stored cells to recompute (default 20)")
    verify.add_argument("--seed", type=int, default=None, help="which cells (default: random, printed)")
    verify.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress (default: a bar on a terminal, a plain line every 30 s otherwise)",
    )

    return parser


def add_plugin_commands(parser: argparse.ArgumentParser, chosen: str | None = None) -> None:
    """Add the subcommands plugins register (``iqadef_register_commands``) to ``parser``.

    A command registered lazily (every built-in's) is imported and configured only when it is ``chosen``
    (the command line names it); otherwise its registered one-line help is all ``iqadef --help`` needs, so
    the help imports no plugin module (nor torch). A command that takes a built-in's name, or whose constructor or
    ``configure()`` raises, is left out with
    a warning naming its plugin (fatal under ``--strict-plugins`` / ``IQADEF_STRICT_PLUGINS=1``): one broken
    plugin must not take ``--help`` and every other command down with it."""
    from iqadef.core.plugins import PluginLoadWarning, _describe, _env_flag

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    plugins = _plugins()
    for name in plugins.names("commands"):
        registration = plugins.registration("commands", name)
        owner = registration.plugin
        problem = None
        if name in COMMANDS:
            problem = f"registers the command {name!r}, which is a built-in iqadef command; rename it"
        elif registration.lazy and name != chosen:
            sub.add_parser(name, help=registration.entry.help)
        else:
            try:
                command = plugins.get("commands", name)()
                command_parser = sub.add_parser(name, help=command.help)
                command.configure(command_parser)
                command_parser.set_defaults(plugin_command=command)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit from argparse in configure() included
                problem = f"its command {name!r} failed to set up: {_describe(exc)}"
                sub._name_parser_map.pop(name, None)  # noqa: SLF001 - drop the half-configured subcommand
                sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest != name]  # noqa: SLF001
        if problem is None:
            continue
        message = f"plugin {owner.name!r} (distribution {owner.distribution!r}) {problem}"
        if plugins.strict or _env_flag("IQADEF_STRICT_PLUGINS"):
            raise PluginError(message + " (strict plugin mode: IQADEF_STRICT_PLUGINS / --strict-plugins)")
        warnings.warn(message + "; the command is left out", PluginLoadWarning, stacklevel=2)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--strict-plugins" in argv:
        os.environ["IQADEF_STRICT_PLUGINS"] = "1"
    parser = build_parser()
    first = next((a for a in argv if not a.startswith("-")), None)
    if first not in COMMANDS and "--version" not in argv:  # a plugin's command, or help: only then load plugins
        try:
            add_plugin_commands(parser, first)
        except IqadefError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        if getattr(args, "plugin_command", None) is not None:
            return args.plugin_command.run(args)
        return COMMANDS[args.command](args)
    except IqadefError as exc:
        _print_error(exc)
        return _exit_code(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept, run again to resume", file=sys.stderr)
        return _exit_code(130)
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``iqadef list ... | head``): stop quietly. Python would print a
    traceback, and another when it flushes stdout at exit; stdout now goes to /dev/null instead."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return _exit_code(EXIT_OK)


def _print_error(exc: BaseException) -> None:
    """``error: ...``, one line per mistake (a registry with several reports them all: ConfigErrors)."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"error: {line}", file=sys.stderr)


def _exit_code(code: int) -> int:
    """``code``; but if a work unit is still computing in its thread (it ran past unit_timeout, or Ctrl-C
    came mid-unit), end the process now: a thread busy in torch while Python shuts down aborts it (exit
    status 134) instead of exiting with ``code`` (execute/local.py ``abandoned_units``)."""
    runner = sys.modules.get("iqadef.execute.local")
    if runner is not None and runner.abandoned_units():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _console(width: int = 160):
    """A rich console; when output goes to a pipe or file, wide enough that tables are not squeezed."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=width)


def _plugins():
    from iqadef.core.plugins import installed_plugins

    return installed_plugins()


def cmd_run(args: argparse.Namespace) -> int:
    from iqadef.config.registry import load_run_config
    from iqadef.execute import run_grid

    # --output is relative to the current directory (the registry's `output` is relative to the registry file)
    overrides: dict[str, Any] = {"device": args.device, "executor": args.executor, "protocol": args.protocol}
    config = load_run_config(args.registry, plugins=_plugins(), overrides=overrides)
    if args.output:
        config.output = Path(args.output).expanduser().resolve()
    if args.ray_address:
        config.ray["address"] = args.ray_address
    if args.limit is not None and args.limit < 1:
        raise IqadefError("--limit must be at least 1")
    summary = run_grid(
        config,
        fresh=args.fresh,
        limit=args.limit,
        progress=args.progress,
        announce=lambda line: print(line, flush=True),
    )
    _print_summary(summary)
    if not args.no_report:
        try:
            from iqadef.report import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            files = write_report(summary.run_dir)
            print(f"report: {files.get('html', summary.run_dir / 'report.html')}")
    return EXIT_CELLS_FAILED if summary.failed else EXIT_OK


def plan_grid(args: argparse.Namespace) -> dict[str, Any]:
    """What ``iqadef plan`` shows: the grid, its size, the cells already in the store, the cost."""
    from iqadef.config.registry import load_run_config
    from iqadef.plan.grid import grid_size, plan_units, plugin_calls
    from iqadef.store.results import ResultStore

    config = load_run_config(args.registry, plugins=_plugins(), overrides={"device": args.device})
    if args.output:
        config.output = Path(args.output).expanduser().resolve()
    if args.limit is not None and args.limit < 1:
        raise IqadefError("--limit must be at least 1")
    dataset = config.open_dataset(args.limit)  # as the run opens it (dataset plugins, splits, samples)
    finished: set = set()
    if (config.output / "results.sqlite").is_file():  # a run folder: what it holds counts as done
        store = ResultStore(config.output)
        try:
            finished = store.finished()
        finally:
            store.close()
    units = plan_units(config, dataset, finished)
    size = grid_size(config, dataset, units)
    out: dict[str, Any] = {
        "registry": str(args.registry),
        "output": str(config.output),
        "device": config.device,
        "images": len(dataset),
        "dataset_problems": list(dataset.problems),
        "metrics": [m.label for m in config.metrics],
        "attacks": [a.label for a in config.attacks],
        "defences": [d.label for d in config.defences],
        "certified": [c.label for c in config.certified],
        "cells": size.cells,
        "cells_done": size.done,
        "cells_to_do": size.todo,
        "units_to_do": len(units),
        "batch_size": config.batch_size,
        "plugin_calls": plugin_calls(config, dataset, units),
        "measured": None,
    }
    out.update(missing_weights(config))
    if args.measure and units and not out["weights_blocking"]:
        from iqadef.execute.driver import measure_units

        out["measured"] = measure_units(config, dataset, units, plugins=_plugins())
    return out


def missing_weights(config) -> dict[str, list[dict[str, Any]]]:  # noqa: ANN001 - a RunConfig
    """The pre-flight half of ``iqadef plan``: the weight files the grid's plugins load and that are not here,
    checked by the code ``iqadef run`` checks them with before any work (``core.weights.weight_problems``),
    without downloading. ``weights_to_download``: ``run`` will download them (a URL, not offline);
    ``weights_blocking``: ``run`` would stop at once, with this message (where to put the file)."""
    from iqadef.core.fetch import offline
    from iqadef.core.weights import find_weights, weight_problems

    to_download, blocking = [], []
    for plugin, spec, error in weight_problems(config.plugins(), download=False):  # absent, or corrupt
        row = {"plugin": f"{plugin.kind} {plugin.label}", "file": spec.filename if spec else None}
        if spec is not None and spec.urls and not offline() and find_weights(spec) is None:
            to_download.append(dict(row, url=spec.urls[0], size=spec.size))
        else:
            blocking.append(dict(row, fix=str(error)))
    return {"weights_to_download": to_download, "weights_blocking": blocking}


def cmd_plan(args: argparse.Namespace) -> int:
    from iqadef.execute.progress import _duration  # the one formatting of a duration (the progress lines use it)

    plan = plan_grid(args)
    if args.json:
        print(json.dumps(plan, indent=2))
        return EXIT_USER_ERROR if plan["weights_blocking"] else EXIT_OK
    print(
        f"grid: {plan['images']} images x {len(plan['metrics'])} metrics x {len(plan['attacks'])} attacks x "
        f"{len(plan['defences']) + len(plan['certified'])} defences = {plan['cells']} cells"
    )
    for kind in ("metrics", "attacks", "defences", "certified"):
        if kind == "certified" and not plan[kind]:
            continue
        print(f"  {kind} ({len(plan[kind])}): {', '.join(plan[kind])}")
    for problem in plan["dataset_problems"]:
        print(f"  dataset: {problem}")
    stored = f"{plan['cells_done']} already in {plan['output']}" if plan["cells_done"] else "none stored yet"
    print(
        f"cells: {plan['cells_to_do']} to do in {plan['units_to_do']} units (metric x attack x batch of "
        f"{plan['batch_size']}); {stored}"
    )
    calls = plan["plugin_calls"]
    print(
        f"cost (plugin calls, not time): {calls['attack_runs']} attack runs of one image with "
        f"{calls['attack_steps']} gradient steps in all, {calls['metric_scores']} metric scores "
        f"({calls['attack_queries']} of them black-box queries), "
        f"{calls['defence_calls']} defence calls"
        + (
            f" ({calls['smoothing_samples']} of the metric scores are certified defences' noisy copies)"
            if calls.get("smoothing_samples")
            else ""
        )
    )
    measured = plan["measured"]
    if measured:
        print(
            f"time: about {_duration(measured['seconds'])} on {measured['device']} (timed {measured['timed_units']} "
            f"unit(s), one per metric x attack, and scaled by defences and images; loading plugins not included)"
        )
    elif plan["units_to_do"] and not plan["weights_blocking"]:
        print("time: `iqadef plan --measure` times one unit per metric x attack and extrapolates")
    for row in plan["weights_to_download"]:
        size = f", {_size(row['size'])}" if row["size"] else ""
        print(
            f"weights: {row['plugin']}: {row['file']} is not here yet; `iqadef run` downloads it from "
            f"{row['url']}{size} (now: `iqadef weights fetch --registry {args.registry}`)"
        )
    for row in plan["weights_blocking"]:
        print(f"error: {row['plugin']}: {row['fix']}", file=sys.stderr)
    if plan["weights_blocking"]:
        return EXIT_USER_ERROR
    print(
        "ready: the dataset and every weight file the grid loads are in place"
        + (" or will be downloaded" if plan["weights_to_download"] else "")
    )
    return EXIT_OK


#: Below this console width the summary prints one line per defence instead of the defence x attack grid.
NARROW_SUMMARY_BELOW = 100


def _summary_console():
    """The console of the run's summary: the terminal's width, COLUMNS when set, else wide (a file or a pipe)."""
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit():
        return Console()  # rich takes COLUMNS, else the terminal's size
    return Console(width=1000)  # a grid table is wide: never squeeze it into 80 columns in a file


def _print_summary(summary) -> None:  # noqa: ANN001
    """Per metric, the report's ranking: mean normalised gain per defence (best first) x attack, with the
    paper's mean gain beside it; one line per defence on a console narrower than NARROW_SUMMARY_BELOW."""
    from rich.markup import escape
    from rich.table import Table

    from iqadef.report.console_summary import MEAN, PAPER_GAIN, summary_grids
    from iqadef.report.files import load_results

    console = _summary_console()
    grids: dict[str, Any] = {}
    if len(summary.table):
        try:
            grids = summary_grids(*load_results(summary.run_dir))
        except IqadefError as exc:
            console.print(f"[yellow]{escape(str(exc))}[/yellow]")
    narrow = console.width < NARROW_SUMMARY_BELOW

    def cell(value: float) -> str:
        return f"{value:.3f}" if value == value else "-"

    for metric, grid in grids.items():
        title = (
            f"{escape(str(metric))}: mean normalised gain |f(x) - f(D(x_a))| / (high - low), the report's "
            f"ranking (lower = better defence); paper gain: |f(x) - f(D(x_a))| / f(x)"
        )
        attacks = [c for c in grid.columns if c not in (MEAN, PAPER_GAIN)]
        console.print(title)  # above the table: a table's title wraps at the table's width
        if narrow:
            for rank, (defence, row) in enumerate(grid.iterrows(), start=1):
                per_attack = row[attacks].dropna()
                extremes = (
                    f"; best {escape(str(per_attack.idxmin()))} {cell(per_attack.min())}, worst "
                    f"{escape(str(per_attack.idxmax()))} {cell(per_attack.max())}"
                    if len(per_attack) > 1
                    else ""
                )
                console.print(
                    f"{rank:>3}. {escape(str(defence))} {cell(row[MEAN])} "
                    f"(paper gain {cell(row[PAPER_GAIN])}{extremes})"
                )
            continue
        table = Table()
        table.add_column("defence \\ attack")
        for col in grid.columns:
            table.add_column(escape(str(col)), justify="right", style="bold" if col == MEAN else None)
        for defence, row in grid.iterrows():
            table.add_row(escape(str(defence)), *[cell(v) for v in row.tolist()])
        console.print(table)
    if getattr(summary, "verdict", None) is not None:
        _print_verdict(console, summary.verdict)
    console.print(
        f"{summary.total} cells: {summary.computed} computed, {summary.skipped} already done, "
        f"{summary.failed} failed; {summary.seconds:.1f} s; results in {summary.run_dir}"
    )
    for name, path in summary.files.items():
        console.print(f"  {name}: {path}")
    if summary.failed:
        console.print(f"[yellow]{summary.failed} cell(s) failed; see the `error` column of results.csv[/yellow]")
    if summary.other_cells:
        console.print(
            f"{summary.other_cells} cell(s) of earlier runs in this folder with other plugins, parameters, "
            f"weights or images are kept in results.sqlite and left out of the exported tables"
        )


def _print_verdict(console, verdict) -> None:  # noqa: ANN001
    """The protocol's worst-case ranking per metric (the report's key finding), flags and the study's rank."""
    from rich.markup import escape
    from rich.table import Table

    from iqadef.report.verdict_section import flag_legend, ranking_lines

    console.print(escape(verdict.protocol.get("threat_model", "")))
    for metric, lines in ranking_lines(verdict).items():
        budget = lines[0]["budget"] if lines else ""
        table = Table(
            title=f"{escape(str(metric))}: worst-case normalised gain at {escape(budget)} "
            f"(lower = more robust; the study's non-adaptive ranking beside it)"
        )
        for column in ("#", "defence", "worst-case gain [95% CI]", "flags", "study's ranking"):
            table.add_column(column)
        for line in lines:
            table.add_row(
                str(line["rank"]),
                escape(str(line["defence"])),
                line["value"],
                line["flags"],
                escape(line["study"].replace("study's non-adaptive ranking: ", "")),
            )
        console.print(table)
    console.print("flags: " + "; ".join(flag_legend()) + " (evidence in verdict.csv and the report)")


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = _plugins()
    infos = [p.as_dict() for p in plugins.plugins.values()]
    if args.json:
        print(json.dumps({"plugins": infos, "problems": plugins.problems}, indent=2))
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    table = Table(title="iqadef plugins")
    for col in ("plugin", "distribution", "version", "registers"):
        table.add_column(col)
    for p in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registers"].items())
        table.add_row(*(Text(v) for v in (p["name"], p["distribution"], p["version"], regs)))
    _console().print(table)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    items = _plugins().describe(args.kind)
    if args.json:
        print(json.dumps(items, indent=2, default=str))
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"iqadef {args.kind}", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("parameters (default; presets)")
    table.add_column("flags")
    table.add_column("description")
    for d in items:
        params = (
            "\n".join(
                f"{p['name']}: {p['type']} = {show_value(p['default'])}"
                + (f"; presets {show_value(p['presets'])}" if p["presets"] else "")
                for p in d["params"]
            )
            or "-"
        )
        flags = {k: d[k] for k in ("randomized", "differentiable", "higher_is_better", "range", "norm") if k in d}
        flags_text = ", ".join(f"{k}={show_value(v, quote=False)}" for k, v in flags.items())
        table.add_row(*(Text(v) for v in (d["name"], params, flags_text, (d["doc"].splitlines() or [""])[0])))
    _console().print(table)
    return EXIT_OK


def show_value(value: Any, quote: bool = True) -> str:
    """A parameter value as a reader writes it: ``10/255`` for a float that is k/255 (the study's pixel
    steps; Python keeps only the float), else at most 4 significant digits (``25.78``, ``0.0003922``);
    exact values stay in ``--json``."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v, quote) for v in value) + "]"
    if isinstance(value, float):
        if value.is_integer():
            return f"{value:g}" if abs(value) < 1e15 else repr(value)
        short = f"{value:.4g}"
        if float(short) == value:
            return short
        steps = value * 255
        if round(steps) != 0 and abs(steps - round(steps)) < 1e-6 * max(1.0, abs(steps)):
            return f"{round(steps)}/255"
        return short
    if isinstance(value, str) and quote:
        return repr(value)
    return str(value)


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    if not run_dir.is_dir():
        raise IqadefError(f"{run_dir}: not a run directory")
    if not (run_dir / "results.parquet").exists() and not (run_dir / "results.csv").exists():
        raise IqadefError(f"{run_dir}: no results.parquet or results.csv; run `iqadef run` first")
    from iqadef.report import write_report

    files = write_report(run_dir)
    for name, path in files.items():
        print(f"{name}: {path}")
    return EXIT_OK


def _weight_rows() -> list[tuple[str, str, Any]]:
    """``(kind, plugin, WeightSpec)`` for every weight file of every installed plugin."""
    plugins = _plugins()
    return [
        (kind, name, spec)
        for kind in ("metrics", "attacks", "defences")
        for name in plugins.names(kind)
        for spec in plugins.get(kind, name).weights
    ]


def _registry_weights(path: Path) -> list[tuple[str, str, Any]]:
    """The weight files the plugins of a registry load (``weights_in_use``; files given by path left out)."""
    from iqadef.config.registry import load_run_config
    from iqadef.core.weights import WeightSpec

    config = load_run_config(path, plugins=_plugins())
    rows = []
    for plugin in config.plugins():
        for source in plugin.weights_in_use():
            if isinstance(source, WeightSpec) and not plugin.config.get(source.param):
                rows.append((plugin.kind + "s", plugin.name, source))
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cmd_weights(args: argparse.Namespace) -> int:
    from iqadef.core.weights import resolve_weights

    if args.action == "fetch":
        if sum(bool(x) for x in (args.name, args.all, args.registry)) != 1:
            raise IqadefError(
                "usage: iqadef weights fetch NAME | --all | --registry REGISTRY (NAME: a plugin from `iqadef weights`)"
            )
        if args.registry:
            chosen = _registry_weights(args.registry)
        else:
            rows = _weight_rows()
            chosen = rows if args.all else [r for r in rows if r[1] == args.name]
            if not chosen and args.name:
                raise IqadefError(
                    f"no plugin {args.name!r} with weights{did_you_mean(args.name, {r[1] for r in rows})}"
                )
        done: dict[str, Path | None] = {}
        failed = 0
        for _, name, spec in chosen:  # every file is tried; each failure is one line
            if spec.filename not in done:  # one file shared by several plugins is fetched once
                try:
                    done[spec.filename] = resolve_weights(spec, download=True)
                except IqadefError as exc:
                    done[spec.filename] = None
                    failed += 1
                    _print_error(exc)
            if done[spec.filename] is not None:
                print(f"{name}: {done[spec.filename]}", flush=True)
        if not chosen:
            print("nothing to fetch: no plugin of this registry loads weight files")
        return EXIT_USER_ERROR if failed else EXIT_OK
    described = [{"kind": k, "plugin": n, **spec.describe()} for k, n, spec in _weight_rows()]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    for line in weights_listing(described):
        print(line)
    return EXIT_OK


def weights_listing(described: list[dict[str, Any]]) -> list[str]:
    """``iqadef weights`` as plain lines: one heading per file, then each URL or path alone on its line (so a
    URL is copied whole, never folded or cut by a table border), short enough for 100 columns."""
    lines = ["model weights: `iqadef weights fetch NAME | --all | --registry R` downloads them", ""]
    for d in described:
        state = "present" if d["present"] else "missing"
        lines.append(f"{d['kind'][:-1]} {d['plugin']}: {d['filename']}, {state}, size {_size(d.get('size'))}")
        if d["present"]:
            lines.append(f"  {d['present']}")
            continue
        lines.extend(f"  {url}" for url in d["urls"])
        if d.get("mirrors"):
            lines.append("  the authors' copies (download by hand):")
            lines.extend(f"  {mirror}" for mirror in d["mirrors"])
        if not d["urls"] and not d.get("mirrors"):
            lines.append("  (no download URL known)")
        places = [f"  put it at {d['expected_at'][0]}", *(f"  or at {p}" for p in d["expected_at"][1:])]
        if max(map(len, places)) <= LISTING_WIDTH:
            lines.extend(places)
        else:  # a long path alone on its line
            lines.append("  put it at:")
            lines.extend(f"  {place}" for place in d["expected_at"])
    return lines


#: ``iqadef weights`` keeps its lines within this many columns (a URL or path longer than that stays whole).
LISTING_WIDTH = 100


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every recomputed cell matches, 1 when some differ, 2 on bad input (execute/verify.py)."""
    from iqadef.execute.verify import verify_run

    verdict = verify_run(args.run_dir, args.cells, args.seed, plugins=_plugins(), progress=args.progress)
    for label, problem in verdict.mismatches:
        print(f"MISMATCH {label}: {problem}")
    print(
        f"{verdict.checked} of {verdict.candidates} stored cell(s) recomputed from scratch (--seed {verdict.seed}): "
        f"{verdict.matched} match, {len(verdict.mismatches) - verdict.unsampled} differ"
    )
    if verdict.unsampled:
        print(
            f"{verdict.unsampled} other stored cell(s) fail the checks every cell gets (checksum, labels and MOS, "
            f"files)"
        )
    return EXIT_OK if verdict.ok else EXIT_CELLS_FAILED


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "plugins": cmd_plugins,
    "list": cmd_list,
    "report": cmd_report,
    "weights": cmd_weights,
    "verify": cmd_verify,
}
