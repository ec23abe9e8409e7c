"""The stream stage: one faust app (:mod:`streams.app`) and one module per agent.

Agents: :mod:`streams.changes` (``pages.raw``), :mod:`streams.content` and :mod:`streams.near`
(the repartition hops to ``pages.unique``), :mod:`streams.frontier` (``links`` -> ``requests``),
:mod:`streams.stats` (``pages.unique`` + ``pages.touches`` -> ``stats``); each runs inside the
per-record boundary of :mod:`streams.agent`. Run a worker with ``python -m streams worker -l info``.
"""
