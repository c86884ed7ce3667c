"""Loading refuses a model folder it can't trust (issue 13): an unknown format version, weights that do not fit the
network (missing, extra, shape, dtype) or are not finite, a damaged ema.safetensors; each one CheckpointError line
naming the value or tensor. An absent ema.safetensors is a stated fallback: one FallbackWarning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clear_error, run

from diffusionlab.config import AutoencoderConfig, AutoencoderNetworkConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.io import CheckpointError, load_json, load_tensors, save_tensors
from diffusionlab.networks import NoiseAwareClassifier
from diffusionlab.networks.autoencoder import Autoencoder
from diffusionlab.networks.loading import FallbackWarning
from diffusionlab.pipeline import Pipeline

FIRST = "inp.weight"  # the MLP's input layer, shape (16, 2)


def make_model(folder: Path, ema: bool = True, ema_decay: float = 0.999) -> Path:
    """A tiny point model folder with EMA weights (distinct from the raw ones) and a noise-aware classifier."""
    torch.manual_seed(0)
    config = ModelConfig(
        space="points",
        network=NetworkConfig(kind="mlp", dim=2, width=16, depth=2),
        train=TrainConfig(ema_decay=ema_decay),
    )
    pipe = Pipeline(config)
    if ema:
        pipe.ema = pipe.copy_for_ema()
        with torch.no_grad():
            for p in pipe.ema.parameters():
                p.add_(1.0)
    pipe.classifier = NoiseAwareClassifier(1, 3, base_channels=8, channel_mults=(1,))
    pipe.save(folder)
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "m")


def damage(path: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite one tensor (``change(tensor)``; None deletes it) of a safetensors file."""
    state = load_tensors(path)
    new = change(state[name])
    if new is None:
        del state[name]
    else:
        state[name] = new
    save_tensors(state, path)


def load_quietly(folder: Path) -> Pipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Pipeline.load(folder)


def _tensor(folder: Path) -> torch.Tensor:
    return load_tensors(folder / "model.safetensors")[FIRST]


def test_an_intact_folder_loads_every_part_without_warnings(model: Path) -> None:
    pipe = load_quietly(model)
    assert _tensor(model).shape == (16, 2)
    assert torch.equal(pipe.network.state_dict()[FIRST], _tensor(model))
    assert torch.equal(pipe.ema.state_dict()[FIRST], load_tensors(model / "ema.safetensors")[FIRST])
    assert not torch.equal(pipe.ema.state_dict()[FIRST], pipe.network.state_dict()[FIRST])
    assert pipe.classifier is not None and pipe.classifier.num_classes == 3


# ---------------------------------------------------------------- format versions


def _load_error_with_version(model: Path, version: object) -> str:
    """The error of loading ``model`` with its config's format_version set to ``version``."""
    raw = load_json(model / "config.json")
    (model / "config.json").write_text(json.dumps({**raw, "format_version": version}))
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    return str(exc.value)


@pytest.mark.parametrize("version", [0, -1, "2", True, 2.5, None, [2]])
def test_a_format_version_that_is_not_one_is_one_line(model: Path, version: object) -> None:
    assert _load_error_with_version(model, version) == (
        f"{model / 'config.json'}: format_version {json.dumps(version)} is not one of the format versions "
        "this diffusionlab reads (1, 2)."
    )


def test_a_newer_format_version_asks_for_a_newer_diffusionlab(model: Path) -> None:
    assert _load_error_with_version(model, 99) == (
        f"{model / 'config.json'}: format_version 99 is newer than this diffusionlab reads (1, 2); "
        "upgrade diffusionlab to load it."
    )


def test_format_1_and_a_config_without_a_version_still_load(model: Path) -> None:
    raw = load_json(model / "config.json")
    for version in (1, 2, None):
        rest = {k: v for k, v in raw.items() if k not in ("format_version", "space")}
        (model / "config.json").write_text(json.dumps(rest if version is None else {**rest, "format_version": version}))
        assert load_quietly(model).config.space == "points"  # format 1 (or none): space inferred from the MLP


# ---------------------------------------------------------------- weights that do not fit, or are not finite


WEIGHTS = ("model.safetensors", "ema.safetensors")


@pytest.mark.parametrize("file", WEIGHTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_names_its_tensor(model: Path, file: str, value: float) -> None:
    def poison(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[3, 1] = value
        return t

    damage(model / file, FIRST, poison)
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == f"{model / file}: tensor '{FIRST}' holds 1 non-finite value(s) (NaN or inf)."


@pytest.mark.parametrize("file", WEIGHTS)
@pytest.mark.parametrize(
    ("dtype", "name"), [(torch.int64, "int64"), (torch.int32, "int32"), (torch.float16, "float16")]
)
def test_a_weight_of_another_dtype_names_its_tensor_and_dtype(
    model: Path, file: str, dtype: torch.dtype, name: str
) -> None:
    damage(model / file, FIRST, lambda t: (t * 100).to(dtype))
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == (
        f"{model / file}: tensor '{FIRST}' is {name}, but the network in config.json expects float32."
    )


@pytest.mark.parametrize("file", WEIGHTS)
def test_a_weight_of_another_shape_names_its_tensor_and_both_shapes(model: Path, file: str) -> None:
    damage(model / file, FIRST, lambda t: t.t().contiguous())
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == (
        f"{model / file}: tensor '{FIRST}' has shape (2, 16), but the network in config.json expects (16, 2)."
    )


@pytest.mark.parametrize("file", WEIGHTS)
def test_missing_and_extra_tensors_are_named(model: Path, file: str) -> None:
    state = load_tensors(model / file)
    save_tensors({**state, "head.extra": torch.zeros(2)}, model / file)
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == (
        f"{model / file} holds 1 tensor(s) that the network in config.json does not have: 'head.extra'."
    )
    save_tensors({k: v for k, v in state.items() if not k.startswith("inp.")}, model / file)
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == (
        f"{model / file} lacks 2 tensor(s) of the network in config.json: 'inp.weight', 'inp.bias'."
    )


def test_the_classifiers_weights_and_config_are_checked_too(model: Path) -> None:
    first = next(iter(load_tensors(model / "classifier.safetensors")))
    damage(model / "classifier.safetensors", first, lambda t: torch.full_like(t, float("nan")))
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    n = load_tensors(model / "classifier.safetensors")[first].numel()
    assert (
        str(exc.value)
        == f"{model / 'classifier.safetensors'}: tensor '{first}' holds {n:,} non-finite value(s) (NaN or inf)."
    )
    (model / "classifier.json").write_text(json.dumps({"in_channels": 1, "num_classes": 3, "colour": "red"}))
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value).startswith(f"{model / 'classifier.json'} does not describe a noise-aware classifier (")
    assert "colour" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------- ema.safetensors: damaged an error, absent a warning


def test_a_damaged_ema_file_is_an_error_not_a_fallback(model: Path) -> None:
    ema = model / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value).startswith(f"{ema} is not a readable safetensors file (") and "\n" not in str(exc.value)
    ema.unlink()
    ema.mkdir()
    with pytest.raises(CheckpointError) as exc:
        Pipeline.load(model)
    assert str(exc.value) == f"{ema} is not a file; expected a .safetensors weights file there."


def test_an_absent_ema_file_is_one_stated_fallback(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", ema=False)
    with pytest.warns(FallbackWarning) as record:
        pipe = Pipeline.load(folder)
    assert [str(w.message) for w in record] == [f"{folder} has no ema.safetensors; sampling uses the raw weights."]
    assert pipe.ema is None
    assert issubclass(FallbackWarning, UserWarning)


def test_an_absent_ema_file_is_silent_when_training_kept_no_average(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", ema=False, ema_decay=0.0)
    assert load_quietly(folder).ema is None


def test_the_cli_refuses_a_poisoned_model_in_one_line(model: Path, tmp_path: Path) -> None:
    damage(model / "model.safetensors", FIRST, lambda t: torch.full_like(t, float("nan")))
    out = tmp_path / "points.png"
    result = run("sample", model, "-n", "4", "--steps", "2", "--out", out)
    assert_clear_error(result, f"tensor '{FIRST}'", "32 non-finite value(s)")
    assert not out.exists()


# ---------------------------------------------------------------- autoencoder folders


@pytest.fixture
def autoencoder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = AutoencoderConfig(network=AutoencoderNetworkConfig(latent_channels=2, base_channels=8, channel_mults=[1]))
    ae = Autoencoder(config)
    ae.ema = ae.copy_for_ema()
    ae.save(tmp_path / "ae")
    return tmp_path / "ae"


def test_an_intact_autoencoder_folder_loads_quietly(autoencoder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Autoencoder.load(autoencoder).ema is not None


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0])
def test_an_autoencoder_of_an_unknown_format_is_one_line(autoencoder: Path, version: object) -> None:
    raw = load_json(autoencoder / "config.json")
    (autoencoder / "config.json").write_text(json.dumps({**raw, "format_version": version}))
    with pytest.raises(CheckpointError) as exc:
        Autoencoder.load(autoencoder)
    text = str(exc.value)
    assert text.startswith(f"{autoencoder / 'config.json'}: format_version {json.dumps(version)} is ")
    assert text.endswith("this diffusionlab reads (1); upgrade diffusionlab to load it." if version == 2 else "(1).")


@pytest.mark.parametrize("file", WEIGHTS)
def test_autoencoder_weights_are_checked_as_a_models(autoencoder: Path, file: str) -> None:
    name = next(iter(load_tensors(autoencoder / file)))
    damage(autoencoder / file, name, lambda t: t.to(torch.int64))
    with pytest.raises(CheckpointError) as exc:
        Autoencoder.load(autoencoder)
    assert str(exc.value) == (
        f"{autoencoder / file}: tensor '{name}' is int64, but the autoencoder in config.json expects float32."
    )


def test_an_autoencoder_without_its_ema_file_warns_once(autoencoder: Path) -> None:
    (autoencoder / "ema.safetensors").unlink()
    with pytest.warns(FallbackWarning) as record:
        ae = Autoencoder.load(autoencoder)
    assert [str(w.message) for w in record] == [
        f"{autoencoder} has no ema.safetensors; encoding and decoding use the raw weights."
    ]
    assert ae.ema is None


def test_a_missing_autoencoder_tensor_is_named(autoencoder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(autoencoder, copy)
    name = next(iter(load_tensors(copy / "model.safetensors")))
    damage(copy / "model.safetensors", name, lambda t: None)
    with pytest.raises(CheckpointError) as exc:
        Autoencoder.load(copy)
    assert (
        str(exc.value) == f"{copy / 'model.safetensors'} lacks 1 tensor(s) of the autoencoder in config.json: '{name}'."
    )


def _edit_config(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    raw = load_json(folder / "config.json")
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["network"].update(width="abc"), "network.width='abc'"),
        (lambda c: c["sample"].update(guidance=float("nan")), "sample.guidance=nan"),
        (lambda c: c.update(fuzz_unknown=1), "fuzz_unknown=1: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_config_field_is_named_with_its_value(model: Path, edit, named: str) -> None:  # type: ignore[no-untyped-def]
    _edit_config(model, edit)
    with pytest.raises(CheckpointError, match="is not a valid model config") as err:
        Pipeline.load(model)
    assert named in str(err.value)


def test_class_names_and_channels_must_match_the_network(tmp_path: Path) -> None:
    folder = Path(__file__).parent / "fixtures" / "format1-image"  # 3 classes
    shutil.copytree(folder, tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: c["data"].update(class_names=["a"]))
    with pytest.raises(CheckpointError, match=r"data.class_names has 1 names for network.num_classes=3 classes"):
        Pipeline.load(tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: c["data"].update(channels=3))
    _edit_config(tmp_path / "m", lambda c: c["data"].update(class_names=["a", "b", "c"]))
    with pytest.raises(CheckpointError, match=r"samples have 3 channels \(data.channels=3\) but the network takes 1"):
        Pipeline.load(tmp_path / "m")
