"""Hypothesis strategies, one per class of fuzz case: each draws a ``Case`` (pure data plus a ``prepare`` that
writes its inputs into the case's folder).

1. ``sample_cases``: ``sample`` over its option space; 2. ``train_cases``: ``train``'s options (every accepted
run tiny); 3. ``model_cases``: model folders made corrupt, then ``sample``; 4. ``image_cases``: image files made
corrupt, as ``--cond-image``, ``img2img --image`` and ``inpaint --image/--mask``; 5. ``resume_cases``: training
states made corrupt, then ``train --resume``.

Values mix valid ones with edges: 0, -1, 10^9, 2^70, NaN and infinities, wrong types, empty text, unicode.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from . import fixtures as fx
from .oracle import Case, Output

__all__ = ["GROUPS", "Choice", "sample_cases", "train_cases", "model_cases", "image_cases", "resume_cases"]

Prep = Callable[[Path], None]
HUGE, HUGER = str(10**9), str(2**70)
INT_JUNK = ("nan", "inf", "abc", "1.5", "", "1e3")
FLOAT_JUNK = ("nan", "inf", "-inf", "NaN", "1e309", "abc", "")
UNICODE = "ünï ✓"
SAMPLE_CELL = 16  # side of one sample in the PNG grids of the 8x8 fixture models (drawn at scale 2)
READONLY_ROOT = os.geteuid() == 0  # root writes through mode 0555: use a folder no one can write into instead


@dataclass(frozen=True)
class Choice:
    """One option given one value: the arguments it adds, what the CLI must do with it, the fragments its error
    must name, and what it needs prepared or changes in the outputs."""

    option: str
    args: tuple[str, ...]
    expect: str
    names: tuple[str, ...] = ()
    prepare: Prep | None = field(default=None, compare=False)
    out: str | None = None  # the run's main output goes here instead
    outputs: tuple[Output, ...] = ()
    may_change: tuple[str, ...] = ()
    group: str = ""  # choices of one group act together: two of them make a case "either"
    note: str = ""


def flag_names(flag: str) -> tuple[str, ...]:
    """The ways an error may name an option: ``--batch-size``, ``batch_size``, ``batch-size``; a one-word flag
    also as the word (``--prompt``: "a prompt was given") where it is 4 letters or more."""
    bare = flag.lstrip("-")
    if "-" in bare or "_" in bare:
        return (flag, bare.replace("-", "_"), bare)
    return (flag, bare) if len(bare) >= 4 else (flag,)


def value_names(value: str) -> tuple[str, ...]:
    """A value counts as named only where its text is distinctive (3 characters or more)."""
    return (value,) if len(value.strip()) >= 3 else ()


def options(
    flag: str,
    ok: Sequence[str] = (),
    bad: Sequence[str] = (),
    either: Sequence[str] = (),
    group: str = "",
    short: str | None = None,
) -> list[Choice]:
    """The choices of one simple option: each value with its expectation."""
    names = flag_names(flag)
    spelled = short or flag
    return [
        Choice(flag, (spelled, v), expect, names + value_names(v), group=group)
        for expect, values in (("ok", ok), ("bad", bad), ("either", either))
        for v in values
    ]


def combine(expects: Sequence[str]) -> str:
    """What a case with these choices must do: refused if any is bad, else warned, else either, else accepted."""
    for e in ("bad", "warn", "either"):
        if e in expects:
            return e
    return "ok"


def _prep_all(preps: Sequence[Prep | None]) -> Prep:
    def prepare(folder: Path) -> None:
        for p in preps:
            if p is not None:
                p(folder)

    return prepare


def _write_file(name: str, data: bytes = b"keep me\n") -> Prep:
    def prepare(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    return prepare


def _make_dir(name: str, keep: str | None = None) -> Prep:
    def prepare(folder: Path) -> None:
        (folder / name).mkdir(parents=True, exist_ok=True)
        if keep:
            (folder / name / keep).write_bytes(b"keep me\n")

    return prepare


def _readonly(name: str) -> Prep:
    def prepare(folder: Path) -> None:
        (folder / name).mkdir()
        (folder / name).chmod(0o555)

    return prepare


def _image(kind: str, size: int, name: str, bomb: Path | None = None) -> Prep:
    def prepare(folder: Path) -> None:
        fx.make_image(folder, kind, size, size, name, bomb)

    return prepare


def out_choices(default_cell: int) -> list[Choice]:
    """``--out`` of a command that writes one PNG: plain, unicode, replacing a file, and paths it cannot write."""
    names = flag_names("--out")
    ro, ro_prep = ("/sys/fuzz-out.png", None) if READONLY_ROOT else ("ro/out.png", _readonly("ro"))

    def png(path: str, expect: str, **kw: Any) -> Choice:
        outputs = (Output(path, "png", default_cell),) if expect != "bad" else ()
        return Choice("--out", ("--out", path), expect, names + value_names(path), out=path, outputs=outputs, **kw)

    old = fx.valid_png_bytes(8, 8)
    return [
        png("out.png", "ok"),
        png(f"{UNICODE}.png", "ok"),
        png("existing.png", "ok", prepare=_write_file("existing.png", old), may_change=("existing.png",)),
        png("out", "either"),
        png("out.jpg", "either"),
        png("new/sub/out.png", "either"),
        png("", "bad"),
        png("adir", "bad", prepare=_make_dir("adir", "keep.txt")),
        png("afile.txt/out.png", "bad", prepare=_write_file("afile.txt")),
        png(ro, "bad", prepare=ro_prep, note="a folder it cannot write into"),
    ]


# ---------------------------------------------------------------- 1. sample


def _cond_image_choices(fixtures: fx.Fixtures) -> list[Choice]:
    names = flag_names("--cond-image")
    return [
        Choice("--cond-image", ("--cond-image", "valid.png"), "bad", names, _image("valid", 8, "valid.png")),
        Choice(
            "--cond-image", ("--cond-image", "bomb.png"), "bad", names, _image("bomb", 8, "bomb.png", fixtures.bomb)
        ),
        Choice("--cond-image", ("--cond-image", "missing.png"), "bad", names + ("missing.png",)),
    ]


def _out_dir_choices() -> list[Choice]:
    names = flag_names("--out-dir")
    return [
        Choice("--out-dir", ("--out-dir", "imgs"), "ok", names, outputs=(Output("imgs", "folder"),)),
        Choice("--out-dir", ("--out-dir", "empty"), "either", names + ("empty",), _make_dir("empty")),
        Choice("--out-dir", ("--out-dir", "full"), "bad", names + ("full",), _make_dir("full", "x.png")),
        Choice("--out-dir", ("--out-dir", "afile.txt"), "bad", names + ("afile.txt",), _write_file("afile.txt")),
    ]


def sample_option_table(fixtures: fx.Fixtures) -> list[list[Choice]]:
    """Every option of ``sample`` the fuzzer varies, each as its list of choices."""
    from diffusionlab.sampling import SAMPLERS, SPACINGS

    return [
        options("--steps", ["1", "2", "3"], ["0", "-1", HUGE, HUGER, *INT_JUNK], ["٣"]),
        options("--num-samples", ["1", "2", "5"], ["0", "-1", HUGE, HUGER, "abc", ""], group="count", short="-n"),
        options("--batch-size", ["1", "3", "1000"], ["0", "-1", HUGER, "x"], [HUGE]),
        options("--per-class", ["1", "2"], ["0", "-1", HUGE, HUGER], group="count"),
        options("--nrow", ["1", "4", "100"], ["0", "-1", "abc"], [HUGE, HUGER]),
        options("--guidance", ["0", "1", "3"], FLOAT_JUNK, ["-1"]),
        options("--seed", ["0", "1", "123456"], ["abc", "nan", ""], ["-1", HUGE, HUGER]),
        options("--sampler", list(SAMPLERS), ["nope", "", UNICODE], ["DDIM"], group="sampler"),
        options("--spacing", list(SPACINGS), ["nope", ""]),
        options("--labels", ["0", "1,2", "3,3,7"], ["10", "-1", "a", "1,,x", HUGER, "1.5"], ["", " ", "٣"], "count"),
        options("--eta", ["0", "0.5", "1"], ["nan", "inf", "-1", "2"], group="sampler"),
        options("--thresholding", ["clip", "dynamic", "none"], ["nope", ""]),
        options("--guidance-rescale", ["0", "0.5"], ["nan", "-1", "2", "inf"]),
        options("--guidance-interval", ["0.3,5"], ["nan,1", "1", "a,b", "inf,nan"], ["5,0.3"]),
        options("--mixed-precision", ["no"], ["fp8", ""], ["bf16"]),
        options("--prompt", [], [], ["a cat", ""]),
        out_choices(SAMPLE_CELL),
        _out_dir_choices(),
        _cond_image_choices(fixtures),
    ]


def build_case(
    group: str,
    base: list[str],
    chosen: Sequence[Choice],
    prepare: Prep,
    default_out: str | None,
    outputs: Callable[[str | None, Sequence[Choice]], tuple[Output, ...]],
    may_change: tuple[str, ...] = (),
) -> Case:
    """A case from a command's base arguments and the choices drawn for it."""
    groups = [c.group for c in chosen if c.group]
    expects = [c.expect for c in chosen]
    if len(groups) != len(set(groups)):  # options that act together: their combination may be refused
        expects = [e if e != "ok" else "either" for e in expects]
    expect = combine(expects)
    questionable = [c for c, e in zip(chosen, expects, strict=True) if e != "ok"] or list(chosen)
    names = tuple(n for c in questionable for n in c.names)
    out = next((c.out for c in chosen if c.out is not None), default_out)
    args = base + [a for c in chosen for a in c.args]
    note = "; ".join(f"{c.option} {c.expect}" + (f" ({c.note})" if c.note else "") for c in chosen)
    return Case(
        group,
        args,
        names,
        expect,
        note=note,
        outputs=outputs(out, chosen) if expect != "bad" else (),
        may_change=may_change + tuple(p for c in chosen for p in c.may_change),
        prepare=_prep_all([prepare, *(c.prepare for c in chosen)]),
    )


def _draw_choices(table: list[list[Choice]], most: int) -> st.SearchStrategy[list[Choice]]:
    """1 to ``most`` different options of ``table``, each with one of its choices."""
    indices = st.lists(st.integers(0, len(table) - 1), min_size=1, max_size=most, unique=True)
    return indices.flatmap(lambda ix: st.tuples(*(st.sampled_from(table[i]) for i in ix)).map(list))


def sample_cases(fixtures: fx.Fixtures) -> st.SearchStrategy[Case]:
    """``diffusionlab sample model ...`` with 1-3 options drawn from its option space."""
    table = sample_option_table(fixtures)

    def outputs(out: str | None, chosen: Sequence[Choice]) -> tuple[Output, ...]:
        given = tuple(o for c in chosen for o in c.outputs)
        main = () if any(c.out for c in chosen) else (Output(out or "samples.png", "png", SAMPLE_CELL),)
        return main + given

    def make(chosen: list[Choice]) -> Case:
        prep = _copy_model(fixtures.model)
        return build_case("sample", ["sample", "model", "--no-progress"], chosen, prep, "samples.png", outputs)

    return _draw_choices(table, 3).map(make)


def _copy_model(src: Path, name: str = "model") -> Prep:
    def prepare(folder: Path) -> None:
        fx.copy_model(src, folder / name)

    return prepare


def _copy_run(src: Path, name: str = "run") -> Prep:
    def prepare(folder: Path) -> None:
        fx.copy_run(src, folder / name)

    return prepare


# ---------------------------------------------------------------- 2. train


def _train_outputs(out: str | None, chosen: Sequence[Choice]) -> tuple[Output, ...]:
    run = out or "run"
    size = next((c.args[1] for c in chosen if c.option == "--image-size"), fx.TRAIN_FLAGS["--image-size"])
    points = any(c.option == "--dataset" and c.args[1].startswith("toy:") for c in chosen)
    cell = 0 if points else 2 * int(size)
    return (
        Output(f"{run}/config.json", "json"),
        Output(f"{run}/model.safetensors", "weights"),
        Output(f"{run}/ema.safetensors", "weights"),
        Output(f"{run}/samples.png", "png", cell),
    )


def _image_folder(name: str, kinds: Sequence[str], bomb: Path | None = None) -> Prep:
    def prepare(folder: Path) -> None:
        (folder / name).mkdir()
        for i, kind in enumerate(kinds):
            fx.make_image(folder / name, kind, 8, 8, f"{i}.png", bomb)

    return prepare


def _dataset_choices(fixtures: fx.Fixtures) -> list[Choice]:
    names = flag_names("--dataset")

    def ds(value: str, expect: str, prepare: Prep | None = None, extra: tuple[str, ...] = ()) -> Choice:
        where = value_names(value.partition(":")[2]) if ":" in value else ()  # mnist:FOLDER names FOLDER
        return Choice("--dataset", ("--dataset", value), expect, names + value_names(value) + where + extra, prepare)

    return [
        ds("digits", "ok"),
        ds("toy:moons", "either"),
        ds("imgs", "either", _image_folder("imgs", ["valid"] * 4)),
        ds("sixteen", "either", _image_folder("sixteen", ["16-bit"] * 4)),
        ds("nope", "bad"),
        ds("mnist:missing", "bad"),
        ds("cifar10:missing", "bad"),
        ds("toy:nope", "bad"),
        ds("", "bad"),
        ds("afile.txt", "bad", _write_file("afile.txt")),
        ds("emptydir", "bad", _make_dir("emptydir")),
        ds("corrupt", "bad", _image_folder("corrupt", ["valid", "truncated", "valid"]), ("1.png",)),
        ds("bombs", "bad", _image_folder("bombs", ["valid", "bomb", "valid"], fixtures.bomb), ("1.png",)),
    ]


def _train_out_choices(fixtures: fx.Fixtures) -> list[Choice]:
    names = flag_names("--out")
    ro = "/sys/fuzz-run" if READONLY_ROOT else "ro/run"

    def out(value: str, expect: str, prepare: Prep | None = None, extra: tuple[str, ...] = ()) -> Choice:
        return Choice("--out", ("--out", value), expect, names + value_names(value) + extra, prepare, out=value)

    return [
        out("run2", "ok"),
        out(f"{UNICODE} run", "ok"),
        out("afile.txt", "bad", _write_file("afile.txt")),
        out("old", "bad", _copy_run(fixtures.model, "old"), ("--resume", "resume")),
        out(ro, "bad", None if READONLY_ROOT else _readonly("ro")),
    ]


def _superres_choices() -> list[Choice]:
    names = flag_names("--image-condition") + flag_names("--superres-factor")

    def pair(cond: str, factor: str, expect: str) -> Choice:
        args = ("--image-condition", cond, "--superres-factor", factor)
        return Choice("--image-condition", args, expect, names + value_names(cond))

    return [pair("superres", "2", "ok"), pair("superres", "3", "bad"), pair("superres", "0", "bad")] + [
        pair("nope", "2", "bad"),
        pair("colourise", "2", "bad"),  # the digits are grayscale: nothing to colourise
    ]


def train_option_table(fixtures: fx.Fixtures) -> list[list[Choice]]:
    """Every option of ``train`` the fuzzer varies, each as its list of choices (accepted runs stay tiny)."""
    return [
        options("--image-size", ["8"], ["0", "-1", "100000", HUGER, "nan", "abc", ""], ["4", "12", "16"]),
        options("--batch-size", ["2", "4"], ["0", "-1", HUGE, HUGER], ["1", "10000"]),
        options("--steps", ["1", "2", "3"], ["0", "-1", HUGE, HUGER, "nan", "1.5"]),
        options("--checkpoint-every", ["0", "1", "2"], ["-1", "-5"], [HUGE]),
        options("--lr", ["0.001", "0.01"], ["nan", "inf", "-1", "abc"], ["0", "1000"]),
        options("--channels", ["1"], ["0", "2", "5", "-1"], ["3"]),
        options("--grad-accumulation", ["1", "2"], ["0", "-1", "100"]),
        options("--warmup-steps", ["0", "1"], ["-1"]),
        options("--ema-decay", ["0.9"], ["nan", "2", "-1"], ["0", "1"]),
        options("--label-dropout", ["0", "0.5"], ["nan", "1.5", "-0.1"], ["1"]),
        options("--keep-checkpoints", ["0", "1"], ["-1"]),
        options("--log-every", ["0", "1"], ["-1"]),
        options("--sample-every", ["0", "1"], ["-1"]),
        options("--minutes", ["10"], ["nan", "-1"], ["0", "inf"]),
        options("--model-size", ["tiny"], ["huge", ""]),
        options("--process", ["ddpm", "edm", "flow"], ["nope", ""]),
        options("--parameterisation", ["eps", "x0", "v"], ["nope"], ["edm", "velocity"]),
        options("--mixed-precision", ["no"], ["fp8", ""], ["bf16", "fp16"]),
        options("--seed", ["0", "7"], ["abc"], ["-1", HUGER]),
        options("--eval-every", ["0"], ["-1"]),
        _dataset_choices(fixtures),
        _train_out_choices(fixtures),
        _superres_choices(),
    ]


def train_cases(fixtures: fx.Fixtures) -> st.SearchStrategy[Case]:
    """``diffusionlab train`` (a 2-step tiny run) with 1-2 of its options drawn."""
    table = train_option_table(fixtures)

    def make(chosen: list[Choice]) -> Case:
        drawn = {c.option for c in chosen}
        flags = [x for k, v in fx.TRAIN_FLAGS.items() if k not in drawn for x in (k, v)]
        base = ["train", *([] if "--out" in drawn else ["--out", "run"]), *flags, *fx.SWITCHES]
        return build_case("train", base, chosen, lambda folder: None, "run", _train_outputs)

    return _draw_choices(table, 2).map(make)


# ---------------------------------------------------------------- 3. model folders


def _config_edit(edit: Callable[[dict[str, Any]], None]) -> Prep:
    return lambda model: fx.edit_config(model, edit)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def edit(config: dict[str, Any]) -> None:
        node = config
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def edit(config: dict[str, Any]) -> None:
        node = config
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return edit


def _weights(file: str, edit: Callable[[dict[str, np.ndarray]], None]) -> Prep:
    return lambda model: fx.edit_weights(model / file, edit)


def _nan_one(t: dict[str, np.ndarray]) -> None:
    k = fx.biggest(t)
    t[k] = t[k].copy()
    t[k].flat[0] = np.nan


def _all(value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        for k in t:
            t[k] = np.full_like(t[k], value)

    return edit


def _as_int(t: dict[str, np.ndarray]) -> None:
    for k in t:
        t[k] = (t[k] * 1000).astype(np.int32)


def _one_as_int(t: dict[str, np.ndarray]) -> None:
    k = fx.biggest(t)
    t[k] = (t[k] * 1000).astype(np.int32)


def _as(dtype: Any) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        for k in t:
            t[k] = t[k].astype(dtype)

    return edit


def _crop(t: dict[str, np.ndarray]) -> None:
    k = fx.biggest(t)
    t[k] = np.ascontiguousarray(t[k][..., :-1])


def _drop_tensor(t: dict[str, np.ndarray]) -> None:
    del t[fx.biggest(t)]


def _extra_tensor(t: dict[str, np.ndarray]) -> None:
    t["fuzz.extra.weight"] = np.ones((3, 3), np.float32)


def _both(edit: Callable[[dict[str, np.ndarray]], None]) -> Prep:
    def prepare(model: Path) -> None:
        for file in ("model.safetensors", "ema.safetensors"):
            fx.edit_weights(model / file, edit)

    return prepare


def _on_file(file: str, action: Callable[[Path], None]) -> Prep:
    return lambda model: action(model / file)


def _deep_json(model: Path) -> None:
    (model / "config.json").write_text("[" * 100_000 + "]" * 100_000)


def _big_name(model: Path) -> str:
    """The name of the largest tensor of the fixture's weights (the one the corruptions change)."""
    from safetensors.numpy import load_file

    return fx.biggest(load_file(str(model / "model.safetensors")))


def model_corruptions(fixtures: fx.Fixtures) -> list[tuple[str, Prep, str, tuple[str, ...]]]:
    """(what, make it in the model folder, expectation, fragments the error must name one of)."""
    big = _big_name(fixtures.model)
    cfg, mod, ema = ("config.json",), ("model.safetensors",), ("ema.safetensors",)
    unlink: Callable[[Path], None] = Path.unlink
    weights = []
    for file, expect in (("model.safetensors", "either"), ("ema.safetensors", "warn")):
        names = (file,)
        weights += [
            (f"{file} truncated", _on_file(file, fx.truncate), expect, names),
            (f"{file} header byte flipped", _on_file(file, fx.flip_header_byte), expect, names),
            (f"{file} header length 2^62", _on_file(file, fx.huge_header_length), expect, names),
            (f"{file} empty", _on_file(file, lambda p: p.write_bytes(b"")), expect, names),
            (f"{file} a folder", _on_file(file, fx.replace_with_dir), expect, names),
            (f"{file} missing", _on_file(file, unlink), expect, names),
            (f"{file} one NaN in {big}", _weights(file, _nan_one), expect, names + (big,)),
            (f"{file} all NaN", _weights(file, _all(np.nan)), expect, names),
            (f"{file} all inf", _weights(file, _all(np.inf)), expect, names),
            (f"{file} int32 tensors", _weights(file, _as_int), expect, names),
            (f"{file} {big} cropped", _weights(file, _crop), expect, (big,)),
            (f"{file} {big} missing", _weights(file, _drop_tensor), expect, (big,)),
            (f"{file} an extra tensor", _weights(file, _extra_tensor), "either", names + ("fuzz.extra.weight",)),
            (f"{file} float16", _weights(file, _as(np.float16)), "either", names),
            (f"{file} float64", _weights(file, _as(np.float64)), "either", names),
        ]
    return [
        ("intact", lambda model: None, "ok", ()),
        ("config.json truncated", _on_file("config.json", fx.truncate), "bad", cfg),
        ("config.json garbage", _on_file("config.json", lambda p: p.write_bytes(b"\x00\xff\xfe{]")), "bad", cfg),
        ("config.json empty", _on_file("config.json", lambda p: p.write_bytes(b"")), "bad", cfg),
        ("config.json a list", _on_file("config.json", lambda p: p.write_text("[]")), "bad", cfg),
        ("config.json nested 100000 deep", _deep_json, "bad", cfg),
        ("config.json a folder", _on_file("config.json", fx.replace_with_dir), "bad", cfg),
        ("config.json missing", _on_file("config.json", unlink), "bad", cfg),
        ("format_version 99", _config_edit(_set("format_version", 99)), "bad", ("format_version", "99")),
        ("format_version '2'", _config_edit(_set("format_version", "2")), "either", ("format_version",)),
        ("base_channels 'abc'", _config_edit(_set("network.base_channels", "abc")), "bad", ("base_channels",)),
        ("base_channels 1e9", _config_edit(_set("network.base_channels", 1e9)), "bad", ("base_channels",)),
        ("base_channels 10^9", _config_edit(_set("network.base_channels", 10**9)), "bad", ("base_channels",)),
        ("base_channels 1e400", _config_edit(_set("network.base_channels", float("inf"))), "bad", ("base_channels",)),
        ("base_channels 8", _config_edit(_set("network.base_channels", 8)), "bad", ("base_channels",) + mod),
        ("image_size 100000", _config_edit(_set("data.image_size", 100000)), "bad", ("image_size",)),
        ("num_classes 5", _config_edit(_set("network.num_classes", 5)), "bad", ("num_classes",) + mod + ema),
        ("channels 3", _config_edit(_set("data.channels", 3)), "bad", ("channels",) + mod + ema),
        ("network missing", _config_edit(_drop("network")), "bad", ("network",)),
        ("sample section missing", _config_edit(_drop("sample")), "either", ("sample",)),
        ("an unknown key", _config_edit(_set("fuzz_unknown", 1)), "either", ("fuzz_unknown",)),
        ("sample.steps 10^9", _config_edit(_set("sample.steps", 10**9)), "bad", ("steps",)),
        ("sample.guidance NaN", _config_edit(_set("sample.guidance", float("nan"))), "bad", ("guidance",)),
        ("class_names one name", _config_edit(_set("data.class_names", ["a"])), "bad", ("class_names",)),
        ("class_names unicode", _config_edit(_set("data.class_names", [f"{UNICODE}{i}" for i in range(10)])), "ok", ()),
        ("both weights all NaN", _both(_all(np.nan)), "bad", mod + ema),
        ("both weights int32", _both(_as_int), "bad", mod + ema + (big,)),
        ("both weights one int32 tensor", _both(_one_as_int), "bad", (big,)),
        ("both weights cropped", _both(_crop), "bad", (big,)),
        *weights,
    ]


def model_cases(fixtures: fx.Fixtures) -> st.SearchStrategy[Case]:
    """A copy of the fixture model made corrupt one way, then ``sample`` on it."""
    corruptions = model_corruptions(fixtures)

    def make(index: int) -> Case:
        what, corrupt, expect, names = corruptions[index]

        def prepare(folder: Path) -> None:
            fx.copy_model(fixtures.model, folder / "model")
            corrupt(folder / "model")

        args = ["sample", "model", "-n", "2", "--out", "out.png", "--no-progress"]
        outputs = (Output("out.png", "png", SAMPLE_CELL),) if expect != "bad" else ()
        return Case("model", args, names, expect, note=what, outputs=outputs, prepare=prepare)

    return st.integers(0, len(corruptions) - 1).map(make)


# ---------------------------------------------------------------- 4. image files


def image_targets() -> dict[str, tuple[list[str], str, int, str]]:
    """(arguments with IMAGE for the file, the option it is given to, its side, which model) by target."""
    out = ["--out", "out.png", "--no-progress"]
    cond, plain = ["sample", "cond", "-n", "2"], ["sample", "model", "-n", "2"]
    return {
        "sample --cond-image": ([*cond, "--cond-image", "IMAGE", *out], "--cond-image", 4, "c"),
        "img2img --image": (["img2img", "model", "--image", "IMAGE", "--strength", "0.05", *out], "--image", 8, "m"),
        "inpaint --image": (["inpaint", "model", "--image", "IMAGE", "--mask", "mask.png", *out], "--image", 8, "m"),
        "inpaint --mask": (["inpaint", "model", "--image", "valid.png", "--mask", "IMAGE", *out], "--mask", 8, "m"),
        "sample --cond-image (no image conditioning)": (
            [*plain, "--cond-image", "IMAGE", *out],
            "--cond-image",
            8,
            "m",
        ),
    }


def image_cases(fixtures: fx.Fixtures) -> st.SearchStrategy[Case]:
    """An image file made one way (sound or corrupt), given to a command that reads images."""
    targets = image_targets()
    kinds = [k for k in fx.IMAGE_MAKERS if k != "mask"]

    def make(target: str, kind: str) -> Case:
        template, option, side, which = targets[target]
        name = "in-" + kind.replace(" ", "-").replace("^", "").replace("+", "-") + ".png"
        expect = fx.IMAGE_MAKERS[kind][1] if "no image" not in target else "bad"
        model = fixtures.cond if which == "c" else fixtures.model
        # img2img at strength 0.05 keeps the picture: its output's mean is the input's (16-bit, palette read right)
        keeps = target == "img2img --image" and expect == "ok"

        def prepare(folder: Path) -> None:
            fx.copy_model(model, folder / ("cond" if which == "c" else "model"))
            fx.make_image(folder, "valid", 8, 8, "valid.png")
            fx.make_image(folder, "mask", 8, 8, "mask.png")
            _, mean = fx.make_image(folder, kind, side, side, name, fixtures.bomb)
            if keeps and mean is not None:
                (folder / ".mean").write_text(json.dumps(mean))

        args = [name if a == "IMAGE" else a for a in template]
        cell = SAMPLE_CELL if target.startswith("sample") else 0
        outputs = (Output("out.png", "png", cell),) if expect != "bad" else ()
        case = Case("image", args, flag_names(option) + (name,), expect, note=f"{target}: {kind}", outputs=outputs)
        case.prepare = _with_mean(case, prepare) if keeps else prepare
        return case

    return st.tuples(st.sampled_from(sorted(targets)), st.sampled_from(kinds)).map(lambda tk: make(*tk))


def _with_mean(case: Case, prepare: Prep) -> Prep:
    """Prepare, then make the case's PNG output check the mean the input image has."""

    def run(folder: Path) -> None:
        prepare(folder)
        path = folder / ".mean"
        if path.is_file():
            mean = json.loads(path.read_text())
            path.unlink()
            case.outputs = tuple(
                Output(o.path, o.kind, o.cell, mean, MEAN_TOLERANCE) if o.kind == "png" else o for o in case.outputs
            )

    return run


MEAN_TOLERANCE = 0.15  # img2img at strength 0.05 of a 2-step model: the output's mean within this of the input's


# ---------------------------------------------------------------- 5. training states

STATE = "run/checkpoints/step-000002/training_state.pt"


def _state_edit(edit: Callable[[dict[str, Any]], None]) -> Prep:
    return lambda folder: fx.edit_state(folder / STATE, edit)


def _state_set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state[key] = value

    return edit


def _state_drop(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        del state[key]

    return edit


LEFTOVERS = ("run/checkpoints/.step-000004.fuzz1234/", "run/checkpoints/step-000001/")  # removed at start


def _stale_tmp(folder: Path) -> None:
    tmp = folder / LEFTOVERS[0].rstrip("/")
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half written")


def _half_pruned(folder: Path) -> None:
    old = folder / LEFTOVERS[1].rstrip("/")
    old.mkdir()
    shutil.copy2(folder / "run/checkpoints/step-000002/model.safetensors", old / "model.safetensors")


def _rename_step(folder: Path) -> None:
    src = folder / "run/checkpoints/step-000002"
    src.rename(src.with_name("step-999999999999"))


def state_corruptions() -> list[tuple[str, Prep, str, tuple[str, ...]]]:
    """(what, make it in the case folder, expectation, fragments the error must name one of)."""
    state = ("training_state.pt", "step-000002")
    ckpt = "run/checkpoints/step-000002"
    return [
        ("intact", lambda folder: None, "ok", ()),
        ("a stale temporary checkpoint folder", _stale_tmp, "ok", ()),
        ("a half-pruned checkpoint folder", _half_pruned, "ok", ()),
        ("step missing", _state_edit(_state_drop("step")), "bad", ("step",) + state),
        ("step 10^12", _state_edit(_state_set("step", 10**12)), "bad", ("step", "1000000000000")),
        ("step -1", _state_edit(_state_set("step", -1)), "bad", ("step",)),
        ("step 'abc'", _state_edit(_state_set("step", "abc")), "bad", ("step",)),
        ("step NaN", _state_edit(_state_set("step", float("nan"))), "bad", ("step",)),
        ("optimizer missing", _state_edit(_state_drop("optimizer")), "bad", ("optimizer",) + state),
        ("rng_torch missing", _state_edit(_state_drop("rng_torch")), "bad", ("rng_torch",) + state),
        ("state garbage", lambda f: (f / STATE).write_bytes(b"\x00garbage\xff" * 10), "bad", state),
        ("state truncated", lambda f: fx.truncate(f / STATE), "bad", state),
        ("state empty", lambda f: (f / STATE).write_bytes(b""), "bad", state),
        ("state missing", lambda f: (f / STATE).unlink(), "bad", ("checkpoint", "resume")),
        ("state a pickle running code", lambda f: fx.pickled_payload(f / STATE), "bad", state),
        ("checkpoint weights NaN", _in(ckpt, _weights("model.safetensors", _all(np.nan))), "bad", state),
        ("checkpoint config garbage", _in(ckpt, _on_file("config.json", fx.truncate)), "bad", ("config.json",)),
        ("no checkpoints folder", lambda f: shutil.rmtree(f / "run/checkpoints"), "bad", ("checkpoint", "resume")),
        ("checkpoint folder step-999999999999", _rename_step, "either", ("step", "999999999999")),
    ]


def _in(sub: str, prepare: Prep) -> Prep:
    return lambda folder: prepare(folder / sub)


def resume_cases(fixtures: fx.Fixtures) -> st.SearchStrategy[Case]:
    """A copy of the fixture's training run with its state made corrupt one way, then ``train --resume``."""
    corruptions = state_corruptions()
    steps = [("4", "ok"), ("3", "ok"), ("2", "either"), ("1", "either"), ("0", "bad")]

    def make(index: int, step_index: int) -> Case:
        what, corrupt, expect, names = corruptions[index]
        total, step_expect = steps[step_index]
        expect = combine([expect, step_expect])
        names = names + (flag_names("--steps") if step_expect != "ok" else ())

        def prepare(folder: Path) -> None:
            fx.copy_run(fixtures.model, folder / "run")
            corrupt(folder)

        args = fx.train_args("run", **{"--steps": total}) + ["--resume"]
        outputs = _train_outputs("run", [])
        if expect == "ok":  # it went on training: the checkpoint of its last step is there
            outputs += (Output(f"run/checkpoints/step-{int(total):06d}/training_state.pt", "exists"),)
        return Case(
            "resume",
            args,
            names,
            expect,
            note=f"{what}; --steps {total}",
            outputs=outputs if expect != "bad" else (),
            may_change=("run/",),
            leftovers=LEFTOVERS,
            forbidden=("pwned",),
            prepare=prepare,
        )

    return st.tuples(st.integers(0, len(corruptions) - 1), st.integers(0, len(steps) - 1)).map(lambda t: make(*t))


GROUPS: dict[str, Callable[[fx.Fixtures], st.SearchStrategy[Case]]] = {
    "sample": sample_cases,
    "train": train_cases,
    "model": model_cases,
    "image": image_cases,
    "resume": resume_cases,
}
