"""bench/results.py writes what bench/report.py reads; the summary judges targets as the issue does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.results import RESULTS_ENV, Headline, Row, Series, Target, median_row, with_ratios, write_result


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    return tmp_path


def test_a_result_holds_medians_runs_ratios_targets_and_where_it_came_from(results: Path) -> None:
    rows = with_ratios(
        [
            median_row("ours", [4.0, 4.4, 3.9], "ms", "ours", "cpu"),
            median_row("plain", [3.8, 3.6, 4.0], "ms", "floor", "cpu"),
            Row("other group", 1.0, "x", "peer", "elsewhere"),
        ],
        "plain",
    )
    path = write_result(
        "demo",
        "Demo",
        rows,
        targets=[Target("cpu ratio", 1.05, "<=", 1.05, "x"), Target("rate", 140.0, ">=", 150, "pages/s")],
        headline=[Headline("crawl", 4.0, 3.8, "ms", "ours", "plain", better="lower", target=1.05)],
        series=[Series("lag", "lag", [0.0, 1.0], [10.0, 0.0], "s", "records")],
        params={"rounds": 3},
    )
    doc = json.loads(path.read_text())
    assert path == results / "demo.json"
    assert [r["value"] for r in doc["rows"]] == [4.0, 3.8, 1.0]
    assert doc["rows"][0]["runs"] == [4.0, 4.4, 3.9]
    assert doc["rows"][0]["ratio"] == pytest.approx(4.0 / 3.8)
    assert doc["rows"][2]["ratio"] is None  # no reference row in its group
    assert [t["met"] for t in doc["targets"]] == [True, False]
    assert doc["headline"][0]["ratio"] == pytest.approx(4.0 / 3.8)
    assert doc["headline"][0]["met"] is False
    assert len(doc["git"]["commit"]) == 40
    assert doc["command"].startswith(".venv/bin/python ")
    assert doc["machine"]["cores"] >= 1
    assert "load_at_start" in doc["machine"]
    assert doc["params"] == {"rounds": 3}


def test_a_given_ratio_is_what_the_target_judges_and_nan_is_written_as_null(results: Path) -> None:
    headline = Headline("crawl", 4.0, 3.8, "ms", "ours", "plain", better="lower", target=1.05, ratio=1.03)
    assert headline.met is True
    doc = json.loads(
        write_result("nan", "NaN", [Row("r", float("nan"), "x")], headline=[headline]).read_text()
    )
    assert doc["rows"][0]["value"] is None
    assert doc["headline"][0]["ratio"] == 1.03


def test_bad_roles_and_operators_fail_at_once() -> None:
    with pytest.raises(ValueError, match="role"):
        Row("r", 1.0, "x", role="mine")
    with pytest.raises(ValueError, match="op"):
        Target("t", 1.0, "==", 1.0)
    with pytest.raises(ValueError, match="better"):
        Headline("s", 1.0, 1.0, "x", "a", "b", better="faster")


def test_the_summary_has_the_headline_table_each_bench_and_foreign_files(results: Path) -> None:
    write_result(
        "crawl",
        "Crawl",
        [Row("Kafka crawler", 4.08, "CPU ms/page"), Row("plain Scrapy", 3.72, "CPU ms/page", "floor")],
        targets=[Target("cpu", 1.10, "<=", 1.05, "x")],
        headline=[
            Headline("crawl", 4.08, 3.72, "CPU ms/page", "Kafka crawler", "plain Scrapy", "lower", 1.05),
            Headline("sink", 900.0, 1000.0, "rows/s", "worker", "floor", "higher", 0.8),
        ],
        notes=["a note"],
    )
    foreign = {"events": 10, "summary": {"docs": {"caught_up_s": 2.5}}, "name": "x"}
    (results / "lag.json").write_text(json.dumps(foreign))
    (results / "broken.json").write_text("{not json")
    docs = report.load(results)
    assert [d["bench"] for d in docs] == ["crawl", "lag"]
    text = report.summary(docs, {"crawl": results / "crawl.png"}, results / "headline.png")
    assert "![each stage next to its floor](headline.png)" in text
    row = "| Kafka crawler: 4.08 CPU ms/page | plain Scrapy: 3.72 CPU ms/page | 1.10x | <= 1.05x |"
    assert row + " **not met** |" in text
    assert "| floor: 1,000 rows/s | 0.90x | >= 0.8x | met |" in text
    assert "![crawl](crawl.png)" in text
    assert "- target: cpu: 1.10 x <= 1.05 x: **not met**" in text
    assert "- a note" in text
    assert "`lag.json` is not in the results format" in text
    assert "- summary.docs.caught_up_s: 2.50" in text


def test_lower_is_better_figures_are_turned_for_the_headline_plot() -> None:
    score, target = report.headline_score(
        {"ours": 4.0, "floor": 3.2, "better": "lower", "target": 1.25, "ratio": None}
    )
    assert score == pytest.approx(0.8)
    assert target == pytest.approx(0.8)


def test_lag_curves_are_found_in_results_of_another_shape() -> None:
    doc = {
        "runs": {
            "docs": [
                {
                    "lag_curve": [
                        {"t": 0.0, "stage_lag": 5, "raw_end": 9},
                        {"t": 1.0, "stage_lag": 0, "raw_end": 9},
                    ]
                }
            ]
        },
        "other": [{"t": 1, "value": 2}],
    }
    curves = report.found_curves(doc)
    assert [(c["name"], c["x"], c["y"], c["kind"]) for c in curves] == [
        ("runs docs 1 lag_curve stage_lag", [0.0, 1.0], [5, 0], "lag")
    ]
