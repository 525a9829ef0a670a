"""Named points where a test kills this process, to show that a crash anywhere is survivable.

``SEARCHRL_FAULT=NAME[@N]`` makes the process SIGKILL itself the N-th time (default 1) it
reaches the point NAME -- no cleanup, no flush, as a power cut or the OOM killer would.
The points sit where a crash is most likely to hurt:

- ``step``: an optimizer step has finished, nothing of it is logged or saved yet;
- ``checkpoint:<part>``: inside a checkpoint write, after one of its parts (``the weights``,
  ``trainer_state.pt``, ``manifest.json``) is on disk in ``checkpoint-N.tmp``;
- ``checkpoint:rename`` / ``final:rename``: everything written aside, just before the rename;
- ``final:<part>``: inside the write of ``final/``.

Without the variable every call is a dictionary lookup. tests/test_kill_resume.py kills each
trainer at these points and checks that the resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import os
import signal

ENV = "SEARCHRL_FAULT"
_reached: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
