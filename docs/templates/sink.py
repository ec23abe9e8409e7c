"""__Technology__Sink: page events stored in __technology__ (a template: CONTRIBUTING.md).

Copy to ``sinks/<technology>.py``, replace ``__Technology__`` / ``__technology__`` and the storage.
Reads what :mod:`sinks.worker` decodes from ``<prefix>.pages.unique`` (PageEvent; add the family
to :mod:`sinks.families`). The contract (:class:`sinks.base.Sink`): store a batch's records and the
offsets it came from in one atomic step, skip records before the stored offsets, and change
nothing for a record equal to the stored one, so a replay after a crash stores nothing twice.
This template keeps everything in one JSON file replaced atomically (``os.replace``); a real store
does the same in one transaction (for a PostgreSQL table, subclass :class:`sinks.postgres.PostgresSink`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crawlstream.records import PageEvent
from sinks.base import SinkBatch, SinkUnavailable


class __Technology__Sink:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "pages.json"
        self.pages: dict[str, dict[str, Any]] = {}
        self.offsets: dict[str, int] = {}  # "<group>|<topic>|<partition>" -> next offset

    def open(self) -> None:
        try:
            state = json.loads(self.path.read_text()) if self.path.exists() else {}
        except OSError as exc:
            raise SinkUnavailable(f"cannot read {self.path}: {exc}") from exc
        self.pages, self.offsets = state.get("pages", {}), state.get("offsets", {})

    def prepare(self, batch: SinkBatch[PageEvent]) -> SinkBatch[PageEvent]:
        return batch

    def write(self, batch: SinkBatch[PageEvent]) -> int:
        pages, offsets, changed = dict(self.pages), dict(self.offsets), 0
        for record in batch.records:
            if record.offset < offsets.get(f"{batch.group}|{record.topic}|{record.partition}", 0):
                continue  # stored already (a replay, or a worker that lost the partition)
            row = record.value.page.model_dump(mode="json", include={"canonical_url", "status", "title"})
            if pages.get(row["canonical_url"]) != row:
                pages[row["canonical_url"]] = row
                changed += 1
        for (topic, partition), offset in batch.next_offsets.items():
            position = f"{batch.group}|{topic}|{partition}"
            offsets[position] = max(offset, offsets.get(position, 0))
        tmp = self.path.with_suffix(".tmp")
        try:  # rows and offsets in one atomic step
            tmp.write_text(json.dumps({"pages": pages, "offsets": offsets}))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise SinkUnavailable(f"cannot write {self.path}: {exc}") from exc
        self.pages, self.offsets = pages, offsets
        return changed

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        prefix = f"{group}|{topic}|"
        return {int(k[len(prefix) :]): v for k, v in self.offsets.items() if k.startswith(prefix)}

    def close(self) -> None:
        pass
