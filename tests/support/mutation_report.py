"""The mutation report `make mutate` writes (tests/MUTATION.md) from mutmut's results in mutants/.

Per module: mutants killed, survived, not reached by any selected test, timed out, not run; the
score is killed / (killed + survived + not reached), and the judged score leaves out the survivors
judged equivalent. Then every surviving mutant with the line it changed, marked with its judgement.

Judgements are written by hand in the report itself, between the ``JUDGED_BEGIN`` and
``JUDGED_END`` markers, and kept by every regeneration: a bullet line that names mutants in
backticks and says ``equivalent`` judges them equivalent (say why on that line); any other bullet
names what killed them or what is left. A survivor no line judges is listed as *not judged*.

Run from the repository root after ``mutmut run``:
``python tests/support/mutation_report.py --output tests/MUTATION.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from mutmut.__main__ import get_diff_for_mutant, status_by_exit_code

ROOT = Path("mutants")
JUDGED_BEGIN = "<!-- judged: begin (hand-written; kept by tests/support/mutation_report.py) -->"
JUDGED_END = "<!-- judged: end -->"
_NAME = re.compile(r"`(x[^`\s]*__mutmut_\d+)`")
DEFAULT_JUDGED = """## Judgements

Write one bullet per judgement: the mutants in backticks, then `equivalent: <why>` or what kills
them (`killed by tests/...::test_name`) or why they are left."""


def changed_line(name: str, path: Path) -> str:
    """The first line the mutant adds, for the list of survivors."""
    try:
        diff = get_diff_for_mutant(name, path=path)
    except Exception as exc:  # a report line, not a reason to lose the rest
        return f"(diff unavailable: {type(exc).__name__})"
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else "(no line added)"


def judged_section(previous: str) -> str:
    """The hand-written section of the previous report (or a template)."""
    start, end = previous.find(JUDGED_BEGIN), previous.find(JUDGED_END)
    if start < 0 or end < start:
        return DEFAULT_JUDGED
    return previous[start + len(JUDGED_BEGIN) : end].strip("\n")


def judgements(section: str) -> tuple[set[str], set[str]]:
    """(mutants judged equivalent, mutants named anywhere) in the hand-written section; each bullet
    may span several lines (continuation lines are indented)."""
    equivalent: set[str] = set()
    named: set[str] = set()
    bullets: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            bullets.append(line)
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
    for bullet in bullets:
        names = set(_NAME.findall(bullet))
        named |= names
        if "equivalent" in bullet.lower():
            equivalent |= names
    return equivalent, named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="the report to write (its judgements are kept)")
    args = parser.parse_args()
    metas = sorted(ROOT.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `make mutate`", file=sys.stderr)
        return 1
    previous = args.output.read_text(encoding="utf-8") if args.output and args.output.exists() else ""
    section = judged_section(previous)
    equivalent, named = judgements(section)

    rows: list[tuple[str, collections.Counter[str]]] = []
    survivors: dict[str, list[tuple[str, str]]] = {}
    for meta in metas:
        module = str(meta.relative_to(ROOT))[: -len(".meta")]
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts: collections.Counter[str] = collections.Counter()
        for name, code in sorted(exit_codes.items()):
            status = status_by_exit_code[code]
            short = name.rsplit(".", 1)[-1]
            counts[status] += 1
            if status == "survived":
                counts["equivalent"] += short in equivalent
                survivors.setdefault(module, []).append((short, changed_line(name, Path(module))))
        rows.append((module, counts))

    out: list[str] = [
        "# Mutation testing report (`make mutate`)\n",
        "mutmut 3.7 over the modules in `[tool.mutmut]` (pyproject.toml), each mutant run against the",
        "unit tests that reach its function. Score = killed / (killed + survived + no tests); judged =",
        "the same without the survivors judged equivalent below. *Not run*: mutants the run did not",
        "reach (an interrupted run).\n",
        "| module | mutants | killed | survived | of which equivalent | no tests | timeout | not run "
        "| score | judged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total: collections.Counter[str] = collections.Counter()
    for module, counts in rows:
        total.update(counts)
        out.append(_row(module, counts))
    out.append(_row("**all**", total))
    out += ["", JUDGED_BEGIN, section, JUDGED_END]
    for module, names in survivors.items():
        out.append(f"\n## Surviving mutants: {module} ({len(names)})\n")
        for name, line in names:
            mark = "equivalent" if name in equivalent else "judged" if name in named else "**not judged**"
            out.append(f"- `{name}` ({mark}): `{line[:150]}`")
    text = "\n".join(out) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _row(module: str, counts: collections.Counter[str]) -> str:
    killed, survived, untested = counts["killed"], counts["survived"], counts["no tests"]
    not_run = counts["not checked"]
    mutants = sum(counts.values()) - counts["equivalent"]
    judged = killed + survived + untested
    score = f"{100 * killed / judged:.0f}%" if judged else "-"
    real = judged - counts["equivalent"]
    judged_score = f"{100 * killed / real:.0f}%" if real else "-"
    return (
        f"| {module} | {mutants} | {killed} | {survived} | {counts['equivalent']} | {untested} "
        f"| {counts['timeout']} | {not_run} | {score} | {judged_score} |"
    )


if __name__ == "__main__":
    sys.exit(main())
