"""A pipeline of its own for e2e tests that feed it what the shared pipeline may not survive.

Garbage on every topic and crawls of the hostile web leave records in the topics they used; if a
stage cannot handle one yet, it would wedge every later test of the session. So such a test gets
a topic prefix of its own (``<name><hex>.*``), consumer groups, ports, faust state and pidfiles
of its own, and real worker processes started on them: the stream worker, the sink worker, the
follower and a distributed crawler (``python -m crawlers requests``). Every child process and
``load_settings()`` in the test see the same environment, so a crawl the test starts produces to
the prefix too. Debezium's topics (``cdc.public.pages``, ``outbox.event.page``) have one name for
everybody: the follower reads the page events as a group of its own, from where the topic ended
when the pipeline started.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from control.stack.processes import ProcessManager, tail, wait_until
from control.workers import FOLLOWER, worker_specs
from crawlstream import offsets
from crawlstream.settings import Settings

DISTRIBUTED = "distributed-crawler"
WORKERS = ("streams-worker", "sink-worker", FOLLOWER, DISTRIBUTED)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_env(name: str, workdir: Path) -> dict[str, str]:
    """The settings of a pipeline of its own, as environment variables."""
    prefix = f"{name}{uuid.uuid4().hex[:8]}"
    return {
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix,
        "CRAWLSTREAM_STREAMS__APP_ID": f"{prefix}-streams",
        "CRAWLSTREAM_STREAMS__DATA_DIR": str(workdir / "streams"),
        "CRAWLSTREAM_STREAMS__WEB_PORT": str(free_port()),
        "CRAWLSTREAM_METRICS__STREAMS_PORT": str(free_port()),
        "CRAWLSTREAM_METRICS__SINK_PORT": str(free_port()),
        "CRAWLSTREAM_METRICS__CRAWLER_PORT": str(free_port()),
        "CRAWLSTREAM_FOLLOW__METRICS_PORT": str(free_port()),
        "CRAWLSTREAM_FOLLOW__GROUP_ID": f"{prefix}-follow",
        "CRAWLSTREAM_SINK__GROUP_ID": f"{prefix}-sink",
    }


def metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def commit_end(settings: Settings, group: str, topic: str) -> None:
    """Commit the topic's end offsets for ``group`` (a group without members): it starts there."""
    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    try:
        end = offsets.end_offsets(settings, topic)
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in end.items()], asynchronous=False)
    finally:
        consumer.close()


class IsolatedPipeline:
    """The worker processes of a pipeline of its own; pidfiles and logs under ``workdir/state``."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.pm = ProcessManager(workdir / "state")
        self.workdir = workdir
        self.pids: dict[str, int] = {}

    def start(self, crawler_args: list[str] | None = None) -> None:
        """Start every worker; ``crawler_args`` go to the distributed crawler (e.g. what it may reach)."""
        s = self.settings
        specs = {w.name: w for w in worker_specs(s, follower=True)}
        for name in ("streams-worker", "sink-worker"):
            self._start(name, specs[name].argv, specs[name].metrics_port)
        commit_end(s, s.follow.group_id, f"{s.connect.outbox_topic_prefix}.event.page")
        follow_argv = [sys.executable, "-m", "control.cli", "follow", "--quiet"]
        self._start(FOLLOWER, follow_argv, s.follow.metrics_port)
        dist_argv = [
            sys.executable, "-m", "crawlers", "requests", "--group-id", self.crawler_group,
            "--report", str(self.crawler_report), "--metrics-port", "-1", *(crawler_args or []),
        ]  # fmt: skip
        self.pids[DISTRIBUTED] = self.pm.start(DISTRIBUTED, dist_argv)

    @property
    def crawler_group(self) -> str:
        return f"{self.settings.kafka.topic_prefix}-crawlers"

    @property
    def crawler_report(self) -> Path:
        return self.workdir / "distributed.json"

    def _start(self, name: str, argv: list[str], port: int) -> None:
        self.pids[name] = self.pm.start(name, argv)
        wait_until(
            lambda: None if metrics_answer(port) else "no /metrics yet",
            service=name,
            log_path=self.pm.log_path(name),
            timeout_s=120,
            alive=lambda: self.pm.running(name),
        )

    def dead(self) -> list[str]:
        """Workers that are no longer the process this pipeline started."""
        return [name for name, pid in self.pids.items() if self.pm.pid(name) != pid]

    def log_tail(self, name: str, lines: int = 12) -> str:
        return tail(self.pm.log_path(name), lines)

    def stop(self, name: str | None = None) -> None:
        for each in [name] if name else reversed(list(self.pids)):
            self.pm.stop(each, timeout_s=30)
