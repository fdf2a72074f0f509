"""Figures rendered in child processes (``ReportFiles(background=True)``): the same bytes and manifest as
rendering in place, nothing written before :meth:`settle`, a failing child rendered again by the parent."""

from __future__ import annotations

import io
import os

import pytest

from iqadef.report.figures import new_figure, save_figure
from iqadef.report.files import BACKGROUND_CHILDREN, ReportFiles

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="background rendering forks")


def run_folder(path):
    path.mkdir()
    (path / ".iqadef-run").write_text("iqadef run folder\n", encoding="utf-8")
    (path / "figures").mkdir()
    return path


def draw(k: int):
    fig = new_figure(3, 2)
    ax = fig.add_subplot()
    ax.plot(range(5), [k * i for i in range(5)])
    ax.set_title(f"figure {k}")
    return fig


def test_background_figures_are_the_bytes_and_manifest_of_figures_saved_in_place(tmp_path):
    n = BACKGROUND_CHILDREN + 2  # more than run at once: the first are settled to make room
    here, there = run_folder(tmp_path / "here"), run_folder(tmp_path / "there")
    serial, background = ReportFiles(here), ReportFiles(there, background=True)
    for k in range(n):
        save_figure(draw(k), here / "figures" / f"f{k}.png", serial)
        save_figure(draw(k), there / "figures" / f"f{k}.png", background)
    assert not (there / "figures" / f"f{n - 1}.png").exists()  # still rendering, or rendered and not yet written
    background.settle()
    for k in range(n):
        assert (there / "figures" / f"f{k}.png").read_bytes() == (here / "figures" / f"f{k}.png").read_bytes()
    assert (there / ".iqadef-run").read_text() == (here / ".iqadef-run").read_text()
    assert (here / "figures" / "f0.png").read_bytes() != (here / "figures" / "f1.png").read_bytes()


def test_a_render_that_fails_in_the_child_is_done_again_by_the_parent(tmp_path):
    run = run_folder(tmp_path / "run")
    files = ReportFiles(run, background=True)
    parent = os.getpid()

    def render() -> bytes:
        if os.getpid() != parent:
            raise RuntimeError("the child cannot render")
        buffer = io.BytesIO(b"drawn by the parent")
        return buffer.getvalue()

    files.write_rendered(run / "figures" / "x.png", render)
    files.settle()
    assert (run / "figures" / "x.png").read_bytes() == b"drawn by the parent"


def test_abandon_waits_for_the_children_and_writes_nothing(tmp_path):
    run = run_folder(tmp_path / "run")
    files = ReportFiles(run, background=True)
    save_figure(draw(1), run / "figures" / "x.png", files)
    files.abandon()
    files.settle()  # nothing left to settle
    assert not (run / "figures" / "x.png").exists()
