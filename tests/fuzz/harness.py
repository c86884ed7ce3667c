"""The fuzz harness: draw cases with hypothesis, run each through the real CLI in a bounded child, classify the
outcome with the oracle, and summarise the outcomes as a markdown table.

    runner = ForkRunner()
    fixtures = build_fixtures(root / "fixtures", runner)
    outcomes = fuzz("sample", GROUPS["sample"](fixtures), runner, root / "cases", max_examples=10)
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.strategies import SearchStrategy

from .fixtures import Fixtures, build_fixtures
from .oracle import KINDS, Case, Outcome, classify, snapshot
from .runner import ExecRunner, ForkRunner, Runner, RunResult
from .strategies import GROUPS

__all__ = [
    "run_case",
    "fuzz",
    "summary_rows",
    "markdown_table",
    "failure_lines",
    "baseline_rss_kb",
    "GROUPS",
    "Fixtures",
    "build_fixtures",
    "ForkRunner",
    "ExecRunner",
    "RunResult",
]

COLUMNS = ("class", "cases", *KINDS, "files changed", "refused: max s", "refused: max RSS MiB")


def run_case(case: Case, runner: Runner, folder: Path) -> Outcome:
    """Prepare ``case`` in the new folder ``folder``, run it, and classify what it did."""
    folder.mkdir(parents=True)
    if case.prepare is not None:
        case.prepare(folder)
    before = snapshot(folder)
    result = runner.run(case.args, folder, case.env)
    return classify(case, result, folder, before)


def _remove(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def fuzz(
    group: str,
    strategy: SearchStrategy[Case],
    runner: Runner,
    workdir: Path,
    max_examples: int,
    budget_s: float | None = None,
    seed: int | None = None,
    keep: bool = False,
) -> list[Outcome]:
    """Run up to ``max_examples`` cases drawn from ``strategy`` (within ``budget_s`` seconds); their outcomes.

    Without ``seed`` the draw is derandomized (the same cases every run, as CI needs); a case's folder is kept
    (``workdir/GROUP-NNN``) when it fails or ``keep`` is set.
    """
    outcomes: list[Outcome] = []
    started, numbers = time.monotonic(), itertools.count()

    def each(case: Case) -> None:
        if budget_s is not None and time.monotonic() - started > budget_s:
            return
        folder = workdir / f"{group}-{next(numbers):03d}"
        outcome = run_case(case, runner, folder)
        outcomes.append(outcome)
        if not keep and not outcome.failed:
            _remove(folder)

    test = settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(given(strategy)(each))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()
    return outcomes


def baseline_rss_kb(runner: Runner, folder: Path) -> int:
    """Peak RSS of the cheapest refused run (an unknown option): what every run costs before it does any work."""
    folder.mkdir(parents=True, exist_ok=True)
    return runner.run(["sample", "--fuzz-no-such-option"], folder).maxrss_kb


def summary_rows(by_group: Mapping[str, Sequence[Outcome]]) -> list[list[str]]:
    """One table row per class (and a total): cases, outcomes by kind, files changed, the cost of refusals."""
    rows = []
    everything = [o for outs in by_group.values() for o in outs]
    for name, outs in [*by_group.items(), ("all", everything)]:
        refused = [o for o in outs if o.refused]
        slowest = max((o.seconds for o in refused), default=0.0)
        largest = max((o.maxrss_kb for o in refused), default=0) / 1024
        counts = [str(sum(o.kind == k for o in outs)) for k in KINDS]
        changed = str(sum(bool(o.changed) for o in outs))
        rows.append([name, str(len(outs)), *counts, changed, f"{slowest:.2f}", f"{largest:.0f}"])
    return rows


def markdown_table(rows: Iterable[Sequence[str]]) -> str:
    """Rows under the COLUMNS header as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def failure_lines(outcomes: Iterable[Outcome], most: int = 50) -> list[str]:
    """The first ``most`` failing outcomes, one line each: kind, command, what was corrupted, why."""
    failed = [o for o in outcomes if o.failed]
    return [f"- [{o.case.group}] {o.line()}" for o in failed[:most]]
