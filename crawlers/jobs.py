"""Crawl jobs: the jobs file (TOML), validated at load into :class:`JobSpec` models.

Read by ``crawlstream jobs ...`` and ``crawlstream scheduler`` (:mod:`crawlers.cli`); a job becomes
a :class:`crawlers.runner.CrawlSpec` through :func:`crawl_spec`. Writes no topic itself: the crawl
produces to the job's ``output_topic`` (default ``<prefix>.pages.raw``). Format (see deploy/jobs.toml)::

    [defaults]                 # optional, merged under every job
    user_agent = "..."

    [jobs.docs]                # the table name is the job name
    source = "site"            # site | sitemap | feed | api | frontier
    start_urls = ["https://docs.example.org/"]
    schedule = "0 3 * * *"     # cron, optional

Every error names the file, the job and the field (:class:`~crawlstream.errors.ConfigError`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crawlstream.addresses import allowed_pairs
from crawlstream.errors import ConfigError

JOB_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class JobSpec(BaseModel):
    """One crawl job.

    Limits left out take the ``crawl.*`` settings, which are finite (depth 16, 100,000 pages,
    50,000 per host, 1,000 links per page, URLs of 2,048 characters, 4 MiB per response); 0 turns
    ``max_depth``, ``max_pages`` and ``max_pages_per_host`` off explicitly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=JOB_NAME)
    # A spider of crawlers/spiders/ by name (crawlers.registry), or "frontier" (a broad crawl).
    source: str = "site"
    start_urls: list[str] = Field(default_factory=list)
    sitemap_urls: list[str] = Field(default_factory=list, description="sitemaps or robots.txt URLs")
    feed_urls: list[str] = Field(default_factory=list)
    api_endpoint: str | None = Field(default=None, description="first page of a paginated JSON API")
    api_items_field: str = Field(default="items", min_length=1, description="API page: list of items")
    api_url_field: str = Field(default="url", min_length=1, description="API item: URL of its page")
    api_next_field: str = Field(default="next", min_length=1, description="API page: next page's URL")
    allowed_domains: list[str] = Field(default_factory=list, description="empty: the start URLs' hosts")
    allow: list[str] = Field(default_factory=list, description="URL regexes to follow (empty: all)")
    deny: list[str] = Field(default_factory=list, description="URL regexes never followed")
    max_depth: int | None = Field(default=None, ge=0, description="link hops (0: no limit)")
    max_pages: int | None = Field(default=None, ge=0, description="page records (0: no limit)")
    max_pages_per_host: int | None = Field(default=None, ge=0, description="per host (0: no limit)")
    max_links_per_page: int | None = Field(default=None, ge=1, description="outlinks followed per page")
    max_url_length: int | None = Field(default=None, ge=64, le=65536, description="longer URLs refused")
    max_api_pages: int = Field(default=1000, ge=0, le=1_000_000, description="API pages read (0: no limit)")
    concurrency_per_domain: int = Field(default=8, ge=1, le=256)
    # Frontier jobs (source = "frontier": a broad crawl from start_urls through the stream stage).
    follow: Literal["same-host", "same-domain", "any"] = Field(
        default="same-domain", description="frontier: links followed (registrable domain by the PSL)"
    )
    crawlers: int = Field(default=1, ge=1, le=64, description="frontier: crawler processes")
    concurrency: int | None = Field(default=None, ge=1, le=1024, description="requests in flight per process")
    max_hosts: int = Field(default=0, ge=0, description="frontier: distinct hosts (0: no limit)")
    forget_after_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="frontier: known URLs no run reached for this long are dropped",
    )
    download_delay_s: float = Field(default=0.0, ge=0, le=3600)
    autothrottle: bool = False
    user_agent: str | None = Field(default=None, min_length=1)
    schedule: str | None = Field(default=None, description="cron expression (UTC)")
    recrawl_interval_s: float = Field(
        default=0, ge=0, description="sitemap entries whose lastmod is older are skipped (0: none)"
    )
    output_topic: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    obey_robots: bool = True
    allow_private_hosts: list[str] = Field(
        default_factory=list, description="host[:port] that may be private (no port: 80 and 443 only)"
    )
    allow_private_addresses: bool = Field(default=False, description="no address check at all")
    record_non_html: bool = Field(default=True, description="metadata records for non-HTML responses")
    max_body_bytes: int | None = Field(default=None, ge=1024, description="body cap in the record")
    max_response_bytes: int | None = Field(
        default=None, ge=1024, description="download cap, decompressed too (default crawl.max_response_bytes)"
    )
    download_timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_redirects: int = Field(default=10, ge=0, le=50)
    retry_times: int = Field(default=2, ge=0, le=10)

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        known = job_sources()
        if source not in known:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(known)}")
        return source

    @field_validator("start_urls", "sitemap_urls", "feed_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"not an absolute http(s) URL: {url!r}")
        return urls

    @field_validator("api_endpoint")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        return url

    @field_validator("allow_private_hosts")
    @classmethod
    def _host_ports(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            allowed_pairs(entry)  # ValueError names the bad entry
        return entries

    @field_validator("allow", "deny")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        return patterns

    @field_validator("schedule")
    @classmethod
    def _cron(cls, expr: str | None) -> str | None:
        if expr is not None and not croniter.is_valid(expr):
            raise ValueError(f"not a cron expression: {expr!r}")
        return expr

    @model_validator(mode="after")
    def _source_has_input(self) -> JobSpec:
        needs = {
            "site": "start_urls",
            "sitemap": "sitemap_urls",
            "feed": "feed_urls",
            "api": "api_endpoint",
            "frontier": "start_urls",
        }
        field = needs.get(self.source, "start_urls")  # a spider added later takes start_urls
        if not getattr(self, field):
            raise ValueError(f"source {self.source!r} needs {field}")
        return self

    def seed_urls(self) -> list[str]:
        return {
            "sitemap": self.sitemap_urls,
            "feed": self.feed_urls,
            "api": [self.api_endpoint] if self.api_endpoint else [],
        }.get(self.source, self.start_urls)


def job_sources() -> list[str]:
    """What a job's ``source`` may name: the spiders Scrapy's loader finds, except the
    distributed one (it reads the requests topic; a frontier job runs it), and ``frontier``."""
    from crawlers.registry import RUNNER_MODES, spider_names  # loads the spider modules

    return sorted((set(spider_names()) - {"distributed"}) | RUNNER_MODES)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<job>"
        parts.append(f"field {field!r}: {err['msg']}")
    return "; ".join(parts)


def parse_jobs(data: dict[str, Any], origin: str = "<jobs>") -> dict[str, JobSpec]:
    """Validate a parsed jobs document; raise ConfigError naming the job and field of each error."""
    unknown = set(data) - {"defaults", "jobs"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level table(s) {sorted(unknown)}; expected jobs, defaults")
    defaults = data.get("defaults", {})
    jobs = data.get("jobs", {})
    if not isinstance(defaults, dict) or not isinstance(jobs, dict):
        raise ConfigError(f"{origin}: [defaults] and [jobs.<name>] must be tables")
    problems: list[str] = []
    specs: dict[str, JobSpec] = {}
    for name, raw in jobs.items():
        if not isinstance(raw, dict):
            problems.append(f"job {name!r}: must be a table [jobs.{name}]")
            continue
        try:
            specs[name] = JobSpec.model_validate({**defaults, **raw, "name": name})
        except ValidationError as exc:
            problems.append(f"job {name!r}: {_describe(exc)}")
    if problems:
        raise ConfigError(f"{origin}: " + " | ".join(problems))
    return specs


def load_jobs(path: Path) -> dict[str, JobSpec]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"jobs file {path} does not exist (set --jobs or CRAWLSTREAM_JOBS)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_jobs(data, str(path))


def get_job(jobs: dict[str, JobSpec], name: str) -> JobSpec:
    if name not in jobs:
        raise ConfigError(f"no job named {name!r}; known: {', '.join(sorted(jobs)) or 'none'}")
    return jobs[name]
