"""What a failed write means: the database is unavailable, a record is bad, or our statement is.

Used by :mod:`sinks.postgres` on every exception a write raises, and by the unit tests on every
class. Three answers (:class:`Failure`):

- ``TRANSIENT``: the database or the connection, not the batch (connection exceptions, class 08;
  admin shutdown and cannot-connect-now, 57P0x; insufficient resources such as disk full or out
  of memory, 53; system and I/O errors, 58; serialization failures and deadlocks, 40001/40P01;
  a lock or statement that was cancelled, 55P03/57014; a read-only standby after a failover,
  25006; a closed connection or a commit whose outcome is unknown, which psycopg2 reports as
  InterfaceError / OperationalError without a SQLSTATE). The worker retries the batch with
  backoff; the offset fence makes the retry exact whatever the outcome of the failed commit.
- ``RECORD``: something in a record (data exceptions, 22; integrity constraints, 23; program
  limits such as an index row too large, 54; a trigger's RAISE, P0; a value psycopg2 cannot send,
  ValueError / UnicodeError / OverflowError; a :class:`~crawlstream.errors.RecordError`). The
  record is dead-lettered with ``sqlstate_<code>`` as reason and the rest of its batch stored.
  54000 is here, never in TRANSIENT: a URL too long for a btree would otherwise be retried forever.
- ``STATEMENT``: our SQL, schema or grants (syntax or access rule violations, 42; feature not
  supported, 0A; invalid transaction state, 25; internal errors, XX) and anything unknown. Loud;
  see :class:`sinks.postgres.PostgresSink` for how it is isolated per record and, when every
  record fails alike, retried for a bounded time before the records are dead-lettered.
"""

from __future__ import annotations

import enum

import psycopg2

from crawlstream.errors import RecordError


class Failure(enum.Enum):
    TRANSIENT = "transient"
    RECORD = "record"
    STATEMENT = "statement"


# SQLSTATE classes (first two characters) and single codes; a code wins over its class.
TRANSIENT_CLASSES = frozenset({"08", "53", "58"})
RECORD_CLASSES = frozenset({"21", "22", "23", "27", "2F", "38", "39", "44", "54", "P0"})
TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40003",  # statement_completion_unknown
        "40P01",  # deadlock_detected
        "55006",  # object_in_use
        "55P03",  # lock_not_available
        "57000",  # operator_intervention
        "57014",  # query_canceled (by an operator or a timeout; see sinks.pages.CopyReader)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "57P04",  # database_dropped
        "57P05",  # idle_session_timeout
        "25006",  # read_only_sql_transaction: a standby after a failover
        "25P03",  # idle_in_transaction_session_timeout
        "72000",  # snapshot_too_old
    }
)
RECORD_CODES = frozenset({"40002"})  # transaction_integrity_constraint_violation
# A value of the record that psycopg2 or our encoder cannot turn into SQL (NUL characters,
# integers beyond str()'s digit limit, ...): raised before anything reaches the server.
RECORD_EXCEPTIONS = (ValueError, OverflowError)  # UnicodeError is a ValueError


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the server sent with ``exc``, if any."""
    code = getattr(exc, "pgcode", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def classify(exc: BaseException) -> Failure:
    """Whether ``exc``, raised by a write, is the database's, a record's or our statement's fault."""
    if isinstance(exc, RecordError):
        return Failure.RECORD
    code = sqlstate(exc)
    if code is not None:
        if code in TRANSIENT_CODES:
            return Failure.TRANSIENT
        if code in RECORD_CODES:
            return Failure.RECORD
        if code[:2] in TRANSIENT_CLASSES:
            return Failure.TRANSIENT
        if code[:2] in RECORD_CLASSES:
            return Failure.RECORD
        return Failure.STATEMENT
    # No SQLSTATE: psycopg2 lost the connection (or never had one), or the client refused a value.
    if isinstance(exc, (psycopg2.InterfaceError, psycopg2.OperationalError)):
        return Failure.TRANSIENT
    if isinstance(exc, (psycopg2.DataError, psycopg2.IntegrityError)):
        return Failure.RECORD
    if isinstance(exc, RECORD_EXCEPTIONS):
        return Failure.RECORD
    return Failure.STATEMENT


def reason(exc: BaseException) -> str:
    """The dead-letter reason: ``sqlstate_<code>``, a RecordError's own, else ``unprocessable``."""
    if isinstance(exc, RecordError):
        return exc.reason
    code = sqlstate(exc)
    return f"sqlstate_{code}" if code is not None else "unprocessable"


def detail(exc: BaseException) -> str:
    """The server's message with its DETAIL and HINT (no statement, no context), or the exception's."""
    if isinstance(exc, RecordError):
        return exc.detail
    diag = getattr(exc, "diag", None)
    if isinstance(exc, psycopg2.Error) and diag is not None and diag.message_primary:
        parts = (diag.message_primary, diag.message_detail, diag.message_hint)
        return " ".join(part for part in parts if part)
    text = str(exc).strip()
    if isinstance(exc, psycopg2.Error) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
