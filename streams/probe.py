"""The stream stage's probe: how far its consumer group got, and what its page outputs say.

What the stream stage exposes to the control plane (:mod:`control.run.pipeline` composes it with
the other stages' probes): the committed offsets of its group (``streams.app_id``) on the topics
it consumes in the pages' path, its lag there, and the kind of a record it wrote to
``<prefix>.pages.unique``. Nothing here runs the stage; it reads what the stage left behind.

The inputs counted are the raw topic and the two dedup hops (``<prefix>.streams.pages-by-band``,
``.streams.dedup-verdicts``): a raw page is committed only once its outputs are delivered, and
its page waits in memory for the hops' verdict, so a lag of 0 on all three means every hop is
done with every page. The links topic (the frontier) is not in the pages' path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from crawlstream import offsets
from crawlstream.offsets import Offsets
from crawlstream.settings import Settings
from crawlstream.topics import catalog

# (settings, topic) -> high watermark per partition; (settings, group, topic) -> committed.
EndOffsets = Callable[[Settings, str], Offsets]
CommittedOffsets = Callable[[Settings, str, str], Offsets]


@dataclass(frozen=True)
class StreamsProbe:
    """The stream group's committed offsets and lag on its inputs in the pages' path."""

    settings: Settings
    end_offsets: EndOffsets = field(default=offsets.end_offsets)
    committed_offsets: CommittedOffsets = field(default=offsets.committed_offsets)

    @property
    def group(self) -> str:
        return self.settings.streams.app_id

    def inputs(self) -> tuple[str, ...]:
        """The raw topic first, then the dedup hops the stage consumes itself."""
        t = catalog(self.settings)
        return (t.raw_pages.name, t.pages_by_band.name, t.dedup_verdicts.name)

    def committed(self, topic: str | None = None) -> Offsets:
        """The group's committed offset per partition of ``topic`` (default: the raw topic)."""
        return self.committed_offsets(self.settings, self.group, topic or self.inputs()[0])

    def lag(self) -> int:
        """Records of its inputs past the group's committed offsets."""
        return sum(
            offsets.lag(self.end_offsets(self.settings, topic), self.committed(topic))
            for topic in self.inputs()
        )


def unique_change(value: bytes | None) -> str:
    """The ``change`` of a ``pages.unique`` record: ``new``, ``changed``, or ``?`` when the value
    is no JSON object (garbage on the topic is counted, never a crash).

    A record without ``change`` (a bare page record, no value) is read by the sink as a new page,
    so it counts as ``new``; any other value is no page event (the sink dead-letters it)."""
    if value is None:
        return "new"
    try:
        return str(json.loads(value).get("change", "new"))
    except (ValueError, AttributeError):
        return "?"
