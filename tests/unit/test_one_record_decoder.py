"""Every stage decodes a Kafka record value through the one helper of the kernel
(:func:`crawlstream.records.decode_record`): it returns the typed record or raises the one
error type a dead letter is made of. A stage module parsing record bytes itself fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("crawlers", "streams", "sinks", "follow/follow.py", "follow/webhooks")
# A pydantic model validating bytes itself: what decode_record is for.
_OWN_DECODER = re.compile(r"\.model_validate_json\(")
# Where a module may still validate bytes itself, and why.
ALLOWED = {
    # A PageEvent, or else a bare PageRecord (the stream stage's older output): the fallback needs
    # pydantic's errors to tell the two apart; its errors go through records.invalid_record.
    "sinks/rows.py",
    # Re-reads the dead letter it built itself a moment ago (not a record from a topic).
    "streams/agent.py",
}


def stage_modules() -> list[Path]:
    found: list[Path] = []
    for name in STAGES:
        path = ROOT / name
        found += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return found


def test_stage_modules_decode_record_values_through_the_one_helper() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in stage_modules()
        if _OWN_DECODER.search(path.read_text()) and str(path.relative_to(ROOT)) not in ALLOWED
    )
    assert stage_modules(), "the stage packages moved: update STAGES"
    assert not offenders, f"decode with crawlstream.records.decode_record instead: {offenders}"


def test_the_allowed_exceptions_still_need_it() -> None:
    for name in ALLOWED:
        assert _OWN_DECODER.search((ROOT / name).read_text()), f"{name} no longer needs its exception"
