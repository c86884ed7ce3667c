"""The fuzz harness of issue 13 with a longer budget than CI's (tests/test_fuzz.py): a table of outcomes by class.

    python bench/fuzz.py --examples 60 --budget-s 900 --table bench/results/fuzz.md

Five classes of cases (tests/fuzz/strategies.py): `sample` over its option space, `train` over its options (every
accepted run tiny), model folders made corrupt then sampled, image files made corrupt given to --cond-image /
img2img / inpaint, training states made corrupt then resumed. Each case runs the real CLI in a child process
bounded to 3 GiB of address space and 60 s (forked from a warm process; --exec starts `python -m diffusionlab.cli`
afresh instead) and the oracle (tests/fuzz/oracle.py) classifies it: one clear line, success with sound outputs,
traceback, killed, wrong output (exit 0 on bad input, or an output missing, non-finite or all black), unnamed (a
refusal that is not one line naming the value), refused valid; and whether any file that was there changed. The
last columns are the most seconds and peak RSS of a refused case: a bound enforced before the work starts keeps
both near the cost of the cheapest refusal (the baseline, printed below the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # before bench/: tests/fuzz, not this file

from fuzz.harness import (  # noqa: E402
    GROUPS,
    ExecRunner,
    ForkRunner,
    baseline_rss_kb,
    build_fixtures,
    failure_lines,
    fuzz,
    markdown_table,
    summary_rows,
)


def parse() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=40, help="cases drawn per class (at most)")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-time budget of all classes, split evenly")
    p.add_argument("--classes", default=",".join(GROUPS), help=f"comma-separated, of: {', '.join(GROUPS)}")
    p.add_argument("--seed", type=int, default=None, help="draw other cases (default: the fixed, derandomized draw)")
    p.add_argument("--exec", action="store_true", help="start `python -m diffusionlab.cli` per case (slower)")
    p.add_argument("--failures", type=int, default=60, help="failing command lines listed (first N)")
    p.add_argument("--workdir", type=Path, default=None, help="where cases run (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep every case's folder, not only the failing ones")
    p.add_argument("--table", type=Path, default=None, help="also write the report (markdown) here")
    return p.parse_args()


def main() -> int:
    """Run the classes, print the table and the failing cases; exit status 1 if any case failed."""
    args = parse()
    classes = [c for c in args.classes.split(",") if c]
    unknown = sorted(set(classes) - set(GROUPS))
    if unknown or args.examples < 1 or not args.budget_s > 0:
        sys.exit(f"error: classes {unknown} unknown, or --examples / --budget-s not positive.")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffusionlab-fuzz-bench-"))
    started = time.monotonic()
    runner = ForkRunner()  # the fixtures are trained through the warm runner either way
    try:
        fixtures = build_fixtures(workdir / "fixtures", runner)
        if args.exec:
            runner.close()
            runner = ExecRunner()  # type: ignore[assignment]
        baseline = baseline_rss_kb(runner, workdir / "baseline")
        share = args.budget_s / len(classes)
        by_group = {}
        for group in classes:
            t0 = time.monotonic()
            strategy = GROUPS[group](fixtures)
            outcomes = fuzz(group, strategy, runner, workdir / "cases", args.examples, share, args.seed, args.keep)
            by_group[group] = outcomes
            print(f"{group}: {len(outcomes)} cases in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        runner.close()
    everything = [o for outs in by_group.values() for o in outs]
    failed = failure_lines(everything, args.failures)
    mode = "a fresh `python -m diffusionlab.cli` per case" if args.exec else "forked from a warm process"
    report = "\n".join(
        [
            markdown_table(summary_rows(by_group)),
            "",
            f"{len(everything)} cases ({mode}; {'seed ' + str(args.seed) if args.seed is not None else 'derandomized'}"
            f"; bounds 3 GiB address space, 60 s) in {time.monotonic() - started:.0f} s. Baseline peak RSS of a "
            f"refusal: {baseline / 1024:.0f} MiB. Case folders: {workdir}/cases.",
            "",
            f"Failing cases ({sum(o.failed for o in everything)}; first {len(failed)}):" if failed else "No failure.",
            *failed,
        ]
    )
    print(report)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(report + "\n")
    return 1 if any(o.failed for o in everything) else 0


if __name__ == "__main__":
    sys.exit(main())
