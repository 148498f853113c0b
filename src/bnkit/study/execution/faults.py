"""A fault the executors' tests inject: the process computing one named cell kills itself once.

With ``BNKIT_STUDY_KILL_ONCE=<marker file>`` and ``BNKIT_STUDY_KILL_CELL=<cell name>`` in the
environment, every start of that cell appends the process id to ``<marker file>.attempts``,
and the first start (the one that creates the marker file) sends SIGKILL to its own process,
as an out-of-memory killer or a lost machine would. Without the variables nothing happens; the
hook never changes what a cell computes.
"""

from __future__ import annotations

import os
import signal

__all__ = ["KILL_CELL", "KILL_ONCE", "maybe_die"]

KILL_ONCE = "BNKIT_STUDY_KILL_ONCE"
KILL_CELL = "BNKIT_STUDY_KILL_CELL"


def maybe_die(cell_name: str) -> None:
    """Kill this process if the environment asks for it on ``cell_name`` and it has not yet."""
    marker, target = os.environ.get(KILL_ONCE), os.environ.get(KILL_CELL)
    if not marker or target != cell_name:
        return
    with open(f"{marker}.attempts", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
