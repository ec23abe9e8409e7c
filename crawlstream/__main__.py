"""``python -m crawlstream``: the ``crawlstream`` command (control/cli.py), for when no script is on PATH.

The one module of the kernel package that imports the control plane: an entry point nothing
imports (tests/unit/test_layout.py names it as the exception).
"""

from control.cli import main

if __name__ == "__main__":
    main()
