"""Structured logs: worker, job and run ids on every record, in JSON and plain lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from crawlstream.logs import ContextFilter, JsonFormatter, bind_log_context, log_context


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter("sink-worker"))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("crawlstream.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_ids_of_the_block_and_the_worker_are_on_each_record(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    with log_context(job_id="docs", run_id="r1"):
        logger.info("batch committed")
        try:
            raise ValueError("bad row")
        except ValueError:
            logger.exception("batch failed", extra={"topic": "t", "partition": 2})
    logger.info("outside")
    first, failed, outside = lines(stream)
    assert first["worker"] == "sink-worker"
    assert (first["job_id"], first["run_id"], first["msg"]) == ("docs", "r1", "batch committed")
    assert (failed["topic"], failed["partition"], failed["run_id"]) == ("t", 2, "r1")
    assert "ValueError: bad row" in str(failed["exc"])
    assert "run_id" not in outside
    assert "context" not in outside


def test_bound_ids_stay_within_their_task(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture

    async def job(run: str) -> None:
        bind_log_context(run_id=run)
        await asyncio.sleep(0)
        logger.info("step")

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))

    asyncio.run(both())
    assert sorted(str(line["run_id"]) for line in lines(stream)) == ["a", "b"]


def test_plain_lines_end_with_the_ids() -> None:
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "x"})
    with log_context(run_id="r9"):
        ContextFilter("w1").filter(record)
    text = logging.Formatter("%(message)s [%(context)s]").format(record)
    assert text == "hello [worker=w1 run_id=r9]"
