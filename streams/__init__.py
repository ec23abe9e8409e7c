"""The stream stage: one faust app (:mod:`streams.app`) and one module per agent.

Agents (topics without their ``<prefix>.``): :mod:`streams.changes` (``pages.raw``; a new or
changed page waits there for its dedup verdict, an unchanged one goes to ``pages.touches``),
:mod:`streams.dedup` (the dedup hops: small probes through ``streams.pages-by-band``),
:mod:`streams.verdicts` (``streams.dedup-verdicts`` -> ``pages.unique``), :mod:`streams.frontier`
(``links`` -> ``requests`` for links without a scope, ``frontier.ledger`` for a frontier job's),
:mod:`streams.ledger` (``frontier.ledger`` -> ``requests`` within the run's budgets,
``frontier.progress``), :mod:`streams.stats` (stats samples summed per domain/run/minute ->
``stats``). Each runs inside the per-record boundary of :mod:`streams.agent` (decoding through
:func:`crawlstream.records.decode_record`, dead letters, acks, metrics) and produces through
:mod:`streams.outputs`; the faust internals the stage relies on are in :mod:`streams.faustcompat`.
Run a worker with ``python -m streams worker -l info`` (or ``faust -A streams.app worker -l info``).
"""
