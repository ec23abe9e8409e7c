"""``faust -A streams.app ...``: the stage's app as faust's own command line finds it.

faust users run ``faust -A proj.app worker -l info``; faust imports ``proj.app`` and takes its
``app`` attribute. :mod:`streams.app` re-exports :func:`__getattr__` from here, so ``app`` is built
on first access, from the settings read then (``create_app(load_settings())``), and importing the
module for its factories (tests, ``python -m streams``) builds nothing.

``faust -A streams.app worker ...`` becomes ``python -m streams worker ...`` (the same process,
through ``exec``): the worker needs more than the app (its catalog topics, start offsets for a new
group, our metrics port, faust's sensor, the event loop of ``streams.event_loop``), prepared in one
place, :mod:`streams.__main__`; running it keeps the two commands one worker. The other faust
commands (``agents``, ``tables``, ``model``, ...) run on the app itself. Settings: all of
:func:`streams.app.create_app`'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_APP: Any = None


def launched_by_faust(argv: Sequence[str]) -> bool:
    """Whether this process is faust's command line (``faust`` or ``python -m faust``)."""
    program = Path(argv[0]) if argv else Path()
    return program.name == "faust" or (program.name == "__main__.py" and program.parent.name == "faust")


def worker_argv(argv: Sequence[str]) -> list[str] | None:
    """``python -m streams`` arguments for a faust ``worker`` command line (None: not a worker).

    ``-A``/``--app`` is dropped (``python -m streams`` knows its app); every other option, global
    (``-L``, ``--datadir``) or the worker's (``-l``, ``--web-port``), is passed on as given.
    """
    args = list(argv[1:])
    if "worker" not in args:
        return None
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-A", "--app"):
            skip = True
        elif not arg.startswith("--app="):
            out.append(arg)
    return out


def __getattr__(name: str) -> Any:
    """``streams.app.app``: the app of ``create_app(load_settings())``, built once."""
    global _APP
    if name != "app":
        raise AttributeError(f"module 'streams.app' has no attribute {name!r}")
    if launched_by_faust(sys.argv):
        args = worker_argv(sys.argv)
        if args is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            # No shell: the interpreter running faust, argv as given (faust validated its options).
            os.execv(sys.executable, [sys.executable, "-m", "streams", *args])  # noqa: S606
    if _APP is None:
        from crawlstream.settings import load_settings
        from streams.app import create_app  # here: streams.app imports this module

        _APP = create_app(load_settings())
    return _APP
