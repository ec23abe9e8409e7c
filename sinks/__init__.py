"""The sink stage: writes the pipeline's topics into PostgreSQL, exactly once.

Reads ``<prefix>.pages.unique`` (PageEvent; bare PageRecords accepted), ``.pages.touches``,
``.stats`` and ``.runs`` (see :mod:`crawlstream.topics` and :mod:`sinks.families`); writes
``pages`` (superseded versions to ``page_history``), ``page_touches_pending``, ``outbox``,
``domain_stats``, ``crawl_runs`` and ``sink_offsets``, each batch with its offsets in one
transaction, and sends undecodable or rejected records to ``<prefix>.deadletter``. Debezium
publishes ``pages`` raw and routes ``outbox`` rows to ``outbox.event.page``.

Modules: :mod:`sinks.base` (the contract and an in-memory sink), :mod:`sinks.tables` (schema),
:mod:`sinks.rows` (records to rows, decoders), :mod:`sinks.postgres` (what every Postgres sink
shares), :mod:`sinks.sqlstate` (what a failed write means), :mod:`sinks.pages`,
:mod:`sinks.touches`, :mod:`sinks.upserts` (the sinks), :mod:`sinks.families` (topic -> sink),
:mod:`sinks.worker` (the consumer loop), :mod:`sinks.deadletters` (producing dead letters),
:mod:`sinks.migrate` and :mod:`sinks.migration_ops` (alembic, run as the owner role),
:mod:`sinks.probe` (what the sink stored, read and rewritten by the ops tools).
"""
