"""The ledger of each frontier run: admission within its budgets, and the accounts of completion.

Reads  ``<prefix>.frontier.ledger``   (key: run id, LedgerEntry JSON): the run's ``start`` (sent by
       its runner before the seeds), ``candidate`` URLs and ``closed`` requests from
       :mod:`streams.frontier`, ``refused`` links, ``generated`` partitions, ``stop``.
Writes ``<prefix>.requests``          (key: host, CrawlRequest with the run's scope and the URL's
       validators) for each candidate admitted;
       ``<prefix>.frontier.progress`` (key: run id, RunProgress; compacted): a change that
       makes the run quiet, or follows a quiet progress, at once; others at most every
       ``frontier.progress_interval_s`` (the first change after it sends the run's state then),
       so a busy run does not send a progress record per candidate and outcome;
       ``<prefix>.deadletter``        for entries it cannot handle (:mod:`streams.agent`).
Tables (keyed by run, so one partition holds a whole run and handles it in order):
       ``ledger_runs``: run -> its accounts (:func:`new_run`); ``ledger_urls``: ``<run>|<URL>`` ->
       ``a`` admitted, ``c`` closed, ``x`` refused: each URL counts once per run, whatever the
       duplicates upstream (replays, a crawler killed after delivering its outcome);
       ``ledger_hosts``: ``<run>|<host>`` -> requests admitted for the host.

Budgets (``start``: :class:`~crawlstream.records.Budgets`): ``max_pages`` requests per run,
``max_pages_per_host``, ``max_hosts`` distinct hosts; a candidate over one is refused by reason
(``max_pages``, ``host_budget``, ``max_hosts``; ``run_stopped`` after ``stop``), counted in the run's
progress and ``streams_frontier_refused_total``.

Completion: the run's progress is ``quiet`` when every admitted request is closed and every
frontier partition has generated its known URLs. Whenever the run is quiet its latest state is
published (a quiet state and the first change after one are never held back), so the runner
cannot take an older quiet progress for the current state. Links still on their way to the frontier may
yet add candidates: each outcome carries ``links_through``, the offsets of the links its crawler
had delivered, merged here; the runner (:mod:`crawlers.frontierrun`) waits until the stream
group has consumed past them and this ledger past what they produced, then reads the progress
again: unchanged (same ``version``) means the run is done. ``stop`` ends admission and purges the
run's URL and host entries, a chunk per record (``purge`` entries the ledger sends itself), so a
finished run leaves only its final progress record.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import CrawlRequest, LedgerEntry, RunProgress, Scope, decode_record
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from streams import keyscan, metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.topology import RAW, StageTopics

AGENT = "frontier_ledger"
PURGE_CHUNK = 1000
RUNS_REMEMBERED = 256  # runs whose scope and last published progress the agent keeps in memory
_COUNTED = {"fetched": "f", "not_modified": "n", "failed": "x"}


def decode_entry(key: bytes | None, raw: bytes | None) -> LedgerEntry:
    entry = decode_record(LedgerEntry, raw, reason="invalid_ledger_entry")
    if key != entry.run_id.encode("utf-8"):
        raise RecordError("key_mismatch", f"key {key!r:.200} != run_id {entry.run_id[:200]!r}")
    return entry


def new_run(entry: LedgerEntry) -> dict[str, Any]:
    """A run's accounts, from its ``start`` entry."""
    return {
        "j": entry.job_id,
        "v": 1,
        "st": "running",
        "a": 0,  # admitted
        "c": 0,  # closed
        "f": 0,  # fetched
        "n": 0,  # not modified
        "x": 0,  # failed
        "h": 0,  # hosts
        "l": 0,  # links the crawlers emitted
        "r": {},  # refused by reason
        "g": entry.partitions,  # partitions still generating
        "gp": [],
        "w": {},  # links_through
        "b": (entry.budgets.model_dump() if entry.budgets else {}),
        "s": (entry.scope.model_dump() if entry.scope else None),
        "m": {},  # highest refused origin per links partition (refusals are counts, not URLs)
    }


def progress_of(run_id: str, run: dict[str, Any]) -> RunProgress:
    return RunProgress(
        run_id=run_id,
        job_id=run["j"],
        version=run["v"],
        state="stopped" if run["st"] == "stopped" else "running",
        admitted=run["a"],
        closed=run["c"],
        fetched=run["f"],
        not_modified=run["n"],
        failed=run["x"],
        hosts=run["h"],
        links=run["l"],
        refused=dict(run["r"]),
        generating=max(run["g"], 0),
        links_through={int(p): int(o) for p, o in run["w"].items()},
        updated_at=datetime.now(UTC),
    )


def budget_refusal(run: dict[str, Any], host_admitted: int) -> str | None:
    """Why a new URL of the run cannot be admitted (its host has ``host_admitted`` already)."""
    if run["st"] == "stopped":
        return "run_stopped"
    budgets = run["b"]
    if budgets.get("max_pages") and run["a"] >= budgets["max_pages"]:
        return "max_pages"
    if host_admitted == 0 and budgets.get("max_hosts") and run["h"] >= budgets["max_hosts"]:
        return "max_hosts"
    if budgets.get("max_pages_per_host") and host_admitted >= budgets["max_pages_per_host"]:
        return "host_budget"
    return None


def merge_through(run: dict[str, Any], through: dict[int, int]) -> bool:
    changed = False
    for partition, offset in through.items():
        if offset > run["w"].get(str(partition), -1):
            run["w"][str(partition)] = offset
            changed = True
    return changed


def count(run: dict[str, Any], reason: str, n: int = 1) -> None:
    if n > 0:
        run["r"][reason] = run["r"].get(reason, 0) + n


def quiet(run: dict[str, Any]) -> bool:
    """The run's accounts as :attr:`RunProgress.quiet` judges them."""
    return bool(run["a"] == run["c"] and max(run["g"], 0) == 0)


def request_for(entry: LedgerEntry, run: dict[str, Any], scope: Scope | None = None) -> CrawlRequest:
    """The request of an admitted candidate; ``scope``: the run's, if already parsed."""
    if scope is None and run["s"]:
        scope = Scope.model_validate(run["s"])
    return CrawlRequest(
        url=entry.url,
        canonical_url=entry.canonical_url,
        host=entry.host,
        depth=entry.depth,
        job_id=run["j"],
        run_id=entry.run_id,
        reason="seed" if entry.reason == "seed" else ("recrawl" if entry.reason == "recrawl" else "link"),
        scope=scope,
        etag=entry.etag,
        last_modified=entry.last_modified,
    )


class ProgressThrottle:
    """Whether a run's changed progress is published now (see the module docstring).

    Remembers per run when its progress was last sent and whether it was quiet; forgets all of
    it on a rebalance (:meth:`forget`): a run whose partition comes back may have been published
    by another worker meanwhile, so its next change is sent at once.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.last: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    def due(self, run_id: str, run: dict[str, Any]) -> bool:
        now, settled = self.clock(), quiet(run) or run["st"] == "stopped"
        last = self.last.get(run_id)
        if last is not None and not settled and not last[1] and now - last[0] < self.interval_s:
            return False
        self.last[run_id] = (now, settled)
        self.last.move_to_end(run_id)
        while len(self.last) > RUNS_REMEMBERED:
            self.last.popitem(last=False)
        return True

    def forget(self) -> None:
        self.last.clear()


@dataclass(frozen=True)
class LedgerAgent:
    agent: Any
    runs: Any
    urls: Any
    hosts: Any
    topic: Any


def register(
    app: Any, settings: Settings, topics: StageTopics, clock: Callable[[], float] = time.monotonic
) -> LedgerAgent:
    """Declare the ledger's topic, tables and agent (``clock``: the progress throttle's)."""
    outputs = streams_outputs.of(app)
    specs = catalog(settings)
    topic = app.topic(specs.frontier_ledger.name, partitions=specs.frontier_ledger.partitions, **RAW)

    def table(name: str, help: str) -> Any:
        made = streams_outputs.delivered_table(
            app, outputs, name, partitions=specs.frontier_ledger.partitions, key_type=str, help=help
        )
        metrics.watch_table(app, name, made)
        return made

    runs = table("ledger_runs", "run id -> the run's accounts (streams.ledger.new_run)")
    urls = table("ledger_urls", "<run>|<canonical URL> -> a (admitted), c (closed), x (refused)")
    hosts = table("ledger_hosts", "<run>|<host> -> requests admitted for the host")
    requests = topics.requests.get_topic_name()
    progress = specs.frontier_progress.name
    ledger = specs.frontier_ledger.name
    throttle = ProgressThrottle(settings.frontier.progress_interval_s, clock)
    scopes: OrderedDict[str, Scope | None] = OrderedDict()  # a run's scope never changes

    async def forget(*_args: Any, **_kwargs: Any) -> None:
        throttle.forget()

    app.on_partitions_revoked.connect(forget)

    def scope_of(run_id: str, run: dict[str, Any]) -> Scope | None:
        if run_id not in scopes:
            scopes[run_id] = Scope.model_validate(run["s"]) if run["s"] else None
            while len(scopes) > RUNS_REMEMBERED:
                scopes.popitem(last=False)
        return scopes[run_id]

    def handle(event: Any) -> streams_outputs.Effects:
        entry = decode_entry(event.key, event.value)
        effects = streams_outputs.Effects()
        run_id, partition = entry.run_id, event.message.partition
        run = runs.get(run_id)
        if entry.type == "start":
            if run is None:
                run = new_run(entry)
                return publish(effects, run_id, run)
            return effects  # a replayed or repeated start
        if run is None:
            return effects.after(metrics.FRONTIER_REFUSED.labels("run_over").inc)
        run = {**run, "r": dict(run["r"]), "w": dict(run["w"]), "m": dict(run["m"]), "gp": list(run["gp"])}
        changed = False
        if entry.type == "candidate":
            changed = candidate(effects, entry, run)
        elif entry.type == "closed":
            changed = closed(effects, entry, run)
        elif entry.type == "refused":
            origin = entry.origin or (-1, -1)
            seen = run["m"].get(str(origin[0]), -1)
            if origin[1] > seen:
                run["m"][str(origin[0])] = origin[1]
                count(run, entry.reason, entry.count)
                changed = True
        elif entry.type == "generated":
            if entry.partition not in run["gp"]:
                run["gp"].append(entry.partition)
                run["g"] -= 1
                changed = True
        elif entry.type == "stop":
            if run["st"] != "stopped":
                run["st"] = "stopped"
                changed = True
            purge_chunk(effects, run_id, partition)
        if not changed:
            return effects
        return publish(effects, run_id, run)

    def publish(
        effects: streams_outputs.Effects, run_id: str, run: dict[str, Any]
    ) -> streams_outputs.Effects:
        run["v"] = int(run["v"]) + 1
        effects.write(runs, run_id, run)
        if not throttle.due(run_id, run):
            return effects
        return effects.send(progress, run_id.encode(), progress_of(run_id, run).to_bytes())

    def candidate(effects: streams_outputs.Effects, entry: LedgerEntry, run: dict[str, Any]) -> bool:
        key = f"{entry.run_id}|{entry.canonical_url}"
        if urls.get(key) is not None:
            return False  # each URL once per run
        host_key = f"{entry.run_id}|{entry.host}"
        admitted = int(hosts.get(host_key) or 0)
        refused = budget_refusal(run, admitted)
        if refused is not None:
            effects.write(urls, key, "x")
            count(run, refused)
            effects.after(metrics.FRONTIER_REFUSED.labels(refused).inc)
            return True
        effects.write(urls, key, "a")
        effects.write(hosts, host_key, admitted + 1)
        run["a"] += 1
        run["h"] += admitted == 0
        request = request_for(entry, run, scope_of(entry.run_id, run))
        effects.after(metrics.REQUESTS.labels(request.reason).inc)
        effects.send(requests, entry.host.encode("utf-8"), request.to_bytes())
        return True

    def closed(effects: streams_outputs.Effects, entry: LedgerEntry, run: dict[str, Any]) -> bool:
        changed = merge_through(run, entry.links_through)
        key = f"{entry.run_id}|{entry.canonical_url}"
        if urls.get(key) != "a":
            return changed  # a duplicate outcome (or of a request this run never admitted)
        effects.write(urls, key, "c")
        run["c"] += 1
        counter = _COUNTED.get(entry.outcome)
        if counter is not None:
            run[counter] += 1
        run["l"] += entry.count
        for reason, n in entry.refused.items():
            count(run, reason, n)
        if entry.outcome == "refused" and entry.reason:
            count(run, entry.reason)
        return True

    def purge_chunk(effects: streams_outputs.Effects, run_id: str, partition: int) -> None:
        found = 0
        for table_ in (urls, hosts):
            for key, _value in keyscan.scan(table_, partition, f"{run_id}|", None, PURGE_CHUNK - found):
                found += 1
                effects.after(functools.partial(keyscan.delete, table_, partition, key))
        if found >= PURGE_CHUNK:  # more to delete: another stop record continues
            again = LedgerEntry(type="stop", run_id=run_id)
            effects.send(ledger, run_id.encode(), again.to_bytes())

    boundary = Boundary(app, settings, AGENT)
    return LedgerAgent(app.agent(topic, name=AGENT)(boundary.agent(handle)), runs, urls, hosts, topic)
