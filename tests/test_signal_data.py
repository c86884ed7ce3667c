"""Signals (data/signals.py): WAV files and audio folders, series CSVs and .npy windows, their scaling and gaps."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from diffusionlab.config import DataConfig
from diffusionlab.data import DataError
from diffusionlab.data.signals import (
    destandardise_series,
    fill_gaps,
    is_audio_dataset,
    is_series_dataset,
    load_audio_folder,
    load_series,
    load_signal_dataset,
    read_audio,
    read_series_csv_for_model,
    read_series_input,
    standardise_series,
    write_series_csv,
    write_wav,
)

LSB = 1 / 32768  # one step of 16-bit PCM read back as float


def sine(freq: float, rate: int, seconds: float, channels: int = 1, start: int = 0) -> np.ndarray:
    """(C, L) float32 sine of ``freq`` Hz at amplitude 0.5, channel c shifted by c radians, from sample ``start``."""
    t = (np.arange(round(seconds * rate)) + start) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- audio ---------------------------------------------------------------------------------------------------------


def test_wav_round_trip_keeps_rate_channels_length_and_values(tmp_path: Path) -> None:
    signal = sine(440, 11025, 0.07, channels=2)
    signal[0, :5] = [1.5, -1.5, 1.0, -1.0, 0.0]  # out of range: clipped
    path = tmp_path / "out" / "clip.wav"
    write_wav(torch.from_numpy(signal), path, 11025)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 11025, 2)
    back, rate = read_audio(path)
    assert rate == 11025 and back.shape == signal.shape == (2, 772) and back.dtype == np.float32
    expected = np.clip(signal, -1, 1)
    assert np.abs(back - expected).max() <= 1.5 * LSB
    assert back[0, 0] == pytest.approx(32767 / 32768) and back[0, 1] == -1.0
    assert [p.name for p in path.parent.iterdir()] == ["clip.wav"]  # no temporary file left behind


def test_audio_spec_forms() -> None:
    assert is_audio_dataset("audio:clips") and not is_audio_dataset("clips") and not is_audio_dataset(3)
    assert is_series_dataset("series:a.csv") and is_series_dataset("array:a.npy") and is_series_dataset("a.NPY")
    assert not is_series_dataset("a.csv") and not is_series_dataset("audio:x")


@pytest.fixture
def two_rate_folder(tmp_path: Path) -> Path:
    """Class sub-folders: 'yes' holds 8 kHz clips of 0.5 s, 'no' 16 kHz clips of 0.6 s (the same 230 Hz tone)."""
    root = tmp_path / "words"
    for i in range(2):
        write_wav(sine(230, 8000, 0.5), root / "yes" / f"y{i}.wav", 8000)
        write_wav(sine(230, 16000, 0.6), root / "no" / f"n{i}.wav", 16000)
    return root


def test_audio_folder_mixed_rates_need_a_sample_rate(two_rate_folder: Path) -> None:
    with pytest.raises(DataError, match=r"mixes sample rates: .*n0\.wav' is 16000 Hz.*--sample-rate") as err:
        load_audio_folder(two_rate_folder)
    assert "8000 Hz" in str(err.value) and "\n" not in str(err.value)


def test_audio_folder_resamples_to_the_given_rate_and_crops_the_centre(two_rate_folder: Path) -> None:
    ds = load_audio_folder(two_rate_folder, sample_rate=8000)
    assert ds.class_names == ["no", "yes"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.info.kind == "audio" and (ds.info.sample_rate, ds.info.channels) == (8000, 1)
    assert ds.x.shape == (4, 1, 4000) and ds.info.length == 4000  # the shortest clip: 0.5 s at 8 kHz
    assert torch.equal(ds.x[2], ds.x[3])
    # the 0.6 s clip at 16 kHz is 4800 samples at 8 kHz, cropped from sample 400: the tone from there
    tone = torch.from_numpy(sine(230, 8000, 0.5, start=400))
    assert (ds.x[0] - tone).abs().max() < 2e-3
    assert (ds.x[2] - torch.from_numpy(sine(230, 8000, 0.5))).abs().max() <= LSB
    up = load_audio_folder(two_rate_folder, sample_rate=16000, clip_seconds=0.25)
    assert up.x.shape == (4, 1, 4000) and up.info.sample_rate == 16000
    assert (up.x[0] - torch.from_numpy(sine(230, 16000, 0.25, start=2800))).abs().max() <= LSB  # (9600-4000)/2


def test_audio_folder_flat_is_unlabelled_and_stereo_is_kept(tmp_path: Path) -> None:
    for i in range(3):
        write_wav(sine(100 + 50 * i, 8000, 0.2 + 0.1 * i, channels=2), tmp_path / f"c{i}.wav", 8000)
    ds = load_signal_dataset("audio:" + str(tmp_path), DataConfig())
    assert ds.labels is None and ds.class_names is None and ds.num_classes is None
    assert ds.x.shape == (3, 2, 1600) and ds.mask is None and len(ds) == 3 and ds[1]["signal"].shape == (2, 1600)


def test_audio_clip_shorter_than_the_clip_length_is_one_error_naming_it(tmp_path: Path) -> None:
    write_wav(sine(230, 8000, 0.5), tmp_path / "long.wav", 8000)
    write_wav(sine(230, 8000, 0.1), tmp_path / "short.wav", 8000)
    with pytest.raises(DataError) as err:
        load_audio_folder(tmp_path, clip_seconds=0.3)
    message = str(err.value)
    assert "short.wav" in message and "long.wav" not in message and "\n" not in message
    assert "0.1 s (800 samples at 8000 Hz)" in message and "0.3 s (2400 samples at 8000 Hz)" in message


def test_a_file_that_is_not_audio_is_one_error(tmp_path: Path) -> None:
    write_wav(sine(230, 8000, 0.1), tmp_path / "good.wav", 8000)
    (tmp_path / "fake.wav").write_text("RIFF? no, just text\n")
    with pytest.raises(DataError, match=r"fake\.wav' is not an audio file soundfile can read \(WAV, FLAC, OGG\)"):
        load_audio_folder(tmp_path)
    with pytest.raises(DataError, match="fake.wav"):
        read_audio(tmp_path / "fake.wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), np.float32), 8000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"empty\.wav' is an empty clip"):
        read_audio(tmp_path / "empty.wav")
    with pytest.raises(DataError, match="does not exist"):
        read_audio(tmp_path / "absent.wav")


def test_audio_mixed_channel_counts_are_an_error(tmp_path: Path) -> None:
    write_wav(sine(230, 8000, 0.1), tmp_path / "a" / "mono.wav", 8000)
    write_wav(sine(230, 8000, 0.1, channels=2), tmp_path / "b" / "stereo.wav", 8000)
    with pytest.raises(DataError, match=r"mixes channel counts: .*mono\.wav' has 1 channel, .*stereo\.wav' has 2"):
        load_audio_folder(tmp_path)


# --- series --------------------------------------------------------------------------------------------------------


@pytest.fixture
def wide_csv(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """50 daily rows: a text date column, 'a' (a ramp with 3 gaps, one spelled NA) and 'b' (noise, complete)."""
    rng = np.random.default_rng(0)
    a = 10.0 + 0.5 * np.arange(50)
    b = np.round(rng.normal(100.0, 7.0, 50), 3)
    a[[3, 4, 20]] = np.nan
    rows = [
        [f"2020-01-{i + 1:02d}" if i < 31 else f"2020-02-{i - 30:02d}", "NA" if i == 20 else _cell(a[i]), b[i]]
        for i in range(50)
    ]
    return write_rows(tmp_path / "wide.csv", ["date", "a", "b"], rows), np.stack([a, b])


def _cell(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def test_wide_series_windows_standardisation_gaps_and_round_trip(wide_csv: tuple[Path, np.ndarray]) -> None:
    path, raw = wide_csv
    ds = load_series(f"series:{path}", window=16, stride=8)
    info = ds.info
    assert info.kind == "series" and info.columns == ["a", "b"] and (info.channels, info.length) == (2, 16)
    for c in range(2):  # the mean and population std of the observed values, by hand
        seen = [v for v in raw[c] if not np.isnan(v)]
        mean = sum(seen) / len(seen)
        std = (sum((v - mean) ** 2 for v in seen) / len(seen)) ** 0.5
        assert info.mean[c] == pytest.approx(mean, rel=1e-12) and info.std[c] == pytest.approx(std, rel=1e-12)
    starts = [0, 8, 16, 24, 32, 34]  # stride 8, then one window ending at the last row
    assert ds.x.shape == (6, 2, 16) and ds.x.dtype == torch.float32
    expected_mask = np.stack([~np.isnan(raw[:, s : s + 16]) for s in starts])
    assert ds.mask is not None and np.array_equal(ds.mask.numpy(), expected_mask)
    mean, std = np.array(info.mean)[:, None], np.array(info.std)[:, None]
    for k, s in enumerate(starts):
        window = (raw[:, s : s + 16] - mean) / std
        seen = ~np.isnan(window)
        assert np.allclose(ds.x[k].numpy()[seen], window[seen], atol=1e-6)
    # the gap at rows 3-4 lies on a straight line: interpolation gives it back exactly
    line = (10.0 + 0.5 * np.arange(16) - mean[0, 0]) / std[0, 0]
    assert np.allclose(ds.x[0, 0].numpy(), line, atol=1e-6)
    out = path.parent / "back.csv"
    write_series_csv(ds.x, info, out)
    back = pd.read_csv(out)
    assert list(back.columns) == ["sample", "t", "a", "b"] and len(back) == 6 * 16
    for k, s in enumerate(starts):
        rows = back[back["sample"] == k].sort_values("t")
        assert rows["t"].tolist() == list(range(16))
        for c, name in enumerate(["a", "b"]):
            original = raw[c, s : s + 16]
            seen = ~np.isnan(original)
            assert np.allclose(rows[name].to_numpy()[seen], original[seen], rtol=1e-6, atol=1e-9)
    nan_windows = ds.x.numpy().copy()
    nan_windows[0, 0, 0] = np.nan
    write_series_csv(nan_windows[:1], info, out)
    assert pd.read_csv(out, keep_default_na=False)["a"].iloc[0] == ""


def test_default_stride_takes_every_window(wide_csv: tuple[Path, np.ndarray]) -> None:
    path, _ = wide_csv
    ds = load_series(path, window=16)
    assert ds.x.shape == (50 - 16 + 1, 2, 16)
    assert torch.equal(ds.x[1, 1, :-1], ds.x[0, 1, 1:])  # stride 1: each window is the last shifted by one step


def test_long_series_windows_never_cross_ids(tmp_path: Path) -> None:
    lengths = {"north": 20, "south": 30, "east": 25}
    series = {name: [1000.0 * k + t for t in range(n)] for k, (name, n) in enumerate(lengths.items())}
    rows, cursor = [], dict.fromkeys(lengths, 0)
    while any(cursor[n] < lengths[n] for n in lengths):  # rows of the three stations interleaved
        for name in lengths:
            if cursor[name] < lengths[name]:
                value = series[name][cursor[name]]
                rows.append([name, cursor[name], value, -value])
                cursor[name] += 1
    path = write_rows(tmp_path / "long.csv", ["station", "time", "temp", "neg"], rows)
    ds = load_signal_dataset(f"series:{path}", DataConfig(window=10, id_column="station"))
    assert ds.info.columns == ["temp", "neg"]  # "time" is set aside by its name although it holds numbers
    every = [v for s in series.values() for v in s]
    assert ds.info.mean[0] == pytest.approx(np.mean(every)) and ds.info.std[1] == pytest.approx(np.std(every))
    assert ds.x.shape == (20 - 9 + 30 - 9 + 25 - 9, 2, 10) and ds.mask is None
    raw = ds.x.double() * ds.info.std[0] + ds.info.mean[0]
    station = torch.floor((raw[:, 0] + 0.5) / 1000)
    assert torch.equal(station.min(dim=1).values, station.max(dim=1).values)  # one station per window
    steps = raw[:, 0, 1:] - raw[:, 0, :-1]
    assert torch.allclose(steps, torch.ones_like(steps), atol=1e-3)  # consecutive time steps of that station
    strided = load_series(path, window=10, id_column="station", stride=5)
    assert len(strided) == 3 + 5 + 4  # starts 0,5,10 | 0,5,..,20 | 0,5,10,15
    with pytest.raises(DataError, match=r"series 'north' \(column 'station'\), has 20 time steps, fewer than"):
        load_series(path, window=21, id_column="station")
    with pytest.raises(DataError, match="no id column 'site'"):
        load_series(path, window=10, id_column="site")


def test_series_text_in_a_value_column_is_one_error(tmp_path: Path) -> None:
    rows = [[f"d{i}", i, i * 2] for i in range(10)]
    rows[6][2] = "twelve"
    path = write_rows(tmp_path / "text.csv", ["day", "x", "y"], rows)
    with pytest.raises(DataError) as err:
        load_series(path, window=4)
    message = str(err.value)
    assert "column 'y' row 7 holds 'twelve', which is not a number" in message and "\n" not in message
    rows[6][2] = "inf"
    write_rows(path, ["day", "x", "y"], rows)
    with pytest.raises(DataError, match="'inf', which is not a finite number"):
        load_series(path, window=4)


def test_series_with_a_column_all_missing_is_one_error(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "gone.csv", ["x", "empty"], [[i, "" if i % 2 else "NA"] for i in range(10)])
    with pytest.raises(DataError, match="value column 'empty' has no values"):
        load_series(path, window=4)
    with pytest.raises(DataError, match="fewer than the window of 40; pass a shorter --window"):
        load_series(write_rows(tmp_path / "ok.csv", ["x"], [[i] for i in range(10)]), window=40)


def test_npy_windows_with_gaps(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    array = rng.normal([[[5.0], [-3.0]]], [[[2.0], [0.5]]], size=(40, 2, 12))
    array[3, 1, 4:7] = np.nan
    np.save(tmp_path / "w.npy", array)
    ds = load_series(tmp_path / "w.npy", window=64)  # a .npy holds ready windows: the window does not apply
    assert ds.x.shape == (40, 2, 12) and ds.info.columns == ["value0", "value1"] and ds.info.length == 12
    assert ds.info.mean[1] == pytest.approx(np.nanmean(array[:, 1])) and ds.info.std[0] == pytest.approx(
        array[:, 0].std()
    )
    assert ds.mask is not None and ds.mask.sum().item() == 40 * 2 * 12 - 3 and not ds.mask[3, 1, 5]
    z = (array[3, 1] - ds.info.mean[1]) / ds.info.std[1]
    assert np.allclose(ds.x[3, 1, 4:7].numpy(), np.interp([4, 5, 6], [3, 7], z[[3, 7]]), atol=1e-6)
    np.save(tmp_path / "one.npy", np.arange(30, dtype=np.int64).reshape(3, 10))
    one = load_signal_dataset("array:" + str(tmp_path / "one.npy"), DataConfig())
    assert one.x.shape == (3, 1, 10) and one.info.columns == ["value"] and one.info.mean == [14.5]
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(DataError, match=r"has shape \(5,\); expected \(N, L\) or \(N, C, L\)"):
        load_series(tmp_path / "flat.npy", window=4)
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(DataError, match="is not a .npy array numpy can read"):
        load_series(tmp_path / "bad.npy", window=4)


def test_fill_gaps_interpolates_inside_and_holds_the_edges() -> None:
    values = np.array([[np.nan, 1.0, np.nan, np.nan, 4.0, np.nan], [np.nan] * 6])
    filled = fill_gaps(values, ~np.isnan(values))
    assert filled.tolist() == [[1.0, 1.0, 2.0, 3.0, 4.0, 4.0], [0.0] * 6]


def test_read_series_for_model_uses_the_model_columns_and_scale(wide_csv: tuple[Path, np.ndarray]) -> None:
    path, raw = wide_csv
    info = load_series(path, window=16).info
    rows = [[f"t{i}", "" if i in (2, 3) else 3.0 * i, 50 + i] for i in range(8)]
    query = write_rows(path.parent / "query.csv", ["stamp", "b", "a"], rows)  # columns in another order
    values, mask = read_series_csv_for_model(query, info)
    assert values.shape == mask.shape == (2, 8) and mask.dtype == torch.bool
    assert mask[0].all() and mask[1].tolist() == [True, True, False, False, True, True, True, True]
    a = (50 + np.arange(8) - info.mean[0]) / info.std[0]
    b = (3.0 * np.arange(8) - info.mean[1]) / info.std[1]
    assert np.allclose(values[0].numpy(), a, atol=1e-6) and np.allclose(values[1].numpy(), b, atol=1e-6)
    read = read_series_input(query, info)
    assert read.time_name == "stamp" and read.time == [f"t{i}" for i in range(8)]
    write_rows(query, ["b", "c"], [[i, i] for i in range(4)])
    with pytest.raises(DataError, match=r"lacks the model's column 'a' and has column 'c' the model does not know"):
        read_series_csv_for_model(query, info)
    write_rows(query, ["a", "b"], [["", i] for i in range(4)])
    with pytest.raises(DataError, match="value column 'a' has no values"):
        read_series_csv_for_model(query, info)
    write_rows(query, ["a", "b"], [["x", i] for i in range(4)])
    with pytest.raises(DataError, match="column 'a' row 1 holds 'x'"):
        read_series_csv_for_model(query, info)


def test_fitted_info_fixes_the_scale_of_new_data(wide_csv: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = wide_csv
    trained = load_series(path, window=16).info
    shifted = write_rows(tmp_path / "new.csv", ["b", "a"], [[200 + i, 5 * i] for i in range(20)])
    ds = load_signal_dataset(f"series:{shifted}", DataConfig(window=16, signal=trained))
    assert ds.info.columns == ["a", "b"] and ds.info.mean == trained.mean
    assert ds.x[0, 1, 0].item() == pytest.approx((200 - trained.mean[1]) / trained.std[1], rel=1e-6)


@pytest.mark.parametrize("transform", ["sqrt", "log"])
def test_series_transform_is_stored_fitted_on_its_scale_and_inverted(
    wide_csv: tuple[Path, np.ndarray], tmp_path: Path, transform: str
) -> None:
    path, raw = wide_csv
    forward = np.sqrt if transform == "sqrt" else np.log
    ds = load_signal_dataset(f"series:{path}", DataConfig(window=16, series_transform=transform))
    info = ds.info
    assert info.transform == transform
    seen = forward(raw[0][~np.isnan(raw[0])])  # the mean and std are the transformed values'
    assert info.mean[0] == pytest.approx(seen.mean(), rel=1e-12) and info.std[0] == pytest.approx(seen.std(), rel=1e-12)
    assert np.allclose(ds.x[0, 1].numpy(), (forward(raw[1, :16]) - info.mean[1]) / info.std[1], atol=1e-6)
    back = destandardise_series(standardise_series(raw, info), info)
    assert np.allclose(back, raw, rtol=1e-12, atol=0, equal_nan=True)  # float64 round trip
    out = tmp_path / "back.csv"
    write_series_csv(ds.x[:1], info, out)  # float32 windows written back in the data's units
    assert np.allclose(pd.read_csv(out)["b"].to_numpy(), raw[1, :16], rtol=1e-5)
    assert (destandardise_series(np.full((1, 2, 1), -50.0), info) >= 0).all()  # far tails stay in the domain
    negative = write_rows(tmp_path / "neg.csv", ["a"], [[v] for v in [1.0, 0.0, -2.5] * 8])
    with pytest.raises(DataError, match=rf"neg.csv: the series transform '{transform}' takes values .*-2.5"):
        load_series(negative, window=4, transform=transform)
