"""deploy/prometheus with promtool (Debian's prometheus package, installed by `make prereqs`):
the config and rules are valid, and the alert unit tests in tests/unit/control/ops/prometheus/ pass
(``promtool test rules``: made-up series, expected alerts with their labels and annotations).
No services: promtool evaluates the rules itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[4] / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
RULE_TESTS = sorted((Path(__file__).parent / "prometheus").glob("*.test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def alert_names() -> list[str]:
    return [name for path in RULES for name in re.findall(r"^\s*- alert: (\S+)", path.read_text(), re.M)]


def test_config_and_rules_are_valid() -> None:
    config = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *map(str, RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(alert_names())} rules found" in rules.stdout


def test_alert_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_scheduler_alert_has_a_unit_test() -> None:
    tested = " ".join(path.read_text() for path in RULE_TESTS)
    scheduler = [name for name in alert_names() if "Schedul" in name]
    assert len(scheduler) == 5
    untested = [name for name in scheduler if f"alertname: {name}" not in tested]
    assert not untested, f"no promtool test expects {untested}"
