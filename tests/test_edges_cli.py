"""The CLI's entry point and the resource bounds of a sampling call: every bad input is one `error:` line, exit 2.

These run ``diffusionlab.cli.main`` (the console script) in this process, so a usage error of click's (a flag of
the wrong type, an unknown flag) is checked as users see it, not as ``CliRunner`` shows it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from diffusionlab import cli
from diffusionlab.limits import check_limit, limits
from diffusionlab.pipeline import Pipeline
from diffusionlab.sampling.request import SampleRequest

MODEL = Path(__file__).parent / "fixtures" / "format1-image"  # a tiny class-conditional 8x8 model


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``diffusionlab ARGS...`` through the console script's entry point; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["diffusionlab", *map(str, args)])
    code = cli.main()
    return code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--steps", "abc"], "'--steps'"),
        (["--nosuch", "1"], "--nosuch"),
        (["--nrow", "0"], "--nrow=0"),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--steps", "1000000000"], "--steps=1000000000"),
        (["-n", "1000000000"], "--num-samples=1000000000"),
        (["--per-class", "100000000"], "--per-class=100000000"),
        (["--cond-image", "README.md"], "--cond-image=README.md"),
        (["--labels", ""], "--labels=''"),
        (["--labels", " , "], "--labels=' , '"),
        (["--per-class", "1", "--labels", "1"], "--per-class=1"),
        (["--per-class", "1", "-n", "3"], "--per-class=1"),
    ],
)
def test_bad_sample_options_are_one_line_naming_the_flag(monkeypatch, capsys, tmp_path, args, named) -> None:
    out = tmp_path / "x.png"
    code, err = run_main(monkeypatch, capsys, "sample", MODEL, "--out", out, "--no-progress", *args)
    assert code == 2
    assert named in one_error_line(err)
    assert not out.exists()


def test_out_naming_a_folder_is_refused_before_any_work(monkeypatch, capsys, tmp_path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_main(monkeypatch, capsys, "sample", MODEL, "--out", tmp_path, "--steps", "100000")
    assert code == 2
    assert f"--out={tmp_path} is a folder" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_bug_is_one_line_with_exit_70_and_the_traceback_on_request(monkeypatch, capsys) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Pipeline, "load", broken)
    monkeypatch.delenv("DIFFUSIONLAB_TRACEBACK", raising=False)
    code, err = run_main(monkeypatch, capsys, "sample", MODEL)
    assert code == 70
    assert "internal error (ZeroDivisionError: division by zero)" in one_error_line(err)
    monkeypatch.setenv("DIFFUSIONLAB_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        run_main(monkeypatch, capsys, "sample", MODEL)


def test_a_library_warning_is_one_warning_line(monkeypatch, capsys, tmp_path) -> None:
    import warnings

    real_load = Pipeline.load

    def load_and_warn(folder, device="cpu"):  # type: ignore[no-untyped-def]
        warnings.warn("the model has no ema.safetensors; sampling uses the raw weights", UserWarning, stacklevel=1)
        return real_load(folder, device)

    monkeypatch.setattr(Pipeline, "load", load_and_warn)
    code, err = run_main(monkeypatch, capsys, "sample", MODEL, "-n", 2, "--steps", 2, "--no-progress", "--out",
                         tmp_path / "a.png")  # fmt: skip
    assert code == 0
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "warning: the model has no ema.safetensors; sampling uses the raw weights"
    ]


def test_limits_default_and_environment_override(monkeypatch) -> None:
    monkeypatch.delenv("DIFFUSIONLAB_MAX_STEPS", raising=False)
    assert limits().max_steps == 10_000
    check_limit("steps", 10_000, "max_steps")
    with pytest.raises(ValueError, match=r"steps=10001 is more than the limit of 10,000; set DIFFUSIONLAB_MAX_STEPS"):
        check_limit("steps", 10_001, "max_steps")
    monkeypatch.setenv("DIFFUSIONLAB_MAX_STEPS", "20000")
    check_limit("steps", 20_000, "max_steps")
    assert SampleRequest.from_settings(steps=20_000).sampler.steps == 20_000
    monkeypatch.setenv("DIFFUSIONLAB_MAX_STEPS", "-5")
    with pytest.raises(ValueError, match=r"DIFFUSIONLAB_MAX_STEPS='-5' must be a positive whole number"):
        limits()


def test_sample_count_and_output_memory_are_bounded_before_work(monkeypatch) -> None:
    pipe = Pipeline.load(MODEL)
    calls = []
    monkeypatch.setattr(pipe, "guided_denoiser", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"num_samples=100001 is more than the limit of 100,000"):
        pipe.sample(100_001)
    numel = math.prod(pipe.sample_shape)
    monkeypatch.setenv("DIFFUSIONLAB_MAX_OUTPUT_BYTES", str(10 * numel * 4))
    with pytest.raises(ValueError, match=r"num_samples=11 samples of 64 values need"):
        pipe.sample(11)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        pipe.sample(2, batch_size=0)
    assert calls == []  # every refusal came before the denoiser was built


def test_non_finite_samples_are_an_error_not_black_images() -> None:
    pipe = Pipeline.load(MODEL)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"2 of 2 samples hold NaN or infinite values"):
        pipe.sample(2, steps=2, use_ema=False)
    assert torch.isfinite(Pipeline.load(MODEL).sample(2, steps=2)).all()


def test_docs_list_every_limit() -> None:
    from dataclasses import fields

    from diffusionlab.limits import Limits

    table = (Path(__file__).parents[1] / "docs" / "limits.md").read_text()
    rows = {ln.split("|")[1].strip(" `"): ln.split("|")[2:4] for ln in table.splitlines() if ln.startswith("| `")}
    assert set(rows) == {f.name for f in fields(Limits)}
    for f in fields(Limits):
        default, env = (c.strip(" `") for c in rows[f.name])
        assert int(default) == f.default and env == Limits().env_name(f.name), f.name


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--num-samples", "1000000000"], "--num-samples=1000000000"),
        (["--batch-size", "1000000"], "--batch-size=1000000"),
    ],
)
def test_evaluate_counts_are_bounded(monkeypatch, capsys, args, named) -> None:
    code, err = run_main(monkeypatch, capsys, "evaluate", MODEL, *args)
    assert code == 2
    assert named in one_error_line(err)


@pytest.mark.parametrize("label", ["3", "-1", "100000000000000000000000"])
def test_labels_outside_the_classes_name_the_flag(monkeypatch, capsys, label) -> None:
    code, err = run_main(monkeypatch, capsys, "sample", MODEL, "--labels", label, "--no-progress")
    assert code == 2
    assert f"--labels={label}: expected class indices 0..2 of this model" in one_error_line(err)


def test_an_unwritable_out_names_the_out_path_not_a_temporary(monkeypatch, capsys) -> None:
    code, err = run_main(monkeypatch, capsys, "sample", MODEL, "-n", 1, "--steps", 1, "--no-progress", "--out",
                         "/sys/diffusionlab-out.png")  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: /sys/diffusionlab-out.png: ") and ".tmp" not in line, line


def test_a_config_nested_too_deeply_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    import shutil

    shutil.copytree(MODEL, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err = run_main(monkeypatch, capsys, "sample", tmp_path / "m", "--out", tmp_path / "o.png")
    assert code == 2
    assert "config.json is nested too deeply to be a config" in one_error_line(err)


def test_a_task_whose_result_is_not_finite_is_an_error_not_a_black_image() -> None:
    from diffusionlab.tasks import img2img

    pipe = Pipeline.load(MODEL)
    image = torch.full((1, 1, 8, 8), 0.5)
    assert torch.isfinite(img2img(pipe, image, 0.5, steps=2, labels=[0])).all()
    with torch.no_grad():
        for p in [*pipe.network.parameters(), *pipe.ema.parameters()]:
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"1 of 1 samples hold NaN or infinite values"):
        img2img(pipe, image, 0.5, steps=2, labels=[0])
