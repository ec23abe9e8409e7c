"""The report a person looks at: plots and a summary from ``bench/results/*.json``.

Reads every result written by :func:`bench.results.write_result` and writes, next to them:

- ``headline.png``: each stage's figure as a ratio to its floor or peer measured in the same run
  (the ``headline`` entries of the results), with the issue's target on each bar;
- ``<bench>.png``: one panel per comparison group of a bench, the median of each row as a bar,
  every run as a dot, coloured by role (ours, floor, peer, baseline, published);
- ``curves-<kind>.png`` for curves (``series``): ``curves-lag.png`` (lag per stage over a crawl),
  ``curves-cost.png`` (cost against crawl size), one plot per kind;
- ``SUMMARY.md``: the headline table, then per bench its figures, targets, notes, command, commit,
  date and machine, linking the plots.

A JSON file that is not in that format (no ``rows``) is listed with its top-level numbers.
Usage: ``.venv/bin/python bench/report.py [--results DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import results_dir  # noqa: E402

COLOURS = {
    "ours": "#1f77b4",
    "floor": "#7f7f7f",
    "peer": "#ff7f0e",
    "baseline": "#c7c7c7",
    "published": "#9467bd",
}
MET, NOT_MET, NO_TARGET = "#2ca02c", "#d62728", "#1f77b4"
DPI = 100


def load(directory: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(doc, dict):
            doc.setdefault("bench", path.stem)
            doc["_file"] = path.name
            docs.append(doc)
    return docs


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    magnitude = abs(value)
    text = f"{value:,.0f}" if magnitude >= 100 else f"{value:.2f}" if magnitude >= 1 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def ratio_of(h: dict[str, Any]) -> float:
    ratio = h.get("ratio")
    if ratio is None:
        ratio = h["ours"] / h["floor"] if h.get("floor") else float("nan")
    return float(ratio)


def headline_score(h: dict[str, Any]) -> tuple[float, float | None]:
    """(the judged ratio turned so that more is better, the target in the same terms)."""
    ratio = ratio_of(h)
    target = h.get("target")
    if h.get("better") == "lower":
        return (1 / ratio if ratio else float("nan")), (1 / target if target else None)
    return ratio, target


def target_met(h: dict[str, Any]) -> bool | None:
    ratio = ratio_of(h)
    if h.get("target") is None or not math.isfinite(ratio):
        return None
    return bool(ratio <= h["target"] if h.get("better") == "lower" else ratio >= h["target"])


def plot_headline(docs: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    entries = [(doc, h) for doc in docs for h in doc.get("headline") or []]
    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.75 * len(entries) + 1.6))
    labels, scores = [], []
    for i, (_doc, h) in enumerate(entries):
        score, target = headline_score(h)
        met = target_met(h)
        colour = NO_TARGET if met is None else MET if met else NOT_MET
        ax.barh(i, score if math.isfinite(score) else 0, color=colour, alpha=0.85)
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
        ratio = ratio_of(h)
        goal = (
            ""
            if h.get("target") is None
            else f", target {'<=' if h.get('better') == 'lower' else '>='} {h['target']:g}x"
        )
        ax.text(
            0.01,
            i,
            f" {fmt(h['ours'], h['unit'])} vs {fmt(h['floor'])} ({h['floor_name']}): {ratio:.2f}x{goal}",
            va="center",
            ha="left",
            fontsize=8,
            color="black",  # on a light box: the label is longer than many bars
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.5},
            transform=ax.get_yaxis_transform(),
        )
        labels.append(f"{h['stage']}\n{h['ours_name']}")
        scores.append(score)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(entries)), labels, fontsize=8)
    ax.invert_yaxis()
    finite = [s for s in scores if math.isfinite(s)]
    ax.set_xlim(0, max([1.15, *(s * 1.1 for s in finite)]))
    ax.set_xlabel("performance relative to the floor or peer of the same run (1.0 = as fast; more is better)")
    ax.set_title("Each stage next to its floor, same run, medians (black tick: the target)")
    fig.tight_layout()
    path = out / "headline.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_bench(doc: dict[str, Any], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in doc.get("rows") or []:
        groups[row.get("group") or ""].append(row)
    if not groups:
        return None
    height = sum(0.42 * len(rows) + 0.9 for rows in groups.values()) + 0.6
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, height), squeeze=False)
    for ax, (group, rows) in zip(axes[:, 0], groups.items(), strict=True):
        for i, row in enumerate(rows):
            role = row.get("role", "ours")
            ax.barh(
                i,
                row["value"],
                color=COLOURS.get(role, "#1f77b4"),
                hatch="//" if role == "published" else None,
                alpha=0.85,
            )
            runs = row.get("runs") or []
            if len(runs) > 1:
                ax.plot(runs, [i] * len(runs), "k.", markersize=4)
            ratio = row.get("ratio")
            label = fmt(row["value"], row.get("unit", "")) + (
                f"  ({ratio:.2f}x)" if ratio is not None else ""
            )
            ax.text(max([row["value"], *runs]), i, "  " + label, va="center", fontsize=8)  # past the dots
        ax.set_yticks(range(len(rows)), [f"{r['name']}\n[{r.get('role', 'ours')}]" for r in rows], fontsize=8)
        ax.invert_yaxis()
        peak = max([r["value"] for r in rows] + [v for r in rows for v in r.get("runs") or []])
        ax.set_xlim(0, peak * 1.45 if peak > 0 else 1)
        unit = rows[0].get("unit", "")
        ax.set_xlabel(f"{group} ({unit})" if group else unit, fontsize=9)
    fig.suptitle(doc.get("title", doc["bench"]), fontsize=10)
    fig.tight_layout()
    path = out / f"{doc['bench']}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


TIME_KEYS = ("t", "t_s", "elapsed_s", "seconds")


def found_curves(value: Any, path: str = "", depth: int = 0) -> list[dict[str, Any]]:
    """Lag curves in a JSON not written by bench/results.py: lists of samples (dicts) that have a
    time key and keys with "lag" in their name, anywhere a few levels down."""
    if depth > 5:
        return []
    if isinstance(value, dict):
        return [c for k, v in value.items() for c in found_curves(v, f"{path} {k}".strip(), depth + 1)]
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, dict) for v in value):
        time_key = next((k for k in TIME_KEYS if all(k in v for v in value)), None)
        lag_keys = [
            k for k in value[0] if "lag" in k and all(isinstance(v.get(k), int | float) for v in value)
        ]
        if time_key and lag_keys:
            return [
                {
                    "name": f"{path} {key}".strip(),
                    "kind": "lag",
                    "x": [v[time_key] for v in value],
                    "y": [v[key] for v in value],
                    "x_label": "seconds",
                    "y_label": "records behind",
                }
                for key in lag_keys
            ]
    return [c for i, v in enumerate(value) for c in found_curves(v, f"{path} {i + 1}", depth + 1)]


def panel_of(bench: str, name: str) -> str:
    """The panel a curve is drawn in: its bench, and the part of its name before a colon (e.g. the
    site of a crawl: "demo: sink lag" and "demo: cdc lag" share a panel, "docs: ..." another)."""
    return f"{bench}: {name.split(':', 1)[0]}" if ":" in name else bench


CRAWL_END = re.compile(r"crawl ended at (\d+(?:\.\d+)?) s")


def plot_series(docs: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for doc in docs:
        curves = doc.get("series") if "rows" in doc else found_curves(doc)
        for series in curves or []:
            by_kind[series.get("kind") or "series"].append((doc["bench"], series))
    paths = {}
    for kind, items in by_kind.items():
        # Lag curves: a panel per crawl (their x scales differ); other kinds: a panel per bench.
        def panel(bench: str, name: str, kind: str = kind) -> str:
            return panel_of(bench, name) if kind == "lag" else bench

        panels = sorted({panel(bench, s.get("name", "")) for bench, s in items})
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.4 * len(panels)), squeeze=False)
        for ax, title in zip(axes[:, 0], panels, strict=True):
            mine = [s for b, s in items if panel(b, s.get("name", "")) == title]
            ends = set()
            for series in mine:
                ax.plot(series["x"], series["y"], label=series["name"], linewidth=1.4, marker=".")
                if (end := CRAWL_END.search(series["name"])) is not None:
                    ends.add(float(end.group(1)))
            for end in ends:  # where the crawl ended: lag after this line is the catch-up
                ax.axvline(end, color="black", linestyle="--", linewidth=1)
            ax.set_xlabel(mine[0].get("x_label", ""))
            ax.set_ylabel(mine[0].get("y_label", ""))
            if kind == "cost":  # issue 13: at least 0.8x of the small tables' throughput
                ax.axhline(0.8, color="black", linestyle=":", linewidth=1, label="target 0.8x")
                ax.set_ylim(0, max(1.2, *(y for c in mine for y in c["y"])) * 1.05)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"curves-{kind}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths[kind] = path
    return paths


def machine_line(doc: dict[str, Any]) -> str:
    m = doc.get("machine") or {}
    memory = m.get("memory_bytes")
    parts = [
        f"{m.get('cores', '?')} cores ({m.get('cpu', '?')})",
        f"{memory / 2**30:.0f} GiB" if memory else "",
        f"load {', '.join(str(x) for x in m.get('load_at_start', []))} at start, "
        f"{', '.join(str(x) for x in m.get('load_at_end', []))} at end"
        if m.get("load_at_start")
        else "",
        f"Python {m['python']}" if m.get("python") else "",
    ]
    return "; ".join(p for p in parts if p)


def summary(docs: list[dict[str, Any]], plots: dict[str, Path], headline: Path | None) -> str:
    lines = ["# Benchmark results", ""]
    lines += [
        "Written by `bench/report.py` from the JSON each `bench/bench_*.py` leaves in this folder "
        "(`make bench` runs them all and then the report). Every figure is a median of the runs "
        "listed in its JSON, next to a floor or peer measured in the same run; the machines are "
        "shared, so read the ratios rather than the absolute figures.",
        "",
    ]
    entries = [(doc, h) for doc in docs for h in doc.get("headline") or []]
    if headline is not None:
        lines += [f"![each stage next to its floor]({headline.name})", ""]
    if entries:
        lines += ["| stage | ours | floor / peer | ratio | target | |", "|---|---|---|---|---|---|"]
        for doc, h in entries:
            met = target_met(h)
            ratio = ratio_of(h)
            goal = (
                ""
                if h.get("target") is None
                else f"{'<=' if h.get('better') == 'lower' else '>='} {h['target']:g}x"
            )
            verdict = "" if met is None else "met" if met else "**not met**"
            lines.append(
                f"| [{h['stage']}](#{doc['bench']}) | {h['ours_name']}: {fmt(h['ours'], h['unit'])} "
                f"| {h['floor_name']}: {fmt(h['floor'], h['unit'])} | {ratio:.2f}x | {goal} | {verdict} |"
            )
        lines.append("")
    targets = [(doc, t) for doc in docs for t in doc.get("targets") or []]
    if targets:
        lines += [
            "## Every target",
            "",
            "| bench | target | measured (median) | goal | |",
            "|---|---|---|---|---|",
        ]
        for doc, t in targets:
            verdict = "met" if t.get("met") else "**not met**"
            lines.append(
                f"| [{doc['bench']}](#{doc['bench']}) | {t['name']} | {fmt(t['value'], t.get('unit', ''))} "
                f"| {t['op']} {fmt(t['target'], t.get('unit', ''))} | {verdict} |"
            )
        lines.append("")
    for kind, path in sorted(plots.items()):
        if kind.startswith("series:"):
            lines += [f"![{kind[7:]}]({path.name})", ""]
    for doc in docs:
        lines += bench_section(doc, plots.get(doc["bench"]))
    return "\n".join(lines).rstrip() + "\n"


def bench_section(doc: dict[str, Any], plot: Path | None) -> list[str]:
    lines = [f'<a id="{doc["bench"]}"></a>', f"## {doc.get('title', doc['bench'])}", ""]
    if "rows" not in doc:
        lines += [f"`{doc['_file']}` is not in the results format of `bench/results.py`; its numbers:", ""]
        lines += [f"- {k}: {fmt(float(v))}" for k, v in scalars(doc)] or ["- (none)"]
        return [*lines, ""]
    git = doc.get("git") or {}
    commit = (git.get("commit") or "?")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    lines += [
        f"`{doc.get('command', '')}`: {doc.get('date', '?')}, "
        f"{fmt(doc.get('duration_s'))} s, commit {commit}",
        "",
        f"Machine: {machine_line(doc)}.",
        "",
    ]
    if plot is not None:
        lines += [f"![{doc['bench']}]({plot.name})", ""]
    rows = doc.get("rows") or []
    if rows:
        lines += ["| group | row | role | median | ratio | runs |", "|---|---|---|---|---|---|"]
        for row in rows:
            every = row.get("runs") or []
            runs = " ".join(fmt(r) for r in every[:12])  # a row of per-page figures stays readable
            runs += f" ... ({len(every)} values)" if len(every) > 12 else ""
            ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
            lines.append(
                f"| {row.get('group', '')} | {row['name']} | {row.get('role', '')} "
                f"| {fmt(row['value'], row.get('unit', ''))} | {ratio} | {runs} |"
            )
        lines.append("")
    for target in doc.get("targets") or []:
        verdict = "met" if target.get("met") else "**not met**"
        lines.append(
            f"- target: {target['name']}: {fmt(target['value'], target.get('unit', ''))} "
            f"{target['op']} {fmt(target['target'], target.get('unit', ''))}: {verdict}"
        )
    lines += [f"- {note}" for note in doc.get("notes") or []]
    return [*lines, ""]


def scalars(value: Any, path: str = "", depth: int = 0) -> list[tuple[str, float]]:
    """The numbers of a JSON object, nested objects flattened a few levels deep (lists left out)."""
    if isinstance(value, bool) or depth > 3:
        return []
    if isinstance(value, int | float):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [
            pair
            for k, v in value.items()
            if not str(k).startswith("_")
            for pair in scalars(v, f"{path}.{k}" if path else str(k), depth + 1)
        ]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    directory = args.results or results_dir()
    import matplotlib

    matplotlib.use("Agg")
    docs = load(directory)
    if not docs:
        print(f"no results in {directory}: run `make bench` (or a bench/bench_*.py) first", file=sys.stderr)
        return 1
    headline = plot_headline(docs, directory)
    plots: dict[str, Path] = {}
    for doc in docs:
        path = plot_bench(doc, directory)
        if path is not None:
            plots[doc["bench"]] = path
    for kind, path in plot_series(docs, directory).items():
        plots[f"series:{kind}"] = path
    (directory / "SUMMARY.md").write_text(summary(docs, plots, headline))
    written = ([headline] if headline else []) + list(plots.values()) + [directory / "SUMMARY.md"]
    for path in written:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
