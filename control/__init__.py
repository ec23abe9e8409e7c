"""The control plane: what drives the stages, above all of them.

The ``crawlstream`` command (cli.py), the local stack supervisor (stack/), the ops tools (ops/),
the managed workers (workers.py), the demo site (demosite.py), and a run with its reconciliation
(run/). It may import any stage and the kernel (``crawlstream``); nothing imports it, except the
``python -m crawlstream`` shim (crawlstream/__main__.py). tests/unit/test_layout.py pins the arrows.
"""
