"""SQLSTATE classification: what is retried, what is a record's fault, what is our statement's."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest

from crawlstream.errors import RecordError
from sinks.sqlstate import Failure, classify, detail, reason, sqlstate


def pg_error(code: str, message: str = "") -> psycopg2.Error:
    """An exception as psycopg2 raises it for ``code``: its class, with the SQLSTATE set."""
    try:
        base: type[psycopg2.Error] = psycopg2.errors.lookup(code)
    except KeyError:  # a code psycopg2 does not know (a newer server)
        base = psycopg2.DatabaseError
    fake = type(f"Fake{base.__name__}", (base,), {"pgcode": code})
    return fake(message or f"error {code}")


TRANSIENT = [
    "08000",  # connection_exception
    "08003",  # connection_does_not_exist
    "08006",  # connection_failure
    "08001",  # sqlclient_unable_to_establish_sqlconnection
    "08P01",  # protocol_violation
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "57P04",  # database_dropped
    "57P05",  # idle_session_timeout
    "57014",  # query_canceled
    "57000",  # operator_intervention
    "53000",  # insufficient_resources
    "53100",  # disk_full
    "53200",  # out_of_memory
    "53300",  # too_many_connections
    "53400",  # configuration_limit_exceeded
    "58000",  # system_error
    "58030",  # io_error
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "40003",  # statement_completion_unknown
    "55P03",  # lock_not_available
    "55006",  # object_in_use
    "25006",  # read_only_sql_transaction (a standby after failover)
    "25P03",  # idle_in_transaction_session_timeout
    "72000",  # snapshot_too_old
]
RECORD = [
    "22000",  # data_exception
    "22001",  # string_data_right_truncation
    "22003",  # numeric_value_out_of_range
    "22007",  # invalid_datetime_format
    "22008",  # datetime_field_overflow
    "22021",  # character_not_in_repertoire (NUL, invalid UTF-8)
    "22P02",  # invalid_text_representation
    "22P05",  # untranslatable_character
    "23000",  # integrity_constraint_violation
    "23502",  # not_null_violation
    "23503",  # foreign_key_violation
    "23505",  # unique_violation
    "23514",  # check_violation
    "54000",  # program_limit_exceeded (index row too large)
    "54001",  # statement_too_complex
    "54011",  # too_many_columns
    "54023",  # too_many_arguments
    "21000",  # cardinality_violation
    "27000",  # triggered_data_change_violation
    "2F002",  # modifying_sql_data_not_permitted
    "38001",  # containing_sql_not_permitted
    "39P01",  # trigger_protocol_violated
    "44000",  # with_check_option_violation
    "P0001",  # raise_exception (a trigger's RAISE)
    "40002",  # transaction_integrity_constraint_violation
]
STATEMENT = [
    "42601",  # syntax_error
    "42501",  # insufficient_privilege
    "42P01",  # undefined_table
    "42703",  # undefined_column
    "42P10",  # invalid_column_reference (ON CONFLICT without a matching index)
    "42883",  # undefined_function
    "42804",  # datatype_mismatch
    "0A000",  # feature_not_supported
    "25P02",  # in_failed_sql_transaction
    "25001",  # active_sql_transaction
    "2D000",  # invalid_transaction_termination
    "3B001",  # invalid_savepoint_specification
    "55000",  # object_not_in_prerequisite_state (e.g. no replica identity)
    "F0000",  # config_file_error
    "HV000",  # fdw_error
    "XX000",  # internal_error
    "XX001",  # data_corrupted
    "ZZ999",  # a code nobody knows yet
]


@pytest.mark.parametrize("code", TRANSIENT)
def test_infrastructure_failures_are_retried(code: str) -> None:
    assert classify(pg_error(code)) is Failure.TRANSIENT


@pytest.mark.parametrize("code", RECORD)
def test_data_constraint_and_program_limit_errors_are_the_records(code: str) -> None:
    assert classify(pg_error(code)) is Failure.RECORD


@pytest.mark.parametrize("code", STATEMENT)
def test_syntax_access_and_unknown_errors_are_our_statements(code: str) -> None:
    assert classify(pg_error(code)) is Failure.STATEMENT


def test_an_index_row_too_large_is_never_an_outage() -> None:
    # psycopg2 makes 54000 an OperationalError, like a lost connection: the bug that wedged the sink.
    error = pg_error("54000", "index row size 3016 exceeds btree version 4 maximum 2704")
    assert isinstance(error, psycopg2.OperationalError)

    assert classify(error) is Failure.RECORD
    assert reason(error) == "sqlstate_54000"
    assert sqlstate(error) == "54000"
    assert "index row size" in detail(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg2.InterfaceError("connection already closed"),
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        psycopg2.OperationalError("could not connect to server: Connection refused"),
    ],
    ids=["closed", "lost", "refused"],
)
def test_connection_errors_without_sqlstate_are_retried(error: Exception) -> None:
    assert sqlstate(error) is None
    assert classify(error) is Failure.TRANSIENT


@pytest.mark.parametrize(
    ("error", "expected_reason"),
    [
        (ValueError("A string literal cannot contain NUL (0x00) characters."), "unprocessable"),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "unprocessable"),
        (OverflowError("int too large to convert"), "unprocessable"),
        (RecordError("too_large", "outbox event of 2000000 bytes"), "too_large"),
        (psycopg2.DataError("bad value"), "unprocessable"),
    ],
    ids=["nul", "surrogate", "overflow", "record-error", "data-error-without-code"],
)
def test_client_side_refusals_of_a_value_are_the_records(error: Exception, expected_reason: str) -> None:
    assert classify(error) is Failure.RECORD
    assert reason(error) == expected_reason


@pytest.mark.parametrize(
    "error",
    [psycopg2.ProgrammingError("can't adapt type 'dict'"), TypeError("unhashable"), KeyError("x")],
    ids=["cannot-adapt", "type-error", "key-error"],
)
def test_other_exceptions_are_treated_as_our_statements(error: Exception) -> None:
    assert classify(error) is Failure.STATEMENT
    assert reason(error) == "unprocessable"
