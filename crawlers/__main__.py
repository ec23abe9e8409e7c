"""``python -m crawlers crawl|requests``: one crawl in a fresh process, report written as JSON.

``requests`` is distributed mode (:mod:`crawlers.spiders.distributed`): requests come from the
requests topic as consumer group ``--group-id``; run several processes to share a crawl.

Exit status: 0 when every record was delivered, 1 when any delivery failed, 2 on bad input, 4 when
the distributed consumer itself failed (finish reason ``consumer_failed``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crawlers.runner import CrawlSpec, run_crawl
from crawlstream.errors import ConfigError
from crawlstream.settings import load_settings


def _setting(raw: str) -> tuple[str, Any]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {raw!r}")
    try:
        return name, json.loads(value)  # dicts and numbers, e.g. ITEM_PIPELINES={"x.Y": 300}
    except json.JSONDecodeError:
        return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crawlers")
    sub = parser.add_subparsers(dest="command", required=True)
    crawl = sub.add_parser("crawl", help="crawl a site and produce its pages to Kafka")
    crawl.add_argument("--start-url", action="append", required=True, dest="start_urls")
    crawl.add_argument("--allowed-domain", action="append", default=[], dest="allowed_domains")
    crawl.add_argument("--max-pages", type=int, help="page records to produce (0: no cap)")
    crawl.add_argument("--max-depth", type=int, help="link depth from the start URLs (0: no limit)")
    crawl.add_argument("--job-id", default="")
    crawl.add_argument("--run-id", default=None)
    crawl.add_argument(
        "--allow-private-host",
        action="append",
        default=[],
        dest="allow_private_hosts",
        metavar="HOST[:PORT]|URL",
        help="may be private, on that port only (no port: 80 and 443)",
    )
    crawl.add_argument("--allow-private-addresses", action="store_true", help="no address check at all")
    crawl.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port for /metrics (default: metrics.crawler_port; -1 disables; 0 any free port)",
    )
    crawl.add_argument(
        "--set",
        action="append",
        type=_setting,
        default=[],
        dest="scrapy_settings",
        metavar="NAME=VALUE",
        help="extra Scrapy setting (JSON values are parsed)",
    )
    crawl.add_argument("--report", type=Path, required=True, help="where to write the report JSON")
    dist = sub.add_parser("requests", help="distributed mode: fetch CrawlRequests from the requests topic")
    dist.add_argument("--group-id", required=True, help="consumer group shared by the crawler processes")
    dist.add_argument("--idle-exit-s", type=float, default=0.0, help="close after this long without requests")
    dist.add_argument("--job-id", default="")
    dist.add_argument("--run-id", default=None)
    dist.add_argument(
        "--allow-private-host",
        action="append",
        default=[],
        dest="allow_private_hosts",
        metavar="HOST[:PORT]|URL",
    )
    dist.add_argument("--allow-private-addresses", action="store_true", help="no address check at all")
    dist.add_argument("--allowed-domain", action="append", default=[], dest="allowed_domains")
    dist.add_argument("--allow", action="append", default=[], help="URL regex requests must match")
    dist.add_argument("--deny", action="append", default=[], help="URL regex refused")
    dist.add_argument("--frontier-run", default="", help="fetch only this frontier run's requests")
    dist.add_argument("--parent-pid", type=int, default=0, help="close when this process is gone")
    dist.add_argument("--metrics-port", type=int, default=-1)
    dist.add_argument("--set", action="append", type=_setting, default=[], dest="scrapy_settings")
    dist.add_argument("--report", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed = args.command == "requests"
    spec = CrawlSpec(
        start_urls=[] if distributed else args.start_urls,
        allowed_domains=args.allowed_domains,
        # A frontier run's budgets are its ledger's: its crawlers do not stop at a count of their own.
        max_pages=(0 if args.frontier_run else None) if distributed else args.max_pages,
        max_depth=None if distributed else args.max_depth,
        job_id=args.job_id,
        allow_private_hosts=args.allow_private_hosts,
        allow_private_addresses=args.allow_private_addresses,
        metrics_port=settings.metrics.crawler_port if args.metrics_port is None else args.metrics_port,
        scrapy_settings=dict(args.scrapy_settings),
    )
    if distributed:
        spec.source = "distributed"  # DistributedSpider.name
        spec.spider_kwargs = {
            "group_id": args.group_id,
            "idle_exit_s": args.idle_exit_s,
            "frontier_run": args.frontier_run,
            "parent_pid": args.parent_pid,
        }
        spec.allow, spec.deny = args.allow, args.deny
    if args.run_id:
        spec.run_id = args.run_id
    report = run_crawl(settings, spec)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    print(
        f"crawl {report.finish_reason} in {report.duration_s:.1f}s: {report.pages_fetched} pages "
        f"({report.distinct_canonical_urls} distinct), {report.non_html} non-HTML, "
        f"{report.records_delivered} delivered, {report.delivery_failures} failed, "
        f"{report.fetch_errors} fetch errors, {report.robots_denied} robots-denied, "
        f"{report.private_refused} private-refused, refused {report.refused or 'nothing'} -> {args.report}"
    )
    if report.finish_reason == "consumer_failed":
        return 4
    return 1 if report.delivery_failures else 0


if __name__ == "__main__":
    sys.exit(main())
