"""Where the deploy/ files are: the stack configs, the Maven pom, connector JSON, Prometheus, Grafana.

The repository's ``deploy/`` folder ships inside the package as ``crawlstream_deploy`` (setup.py maps
the name onto the folder; pyproject.toml's package data takes every file). ``importlib.resources``
finds it wherever crawlstream is installed: the repository's ``deploy/`` in an editable install, the
copy in site-packages after ``pip install .``; so ``crawlstream stack up`` works from any directory.
Read by control/stack/maven.py (and through it kafka.py and connect.py) and
control/ops/prom_server.py.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from crawlstream.errors import PrerequisiteError

PACKAGE = "crawlstream_deploy"


def deploy_dir() -> Path:
    """The deploy/ folder as a real directory (the services we start need file paths)."""
    try:
        root = files(PACKAGE)
    except ModuleNotFoundError:
        raise PrerequisiteError(
            f"the deploy files (package {PACKAGE}) are not installed: reinstall crawlstream "
            "(`pip install .` or `make install`)"
        ) from None
    # A wheel installs into a plain directory and an editable install points at the repository:
    # both are file-system paths. Only a zip import would not be, and crawlstream is never zipped.
    # A missing file is reported where it is read, naming it; modules take this path at import,
    # so checking here would break commands that need no deploy file (`crawlstream --version`).
    return Path(str(root))
