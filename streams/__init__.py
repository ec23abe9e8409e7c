"""The stream stage: one faust app (:mod:`streams.app`) and one module per agent.

Agents: :mod:`streams.changes` (``pages.raw``; a page waits there for its dedup verdict),
:mod:`streams.dedup` (the dedup hops: small probes through ``streams.pages-by-band``),
:mod:`streams.verdicts` (``streams.dedup-verdicts`` -> ``pages.unique``), :mod:`streams.frontier`
and :mod:`streams.ledger` (``links`` -> a frontier job's ledger -> ``requests``),
:mod:`streams.stats` (stats samples summed per domain/run/minute -> ``stats``); each runs inside
the per-record boundary of :mod:`streams.agent`. Run a worker with ``python -m streams worker -l info``.
"""
