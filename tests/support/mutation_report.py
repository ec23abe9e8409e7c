"""The mutation report `make mutate` writes (tests/MUTATION.md) from mutmut's results in mutants/.

Per module: mutants killed, survived, not reached by any selected test, timed out; the score is
killed / (killed + survived + not reached). Then every surviving mutant with the line it changed,
so that each can be judged: equivalent (say why in the report) or a missing test (write it).

Run from the repository root after ``mutmut run``: ``python tests/support/mutation_report.py``.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from mutmut.__main__ import get_diff_for_mutant, status_by_exit_code

ROOT = Path("mutants")


def changed_line(name: str, path: Path) -> str:
    """The first line the mutant adds, for the list of survivors."""
    try:
        diff = get_diff_for_mutant(name, path=path)
    except Exception as exc:  # a report line, not a reason to lose the rest
        return f"(diff unavailable: {type(exc).__name__})"
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else "(no line added)"


def main() -> int:
    metas = sorted(ROOT.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `make mutate`", file=sys.stderr)
        return 1
    rows: list[tuple[str, collections.Counter[str]]] = []
    survivors: dict[str, list[tuple[str, str]]] = {}
    for meta in metas:
        module = str(meta.relative_to(ROOT))[: -len(".meta")]
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts: collections.Counter[str] = collections.Counter()
        for name, code in sorted(exit_codes.items()):
            status = status_by_exit_code[code]
            counts[status] += 1
            if status == "survived":
                survivors.setdefault(module, []).append((name, changed_line(name, Path(module))))
        rows.append((module, counts))

    print("# Mutation testing report (`make mutate`)\n")
    print("mutmut 3.7 over the modules in `[tool.mutmut]` (pyproject.toml), each mutant run against the")
    print("unit tests that reach its function. Score = killed / (killed + survived + no tests).\n")
    print("| module | mutants | killed | survived | no tests | timeout | other | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total: collections.Counter[str] = collections.Counter()
    for module, counts in rows:
        total.update(counts)
        print(_row(module, counts))
    print(_row("**all**", total))
    for module, names in survivors.items():
        print(f"\n## Surviving mutants: {module} ({len(names)})\n")
        for name, line in names:
            print(f"- `{name.rsplit('.', 1)[-1]}`: `{line[:150]}`")
    return 0


def _row(module: str, counts: collections.Counter[str]) -> str:
    killed, survived, untested = counts["killed"], counts["survived"], counts["no tests"]
    other = sum(counts.values()) - killed - survived - untested - counts["timeout"]
    judged = killed + survived + untested
    score = f"{100 * killed / judged:.0f}%" if judged else "-"
    return (
        f"| {module} | {sum(counts.values())} | {killed} | {survived} | {untested} | {counts['timeout']} "
        f"| {other} | {score} |"
    )


if __name__ == "__main__":
    sys.exit(main())
