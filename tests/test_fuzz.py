"""The fuzz harness (issue 13) with a short budget: every class of case, and the oracle shown able to fail.

Each class draws a fixed (derandomized) set of cases and runs the real CLI on each in a child process bounded to
3 GiB of address space and 60 s; the test fails on any traceback, killed run, wrong output, refusal that does not
name the value, refusal of a valid input, or changed file, and lists the command lines. ``bench/fuzz.py`` runs the
same harness with a longer budget.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fuzz.fixtures import Fixtures, build_fixtures, train_args
from fuzz.harness import GROUPS, fuzz, run_case
from fuzz.oracle import (
    KILLED,
    ONE_LINE,
    REFUSED_VALID,
    SUCCESS,
    TRACEBACK,
    UNNAMED,
    WRONG_OUTPUT,
    Case,
    Output,
    check_output,
)
from fuzz.runner import ExecRunner, ForkRunner

# cases per class: the cheap classes (refusals and 2-step samples) get more than the ones that train
EXAMPLES = {"sample": 30, "model": 30, "image": 30, "train": 8, "resume": 8}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ForkRunner, Fixtures, Path]]:
    """A warm runner, the tiny fixture models, and a folder for the cases."""
    root = tmp_path_factory.mktemp("fuzz")
    runner = ForkRunner()
    try:
        yield runner, build_fixtures(root / "fixtures", runner), root / "cases"
    finally:
        runner.close()


@pytest.mark.parametrize("group", list(EXAMPLES))
def test_fuzz_class_has_no_failure(harness: tuple[ForkRunner, Fixtures, Path], group: str) -> None:
    runner, fixtures, cases = harness
    outcomes = fuzz(group, GROUPS[group](fixtures), runner, cases, max_examples=EXAMPLES[group])
    assert len(outcomes) >= EXAMPLES[group] // 2, len(outcomes)
    failed = [o for o in outcomes if o.failed]
    report = "\n".join(f"{o.line()}  [folder {o.folder}]" for o in failed)
    assert not failed, f"{len(failed)} of {len(outcomes)} {group} cases failed:\n{report}"


# ---------------------------------------------------------------- the oracle can fail


def fake(code: str, timeout: float = 20) -> ExecRunner:
    """A stand-in for the CLI: Python ``code`` run in the case's folder with the CLI's arguments in sys.argv."""
    return ExecRunner(command=[sys.executable, "-c", code], timeout=timeout)


def case(expect: str = "bad", names: tuple[str, ...] = ("--steps",), **kw: object) -> Case:
    return Case("self-test", ["sample", "model", "--steps", "0"], names, expect, **kw)  # type: ignore[arg-type]


def test_a_traceback_is_a_traceback(tmp_path: Path) -> None:
    outcome = run_case(case(), fake("raise RuntimeError('steps=0 boom')"), tmp_path / "c")
    assert (outcome.kind, outcome.rc) == (TRACEBACK, 1)
    assert "RuntimeError: steps=0 boom" in outcome.detail


def test_an_internal_error_exit_is_a_traceback(tmp_path: Path) -> None:
    code = "import sys; print('error: internal error (ZeroDivisionError: --steps)', file=sys.stderr); sys.exit(70)"
    assert run_case(case(), fake(code), tmp_path / "c").kind == TRACEBACK


def test_an_error_line_must_name_the_value(tmp_path: Path) -> None:
    unnamed = "import sys; print('error: range() arg 3 must not be zero', file=sys.stderr); sys.exit(2)"
    named = "import sys; print('warning: x', file=sys.stderr); print('error: --steps=0 must be at least 1', file=sys.stderr); sys.exit(2)"  # noqa: E501
    two = "import sys; print('error: --steps=0 bad\\nmore', file=sys.stderr); sys.exit(2)"
    assert run_case(case(), fake(unnamed), tmp_path / "a").kind == UNNAMED
    assert run_case(case(), fake(named), tmp_path / "b").kind == ONE_LINE
    assert run_case(case(), fake(two), tmp_path / "c").kind == UNNAMED
    assert run_case(case(expect="ok"), fake(named), tmp_path / "d").kind == REFUSED_VALID


def test_exit_0_on_an_input_to_refuse_is_a_wrong_output(tmp_path: Path) -> None:
    assert run_case(case(), fake("pass"), tmp_path / "a").kind == WRONG_OUTPUT
    silent = run_case(case(expect="warn"), fake("pass"), tmp_path / "b")
    warned = run_case(
        case(expect="warn"), fake("import sys; print('warning: fell back', file=sys.stderr)"), tmp_path / "c"
    )
    assert (silent.kind, warned.kind) == (WRONG_OUTPUT, SUCCESS)


def test_a_missing_or_black_output_is_a_wrong_output(tmp_path: Path) -> None:
    from PIL import Image

    black = "from PIL import Image; Image.new('L', (8, 8)).save('out.png')"
    grey = "from PIL import Image; Image.new('L', (8, 8), 128).save('out.png')"
    wanted = (Output("out.png", "png"),)
    assert run_case(case("ok", outputs=wanted), fake("pass"), tmp_path / "a").kind == WRONG_OUTPUT
    assert run_case(case("ok", outputs=wanted), fake(black), tmp_path / "b").kind == WRONG_OUTPUT
    assert run_case(case("ok", outputs=wanted), fake(grey), tmp_path / "c").kind == SUCCESS
    mean = (Output("out.png", "png", mean=0.9, tol=0.1),)
    assert run_case(case("ok", outputs=mean), fake(grey), tmp_path / "d").kind == WRONG_OUTPUT
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    assert check_output(tmp_path, Output("x.png", "png", mean=128 / 255, tol=0.01)) == ""


def test_a_black_sample_in_a_real_grid_is_found(tmp_path: Path) -> None:
    """The grid geometry of the oracle is the CLI's: 8x8 samples at scale 2 (cells of 16), padding 2, labels."""
    import torch

    from diffusionlab.images import save_grid

    torch.manual_seed(0)
    images = torch.rand(10, 1, 8, 8) * 0.8 + 0.1
    save_grid(images, tmp_path / "ok.png", nrow=4, scale=2, row_labels=["cat", "dog", "owl"])
    images[6] = 0.0
    save_grid(images, tmp_path / "black.png", nrow=4, scale=2, row_labels=["cat", "dog", "owl"])
    images[6] = float("nan")
    save_grid(images, tmp_path / "nan.png", nrow=4, scale=2)
    assert check_output(tmp_path, Output("ok.png", "png", 16)) == ""
    assert "all-black 16x16 sample" in check_output(tmp_path, Output("black.png", "png", 16))
    assert "all-black 16x16 sample" in check_output(tmp_path, Output("nan.png", "png", 16))


def test_non_finite_weights_are_a_wrong_output(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "ok.safetensors"))
    save_file({"w": np.array([1, np.nan], np.float32)}, str(tmp_path / "nan.safetensors"))
    (tmp_path / "r.json").write_text('{"fid": NaN}')
    assert check_output(tmp_path, Output("ok.safetensors", "weights")) == ""
    assert "non-finite" in check_output(tmp_path, Output("nan.safetensors", "weights"))
    assert "non-finite" in check_output(tmp_path, Output("r.json", "json"))


def test_a_changed_file_is_caught_even_on_a_clear_refusal(tmp_path: Path) -> None:
    def prepare(folder: Path) -> None:
        (folder / "keep.txt").write_text("mine")
        (folder / "replace.png").write_text("old")

    code = (
        "import sys; open('keep.txt', 'w').write('lost'); print('error: --steps=0 bad', file=sys.stderr); sys.exit(2)"
    )
    outcome = run_case(case(prepare=prepare), fake(code), tmp_path / "a")
    assert (outcome.kind, outcome.changed, outcome.failed) == (ONE_LINE, ["keep.txt"], True)
    # a successful run may replace what it was asked to write, and only that
    code = "open('replace.png', 'w').write('new'); open('keep.txt', 'w').write('lost')"
    outcome = run_case(case("ok", prepare=prepare, may_change=("replace.png",)), fake(code), tmp_path / "b")
    assert outcome.changed == ["keep.txt"]
    # any run may remove a stale leftover it was told of, and only remove it
    code = "import os, sys; os.remove('replace.png'); os.remove('keep.txt'); sys.exit(2)"
    outcome = run_case(case(prepare=prepare, leftovers=("replace.png",)), fake(code), tmp_path / "c")
    assert outcome.changed == ["keep.txt"]
    code = "import sys; open('replace.png', 'w').write('new'); sys.exit(2)"
    outcome = run_case(case(prepare=prepare, leftovers=("replace.png",)), fake(code), tmp_path / "d")
    assert outcome.changed == ["replace.png"]


def test_a_pickled_payload_that_ran_is_caught(tmp_path: Path) -> None:
    code = "import os, sys; os.mkdir('pwned'); print('error: --steps bad', file=sys.stderr); sys.exit(2)"
    assert run_case(case(forbidden=("pwned",)), fake(code), tmp_path / "a").kind == WRONG_OUTPUT


def test_the_time_bound_kills_a_run(tmp_path: Path, harness: tuple[ForkRunner, Fixtures, Path]) -> None:
    runner = harness[0]
    outcome = run_case(case(), fake("import time; time.sleep(60)", timeout=1), tmp_path / "a")
    assert outcome.kind == KILLED and outcome.seconds < 10
    (tmp_path / "b").mkdir()
    result = runner.run(train_args("run", **{"--steps": "100000"}), tmp_path / "b", timeout=1.0)
    assert result.timed_out and result.rc == -9 and result.seconds < 10


def test_the_memory_bound_stops_a_run(tmp_path: Path) -> None:
    outcome = run_case(case(), fake("x = bytearray(4 * 2**30)"), tmp_path / "a")
    assert outcome.kind == KILLED and "MemoryError" in outcome.detail
    # the allocation was refused, not made: a child's peak RSS starts from its parent's at the fork (Linux keeps
    # it across exec), so compare with a child that allocates nothing, forked from the same parent
    baseline = run_case(case(), fake("pass"), tmp_path / "b").maxrss_kb
    assert outcome.maxrss_kb < baseline + 2**19, (outcome.maxrss_kb, baseline)


def test_a_forked_run_is_the_console_script(tmp_path: Path, harness: tuple[ForkRunner, Fixtures, Path]) -> None:
    runner, fixtures, _ = harness
    args = ["sample", str(fixtures.model), "--nrow", "0", "--no-progress"]
    forked, executed = runner.run(args, tmp_path), ExecRunner().run(args, tmp_path)
    assert (forked.rc, forked.stderr, forked.stdout) == (executed.rc, executed.stderr, executed.stdout)
    assert forked.rc == 2 and forked.stderr.startswith("error: ")
