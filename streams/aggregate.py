"""Pure per-domain aggregation for :mod:`streams.stats`: samples, accumulators, DomainStats.

A *sample* is what one page event or touch contributes (a small JSON dict); an *accumulator* is
the running totals of several samples: a window's or a run's, stored in faust tables, or the
samples of one domain, run and minute summed before they are sent (on the app's internal
``<app_id>-stats-by-domain`` / ``-stats-by-run`` topics, in the sample's shape with the
accumulator's latency fields). Fetch latency is kept as a log-bucket histogram
(``LATENCY_RATIO`` apart, about 9 %), so p95 stays bounded in size and mergeable.
No Kafka, no faust: everything here is unit-tested directly.

Samples cross a topic, so they are checked on both sides (:func:`check_sample`): what the stage
produces, and what it reads back (a record written there by anyone else is a dead letter, never an
exception inside a windowed table's update or a window's close).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, Literal

from crawlstream.errors import RecordError
from crawlstream.records import DomainStats, PageEvent, PageTouch, decode_json
from crawlstream.urls import host_of
from streams.checks import MAX_FUTURE_S, MAX_HOST_CHARS

WindowKind = Literal["tumbling_1m", "hopping_5m_1m"]
LATENCY_RATIO = 2 ** (1 / 8)
MIN_LATENCY_S = 1e-4  # faster fetches share the lowest bucket
COUNTERS = (
    "pages",
    "bytes",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "duplicates",
    "near_duplicates",
    "new",
    "changed",
    "unchanged",
)
_SAMPLE_FIELDS = frozenset({"d", "r", "t", "lat", "lat_n", "lat_sum", "lat_hist", *COUNTERS})
MAX_BUCKETS = 512  # latency histogram buckets of one summed sample (about 1e-4 s to 1e6 s is 330)
_BUCKET_RANGE = range(-1000, 1001)


MAX_RUN_ID_CHARS = 256
MAX_COUNT = 2**53  # counters stay exact as JSON numbers and within the stats table's bigint


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sample(sample: Any, now: float | None = None) -> dict[str, Any]:
    """``sample`` if it is one (see the module docstring), else RecordError ``invalid_sample``.

    A domain is a host name (at most 253 characters), a run id at most 256; the time is after 1970
    and at most ``MAX_FUTURE_S`` ahead of ``now``; counters are integers in ``[0, 2**53]``; the
    latency is a finite number >= 0. Nothing else is allowed.
    """

    def bad(why: str) -> RecordError:
        return RecordError("invalid_sample", why)

    if not isinstance(sample, dict):
        raise bad(f"a sample is a JSON object, not {type(sample).__name__}")
    unknown = sample.keys() - _SAMPLE_FIELDS
    if unknown:
        raise bad(f"unknown fields {sorted(unknown)[:5]}")
    domain, run, at = sample.get("d"), sample.get("r"), sample.get("t")
    if not isinstance(domain, str) or not 0 < len(domain) <= MAX_HOST_CHARS:
        raise bad("d (domain) must be a host name of 1 to 253 characters")
    if not isinstance(run, str) or len(run) > MAX_RUN_ID_CHARS:
        raise bad(f"r (run id) must be a string of at most {MAX_RUN_ID_CHARS} characters")
    if not (_number(at) and 0 < at <= (now or time.time()) + MAX_FUTURE_S):  # type: ignore[operator]
        raise bad("t (fetch time) must be epoch seconds after 1970 and not in the future")
    for name in COUNTERS:
        count = sample.get(name, 0)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise bad(f"{name} must be an integer in [0, 2**53]")
    if "lat" in sample and not (_number(sample["lat"]) and sample["lat"] >= 0):
        raise bad("lat (fetch latency) must be a finite number >= 0")
    if "lat_n" in sample or "lat_sum" in sample or "lat_hist" in sample:
        _check_summed_latency(sample, bad)
    return sample


def _check_summed_latency(sample: dict[str, Any], bad: Any) -> None:
    count, total, hist = sample.get("lat_n"), sample.get("lat_sum", -1), sample.get("lat_hist")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
        raise bad("lat_n must be an integer in [0, 2**53]")
    if not (_number(total) and total >= 0):
        raise bad("lat_sum must be a finite number >= 0")
    if not isinstance(hist, dict) or len(hist) > MAX_BUCKETS:
        raise bad(f"lat_hist must be an object of at most {MAX_BUCKETS} buckets")
    for bucket, n in hist.items():
        if not (isinstance(bucket, str) and bucket.lstrip("-").isdigit() and int(bucket) in _BUCKET_RANGE):
            raise bad("lat_hist buckets must be integers in [-1000, 1000]")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_COUNT:
            raise bad("lat_hist counts must be integers in [0, 2**53]")


def parse_sample(raw: bytes | None) -> dict[str, Any]:
    """A sample read from the stats topics, checked; RecordError if it is not one."""
    return check_sample(decode_json(raw))


def status_class(status: int) -> str:
    return f"status_{min(max(status // 100, 2), 5)}xx"


def latency_bucket(seconds: float) -> int:
    return math.floor(math.log(max(seconds, MIN_LATENCY_S)) / math.log(LATENCY_RATIO))


def _sample(
    domain: str, run_id: str, at: datetime, status: int, size: int, latency: float | None, **flags: int
) -> dict[str, Any]:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    sample: dict[str, Any] = {"d": domain, "r": run_id, "t": at.timestamp(), "pages": 1, "bytes": size}
    sample[status_class(status)] = 1
    sample.update({name: 1 for name, on in flags.items() if on})
    if latency is not None:
        sample["lat"] = latency
    return check_sample(sample)


def sample_of_event(event: PageEvent) -> dict[str, Any]:
    page = event.page
    return _sample(
        host_of(page.canonical_url),
        page.run_id,
        page.fetched_at,
        page.status,
        page.body_bytes,
        page.fetch_latency_s,
        duplicates=event.duplicate_of is not None,
        near_duplicates=event.near_duplicate_of is not None,
        new=event.change == "new",
        changed=event.change == "changed",
    )


def sample_of_touch(touch: PageTouch) -> dict[str, Any]:
    return _sample(
        host_of(touch.canonical_url),
        touch.run_id,
        touch.fetched_at,
        touch.status,
        touch.body_bytes,
        touch.fetch_latency_s,
        unchanged=True,
    )


def add(acc: dict[str, Any] | None, sample: dict[str, Any]) -> dict[str, Any]:
    """``acc`` plus ``sample``, one sample (``lat``) or summed ones (``lat_n``, ``lat_sum``,
    ``lat_hist``): a new dict; ``acc`` is not modified."""
    out: dict[str, Any] = dict(acc or {})
    for name in COUNTERS:
        if name in sample:
            out[name] = out.get(name, 0) + sample[name]
    if "lat" in sample:
        out["lat_n"] = out.get("lat_n", 0) + 1
        out["lat_sum"] = out.get("lat_sum", 0.0) + sample["lat"]
        hist = dict(out.get("lat_hist", {}))
        bucket = str(latency_bucket(sample["lat"]))  # JSON object keys are strings
        hist[bucket] = hist.get(bucket, 0) + 1
        out["lat_hist"] = hist
    if sample.get("lat_n"):
        out["lat_n"] = out.get("lat_n", 0) + sample["lat_n"]
        out["lat_sum"] = out.get("lat_sum", 0.0) + sample["lat_sum"]
        hist = dict(out.get("lat_hist", {}))
        for bucket, n in sample["lat_hist"].items():
            hist[bucket] = hist.get(bucket, 0) + n
        out["lat_hist"] = hist
    return out


def summed(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples of one domain, run and minute as one sample (counters and latencies summed; the
    domain, run and the earliest time of the first)."""
    first = samples[0]
    out: dict[str, Any] = {"d": first["d"], "r": first["r"], "t": min(s["t"] for s in samples)}
    acc: dict[str, Any] = {}
    for sample in samples:
        acc = add(acc, sample)
    return {**out, **acc}


def latency_quantile(hist: dict[str, int], q: float) -> float:
    """The ``q`` quantile of a latency histogram: the geometric middle of its bucket."""
    total = sum(hist.values())
    if total == 0:
        return 0.0
    rank, seen = math.ceil(q * total), 0
    for bucket in sorted(hist, key=int):
        seen += hist[bucket]
        if seen >= rank:
            return float(LATENCY_RATIO ** (int(bucket) + 0.5))
    raise AssertionError("unreachable: rank <= total")


def summary(acc: dict[str, Any]) -> dict[str, Any]:
    """The counters and latency figures of an accumulator (what views and DomainStats show)."""
    out: dict[str, Any] = {name: int(acc.get(name, 0)) for name in COUNTERS}
    n = int(acc.get("lat_n", 0))
    out["latency_mean_s"] = float(acc.get("lat_sum", 0.0)) / n if n else 0.0
    out["latency_p95_s"] = latency_quantile(acc.get("lat_hist", {}), 0.95)
    return out


def domain_stats(
    domain: str, window: WindowKind, start: float, end: float, acc: dict[str, Any]
) -> DomainStats:
    """The DomainStats record of a closed window ``[start, end)`` (epoch seconds)."""
    return DomainStats(
        domain=domain,
        window=window,
        window_start=datetime.fromtimestamp(start, UTC),
        window_end=datetime.fromtimestamp(round(end), UTC),  # faust ends windows at end - 0.1
        **summary(acc),
    )
