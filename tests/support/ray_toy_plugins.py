"""Toy attacks for the Ray tests: one kills its own worker process once (fault tolerance), one notes
which process ran it (actor pools), one hangs once (unit_timeout)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from iqadef import Attack, Param, hookimpl


class CrashOnceAttack(Attack):
    """Seeded uniform noise; the first call ever (no marker file yet) SIGKILLs its own process."""

    name = "toy-crash-once"
    norm = "linf"
    params = (Param("marker", str, ""), Param("eps", float, 4 / 255))

    def run(self, metric, images, *, seed=0):
        marker = Path(self.marker)
        if self.marker and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        g = self.generator(seed, images.device)
        noise = (torch.rand(images.shape, generator=g, device=images.device) * 2 - 1) * self.eps
        return (images + noise).clamp(0, 1)


class PidNoteAttack(CrashOnceAttack):
    """Seeded uniform noise; notes the id of the process that ran it as an empty file in ``folder``."""

    name = "toy-pid-note"
    params = (Param("folder", str, ""), Param("eps", float, 4 / 255))

    def run(self, metric, images, *, seed=0):
        (Path(self.folder) / str(os.getpid())).touch()
        return super().run(metric, images, seed=seed)


class HangOnceAttack(CrashOnceAttack):
    """Seeded uniform noise; the first call ever (no marker file yet) hangs for ten minutes."""

    name = "toy-hang-once"

    def run(self, metric, images, *, seed=0):
        marker = Path(self.marker)
        if self.marker and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)
        return super().run(metric, images, seed=seed)


@hookimpl
def iqadef_register_attacks(register):
    register(CrashOnceAttack)
    register(PidNoteAttack)
    register(HangOnceAttack)
