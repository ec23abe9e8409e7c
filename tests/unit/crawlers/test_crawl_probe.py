"""crawlers/probe.py: a run's crawl figures, added up from its processes' reports."""

from __future__ import annotations

import json
from dataclasses import asdict

from crawlers.probe import CrawlTally, crawl_tally
from crawlers.runner import CrawlReport


def report(urls: list[str], **fields: int) -> CrawlReport:
    values = {
        "pages_fetched": 0,
        "responses_total": 0,
        "non_html": 0,
        "records_delivered": 0,
        "delivery_failures": 0,
        "fetch_errors": 0,
        "robots_denied": 0,
        "private_refused": 0,
        **fields,
    }
    return CrawlReport(
        **values,
        distinct_canonical_urls=len(urls),
        canonical_urls=urls,
        duration_s=1.0,
        finish_reason="finished",
    )


def test_the_tally_adds_up_every_process_and_counts_each_url_once() -> None:
    # Read as the control plane reads them: the JSON a crawl process writes with --report.
    reports = [
        json.loads(
            json.dumps(
                report(["http://x/a", "http://x/b"], pages_fetched=3, records_delivered=3).to_json_dict()
            )
        ),
        json.loads(
            json.dumps(
                asdict(report(["http://x/b"], pages_fetched=1, records_delivered=0, delivery_failures=1))
            )
        ),
    ]
    assert crawl_tally(reports, killed=1) == CrawlTally(
        pages_fetched=4,
        records_delivered=3,
        delivery_failures=1,
        urls=frozenset({"http://x/a", "http://x/b"}),
        processes=2,
        killed=1,
    )


def test_no_report_is_an_empty_tally_and_missing_fields_count_zero() -> None:
    assert crawl_tally([]) == CrawlTally()
    assert crawl_tally([{}]) == CrawlTally(processes=1)
