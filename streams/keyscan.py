"""Range scans and deletes on the frontier's tables, inside an event's boundary.

The frontier keeps per-job and per-run entries under key prefixes (``job|url`` in
:mod:`streams.frontier`, ``run|url`` and ``run|host`` in :mod:`streams.ledger`), stored in the
partition of the event that wrote them (:class:`streams.outputs.DeliveredTable`). Generating a
job's known URLs and purging a finished run's entries walk those prefixes a chunk at a time, in
the event partition's RocksDB (keys sorted as faust encodes them: JSON strings, so a prefix of the
key is a prefix of its bytes). A delete writes a tombstone to the table's changelog (partition of
the event, through the stage's producer, acked with the event like every output) and deletes the
key from the store; a replayed event deletes again, harmlessly. Unit tests' memory stores are
scanned in key order, all partitions together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from streams.outputs import StoreError


def scan(table: Any, partition: int, prefix: str, after: str | None, limit: int) -> Iterator[tuple[str, Any]]:
    """Up to ``limit`` (key, value) entries of ``partition`` whose key starts with ``prefix``,
    in key order, after the key ``after`` (None: from the start of the prefix)."""
    db = table._rocksdb(partition)
    if db is None:  # memory store (unit tests)
        keys = sorted(k for k in table.data.data if isinstance(k, str) and k.startswith(prefix))
        found = 0
        for key in keys:
            if after is not None and key <= after:
                continue
            if found >= limit:
                return
            found += 1
            yield key, table.data.data[key]
        return
    store = table.data
    start = store._encode_key(after if after is not None else prefix)
    raw_prefix = store._encode_key(prefix)[:-1]  # without the closing quote
    try:
        it = db.iter()
        it.seek(start)
        found = 0
        while it.valid() and found < limit:
            raw_key = bytes(it.key())
            if not raw_key.startswith(raw_prefix):
                return
            if after is None or raw_key != start:
                found += 1
                yield json.loads(raw_key), json.loads(bytes(it.value()))
            it.next()
    except StoreError:
        raise
    except Exception as exc:  # rocksdict raises plain Exception ("IO error: ...")
        raise StoreError(f"table {table.name}: scan failed: {exc}") from exc


def delete(table: Any, partition: int, key: str) -> None:
    """Delete ``key`` from ``partition`` inside an acking block: changelog tombstone, then the store."""
    store = table.data
    raw_key = store._encode_key(key)
    table.outputs.send(table.changelog_topic.get_topic_name(), raw_key, None, partition)
    db = table._rocksdb(partition)
    if db is None:
        store.data.pop(key, None)
        return
    try:
        db.delete(raw_key)
    except Exception as exc:
        raise StoreError(f"table {table.name}: delete failed: {exc}") from exc
