"""Pure logic of ``crawlstream offsets reset``: parse the options, compute and clamp the plan,
read and write it as CSV in kafka-consumer-groups' format, so a plan moves between the two tools.
No Kafka here (control/ops/offsets_tool.py fetches the inputs),
so every mode is unit-tested without services.

A partition the group never committed counts as being at its earliest offset: that is where our
consumers (``auto.offset.reset=earliest``) would start, so ``--to-current`` and ``--shift-by``
start from there.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crawlstream.errors import ConfigError

TP = tuple[str, int]
MODES = (
    "to-earliest",
    "to-latest",
    "to-current",
    "to-datetime",
    "by-duration",
    "to-offset",
    "shift-by",
    "from-file",
)
_DURATION = re.compile(
    r"^(?P<sign>[-+])?P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


@dataclass(frozen=True)
class ResetTarget:
    mode: str
    value: int | datetime | Path | None = None


@dataclass(frozen=True)
class PlanRow:
    topic: str
    partition: int
    current: int | None
    new: int
    earliest: int
    latest: int
    clamped: bool = False


def parse_duration(text: str) -> timedelta:
    """ISO 8601 duration without years or months (their length varies): ``PT15M``, ``P1DT2H``."""
    match = _DURATION.match(text.strip().upper())
    if match is None or text.strip().upper().rstrip("T") in ("P", "-P", "+P"):
        raise ConfigError(f"--by-duration: {text!r} is not an ISO 8601 duration like PT15M or P1DT2H")
    parts = {k: float(v) for k, v in match.groupdict().items() if v and k != "sign"}
    delta = timedelta(**parts)
    return -delta if match.group("sign") == "-" else delta


def parse_datetime(text: str) -> datetime:
    """ISO 8601 date-time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--to-datetime: {text!r} is not ISO 8601 (e.g. 2026-11-25T10:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_target(options: dict[str, str | int | bool | None], now: datetime | None = None) -> ResetTarget:
    """Exactly one reset option must be set; values are parsed and checked here."""
    chosen = {mode: value for mode, value in options.items() if value is not None and value is not False}
    if len(chosen) != 1:
        names = ", ".join(f"--{m}" for m in MODES)
        given = ", ".join(f"--{m}" for m in chosen) or "none"
        raise ConfigError(f"give exactly one of {names} (given: {given})")
    ((mode, value),) = chosen.items()
    if mode not in MODES:
        raise ConfigError(f"unknown reset mode --{mode}")
    if mode in ("to-earliest", "to-latest", "to-current"):
        return ResetTarget(mode)
    if mode == "to-datetime":
        return ResetTarget(mode, parse_datetime(str(value)))
    if mode == "by-duration":
        return ResetTarget(mode, (now or datetime.now(UTC)) - parse_duration(str(value)))
    if mode == "from-file":
        return ResetTarget(mode, Path(str(value)))
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"--{mode}: {value!r} is not an integer") from None
    if mode == "to-offset" and number < 0:
        raise ConfigError(f"--to-offset: {number} is negative")
    return ResetTarget(mode, number)


def parse_topics(specs: list[str]) -> dict[str, list[int] | None]:
    """``--topic T`` (all partitions) or ``--topic T:0,2`` (those partitions)."""
    result: dict[str, list[int] | None] = {}
    for spec in specs:
        topic, sep, parts = spec.partition(":")
        if not topic or (sep and not parts):
            raise ConfigError(f"--topic: {spec!r} is not TOPIC or TOPIC:P[,P...]")
        if not sep:
            result[topic] = None
            continue
        try:
            result[topic] = sorted({int(p) for p in parts.split(",")})
        except ValueError:
            raise ConfigError(f"--topic: {spec!r} has a partition that is not a number") from None
    return result


def _wanted(
    target: ResetTarget, tp: TP, current: int | None, low: int, high: int, found: dict[TP, int]
) -> int:
    base = current if current is not None else low
    if target.mode == "to-earliest":
        return low
    if target.mode == "to-latest":
        return high
    if target.mode == "to-current":
        return base
    if target.mode in ("to-datetime", "by-duration"):
        offset = found.get(tp, -1)
        return high if offset < 0 else offset  # no record at or after that time: the end
    if target.mode == "to-offset":
        return int(target.value)  # type: ignore[arg-type]
    if target.mode == "shift-by":
        return base + int(target.value)  # type: ignore[arg-type]
    if target.mode == "from-file":
        return found[tp]
    raise ConfigError(f"unknown reset mode --{target.mode}")


def compute_plan(
    target: ResetTarget,
    partitions: list[TP],
    current: dict[TP, int],
    bounds: dict[TP, tuple[int, int]],
    found: dict[TP, int] | None = None,
) -> list[PlanRow]:
    """One row per partition; ``found`` holds offsets by time, or the file's offsets."""
    rows = []
    for tp in sorted(partitions):
        low, high = bounds[tp]
        wanted = _wanted(target, tp, current.get(tp), low, high, found or {})
        new = min(max(wanted, low), high)
        rows.append(PlanRow(tp[0], tp[1], current.get(tp), new, low, high, clamped=new != wanted))
    return rows


# Plans are CSV in kafka-consumer-groups' own format (ConsumerGroupCommand --export and
# --from-file, CsvUtils in Kafka's tools): no header, one `topic,partition,offset` line per
# partition for one group, `group,topic,partition,offset` for several. Topic names cannot hold a
# comma or a quote, so the lines need no quoting.
LEGACY_HEADER = ["topic", "partition", "current", "new"]  # what our --export wrote before


def plan_csv(rows: list[PlanRow]) -> str:
    """The plan as ``kafka-consumer-groups --reset-offsets --export`` prints it for one group."""
    return "".join(f"{r.topic},{r.partition},{r.new}\n" for r in rows)


def write_plan_csv(rows: list[PlanRow], path: Path) -> None:
    path.write_text(plan_csv(rows))


def parse_plan_csv(text: str, group: str, source: str = "--from-file") -> dict[TP, int]:
    """Offsets for ``group`` from a plan: ``topic,partition,offset`` lines (one group), or
    ``group,topic,partition,offset`` lines of which ``group``'s are taken, as Kafka's tool does."""
    rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip() for cell in rows[0]] == LEGACY_HEADER:
        rows = [[r[0], r[1], r[-1]] for r in rows[1:] if len(r) == len(LEGACY_HEADER)]
    if not rows:
        raise ConfigError(f"{source} holds no offsets")
    width = len(rows[0])
    if width not in (3, 4):
        raise ConfigError(
            f"{source} line 1 {rows[0]!r}: expected topic,partition,offset or group,topic,partition,offset"
        )
    plan: dict[TP, int] = {}
    groups: set[str] = set()
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise ConfigError(f"{source} line {number} {row!r}: {len(row)} fields, line 1 has {width}")
        if width == 4:
            groups.add(row[0])
            if row[0] != group:
                continue
        topic, partition, offset = row[-3:]
        try:
            plan[(topic.strip(), int(partition))] = int(offset)
        except ValueError:
            raise ConfigError(
                f"{source} line {number} {row!r}: partition and offset must be integers"
            ) from None
    if not plan:
        raise ConfigError(
            f"{source} has no offsets for group {group} (it has groups {', '.join(sorted(groups))})"
        )
    return plan


def read_plan_csv(path: Path, group: str) -> dict[TP, int]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--from-file: cannot read {path}: {exc}") from None
    return parse_plan_csv(text, group, f"--from-file {path}")
