"""The one root exception of crawlstream and its families.

Every error a user can act on derives from :class:`CrawlstreamError` and carries the
context needed to act (which field, which service, which log file).
"""

from __future__ import annotations


class CrawlstreamError(Exception):
    """Root of every error raised on purpose by crawlstream."""


class ConfigError(CrawlstreamError):
    """Bad configuration, detected at start; the message names the field."""


class RecordError(CrawlstreamError):
    """A record that cannot be decoded or validated; it belongs in the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StackError(CrawlstreamError):
    """A service of the embedded stack failed to install, start or become healthy."""


class PrerequisiteError(StackError):
    """A tool the stack needs (Java 17+, Maven, PostgreSQL) is missing; says what to install."""


class ReconciliationError(CrawlstreamError):
    """Counts across pipeline stages do not add up: some stage lost or duplicated records."""
