"""The stream stage: one faust app (:mod:`streams.app`) and one module per agent.

Agents today: :mod:`streams.dedup` (``<prefix>.pages.raw`` -> ``<prefix>.pages.unique``).
Run a worker with ``python -m streams worker -l info``.
"""
