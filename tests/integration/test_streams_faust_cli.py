"""``faust -A streams.app worker -l info``, as faust users run it, is the stage's worker.

Started from a directory outside the repository, it must do what ``python -m streams worker``
does on the real stack: serve our metrics port, join the stage's group and carry a page from
``pages.raw`` to ``pages.unique``. Uses the isolated pipeline of ``test_streams_stage.py``
(own topic prefix, app id and ports).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crawlstream.records import PageEvent
from tests.integration.test_streams_stage import DOCS, Pipeline, Worker, pipeline, raw, wait_for

__all__ = ["pipeline"]  # the fixture, imported for use here
pytestmark = pytest.mark.integration
FAUST = Path(sys.executable).parent / "faust"


def test_faust_cli_worker_is_the_stage_worker(pipeline: Pipeline, tmp_path: Path) -> None:
    log = tmp_path / "faust-worker.log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **pipeline.env,
        "CRAWLSTREAM_STREAMS__DATA_DIR": str(tmp_path / "streams-faust"),
        # Outside the repository neither .env nor .crawlstream/stack.env is in reach: name the
        # stack's broker, or the worker would look for one on the default port.
        "CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS": pipeline.settings.kafka.bootstrap_servers,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(FAUST), "-A", "streams.app", "worker", "-l", "info"],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(proc, log)
    pipeline.workers.append(worker)
    wait_for("our metrics port", lambda: worker.metrics_port() is not None, worker)
    wait_for("the worker to join the stage's group", lambda: pipeline.group_members() == 1, worker)
    pipeline.produce([raw("json", (DOCS / "json.html").read_text(encoding="utf-8"))])
    wait_for("the stage to drain", pipeline.drained, worker)
    events = [
        PageEvent.model_validate_json(v or b"")
        for _, v in pipeline.read_all(pipeline.topics.unique_pages.name)
    ]
    assert [(e.page.canonical_url, e.change) for e in events] == [
        ("https://docs.example.org/json.html", "new")
    ]
    assert worker.metric('streams_events_total{agent="detect_changes"}') >= 1  # our metrics, our agents
