"""One run of a crawl job: the job mapped onto a crawl, bracketed by run events.

Called by ``crawlstream jobs run NAME`` (in the CLI process: a Twisted reactor runs once per
process, so the scheduler starts each run as a fresh ``crawlstream jobs run`` process).
Writes ``RunEvent`` records (``started``, then ``finished`` with pages, errors and outcome) to
``<prefix>.runs`` keyed by run id; the crawl itself writes pages to the job's output topic and
dead letters to ``<prefix>.deadletter``. Settings used: ``kafka.*``, ``crawl.*`` (defaults a job
may override).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from crawlers.jobs import JobSpec
from crawlers.runner import CrawlReport, CrawlSpec, ProgressCallback, run_crawl
from crawlstream.kafka import producer_config
from crawlstream.records import RunEvent, utcnow
from crawlstream.settings import Settings
from crawlstream.topics import catalog

log = logging.getLogger(__name__)

RUN_EVENT_TIMEOUT_S = 30.0


def crawl_spec(settings: Settings, job: JobSpec, run_id: str, metrics_port: int | None = None) -> CrawlSpec:
    """The crawl a job describes; job fields become Scrapy settings at the highest priority."""
    scrapy: dict[str, Any] = {
        "CONCURRENT_REQUESTS_PER_DOMAIN": job.concurrency_per_domain,
        **({"CONCURRENT_REQUESTS": job.concurrency} if job.concurrency else {}),
        "DOWNLOAD_DELAY": job.download_delay_s,
        # The job's delay is a minimum between requests to a host, not an average.
        "RANDOMIZE_DOWNLOAD_DELAY": False,
        "AUTOTHROTTLE_ENABLED": job.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(job.download_delay_s, 0.5),
        "ROBOTSTXT_OBEY": job.obey_robots,
        "DOWNLOAD_TIMEOUT": job.download_timeout_s,
        "REDIRECT_MAX_TIMES": job.max_redirects,
        "RETRY_TIMES": job.retry_times,
        "CRAWLSTREAM_RECORD_NON_HTML": job.record_non_html,
    }
    if job.max_response_bytes is not None:
        scrapy["DOWNLOAD_MAXSIZE"] = job.max_response_bytes
        scrapy["DOWNLOAD_WARNSIZE"] = job.max_response_bytes // 2
    limits = {
        "CRAWLSTREAM_MAX_PAGES_PER_HOST": job.max_pages_per_host,
        "CRAWLSTREAM_MAX_LINKS_PER_PAGE": job.max_links_per_page,
        "CRAWLSTREAM_MAX_URL_LENGTH": job.max_url_length,
    }
    scrapy.update({name: value for name, value in limits.items() if value is not None})
    if job.user_agent:
        scrapy["USER_AGENT"] = job.user_agent
    if job.output_topic:
        scrapy["CRAWLSTREAM_TOPIC"] = job.output_topic
    if job.max_body_bytes:
        scrapy["CRAWLSTREAM_MAX_BODY_BYTES"] = job.max_body_bytes
    return CrawlSpec(
        start_urls=job.seed_urls(),
        allowed_domains=job.allowed_domains,
        max_pages=job.max_pages,
        max_depth=job.max_depth,
        job_id=job.name,
        run_id=run_id,
        allow_private_hosts=job.allow_private_hosts,
        allow_private_addresses=job.allow_private_addresses,
        metrics_port=metrics_port,
        scrapy_settings=scrapy,
        allow=job.allow,
        deny=job.deny,
        source=job.source,
        spider_kwargs=_source_kwargs(job),
    )


def _source_kwargs(job: JobSpec) -> dict[str, Any]:
    if job.source == "sitemap":
        return {"recrawl_interval_s": job.recrawl_interval_s}
    if job.source == "api":
        return {
            "api_items_field": job.api_items_field,
            "api_url_field": job.api_url_field,
            "api_next_field": job.api_next_field,
            "max_api_pages": job.max_api_pages,
        }
    return {}


def outcome(report: CrawlReport) -> str:
    ok = report.delivery_failures == 0 and report.finish_reason in (
        "finished",
        "max_pages",
        "closespider_pagecount",
    )
    return "succeeded" if ok else "failed"


def run_event(job_id: str, run_id: str, started_at: datetime, report: CrawlReport | None) -> RunEvent:
    if report is None:
        return RunEvent(run_id=run_id, job_id=job_id, event="started", started_at=started_at)
    return RunEvent(
        run_id=run_id,
        job_id=job_id,
        event="finished",
        started_at=started_at,
        finished_at=utcnow(),
        pages=report.pages_fetched + report.metadata_records,
        errors=report.fetch_errors + report.dead_letters,
        delivery_failures=report.delivery_failures,
        outcome="succeeded" if outcome(report) == "succeeded" else "failed",
        detail=f"finish_reason={report.finish_reason}",
    )


def produce_run_event(settings: Settings, event: RunEvent) -> None:
    """Deliver one run event synchronously; raises if Kafka does not take it."""
    producer = Producer(producer_config(settings, "crawler", **{"client.id": "crawlstream-runs"}))
    errors: list[Any] = []
    producer.produce(
        catalog(settings).runs.name,
        event.to_bytes(),
        event.run_id.encode("utf-8"),
        on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
    )
    left = producer.flush(RUN_EVENT_TIMEOUT_S)
    if left or errors:
        raise RuntimeError(f"run event {event.event} of {event.run_id} not delivered: {errors or 'timeout'}")


def run_job(
    settings: Settings,
    job: JobSpec,
    run_id: str,
    on_progress: ProgressCallback | None = None,
    metrics_port: int | None = None,
    extra_scrapy_settings: dict[str, Any] | None = None,
) -> CrawlReport:
    """Run ``job`` once in this process: started event, crawl, finished event."""
    spec = crawl_spec(settings, job, run_id, metrics_port)
    spec.scrapy_settings.update(extra_scrapy_settings or {})
    started_at = utcnow()
    produce_run_event(settings, run_event(job.name, run_id, started_at, None))
    try:
        report = run_crawl(settings, spec, on_progress=on_progress)
    except BaseException as exc:
        failed = RunEvent(
            run_id=run_id,
            job_id=job.name,
            event="finished",
            started_at=started_at,
            finished_at=utcnow(),
            outcome="failed",
            detail=f"crawl raised {type(exc).__name__}: {exc}"[:1000],
        )
        produce_run_event(settings, failed)
        raise
    produce_run_event(settings, run_event(job.name, run_id, started_at, report))
    return report
