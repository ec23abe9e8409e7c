"""The sink stage: writes unique pages from Kafka into PostgreSQL, exactly once.

Reads ``<prefix>.pages.unique`` (see :mod:`crawlstream.topics`), writes the ``pages`` table and
the ``sink_offsets`` table in one transaction per batch, and sends undecodable or rejected
records to ``<prefix>.deadletter``. Debezium publishes the ``pages`` changes downstream.

Modules: :mod:`sinks.base` (the contract and an in-memory sink), :mod:`sinks.tables` (schema),
:mod:`sinks.postgres` (:class:`~sinks.postgres.PostgresPageSink`), :mod:`sinks.worker` (the
consumer loop), :mod:`sinks.migrate` (alembic, run as the owner role).
"""
