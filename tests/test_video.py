"""Video (issue 22): moving digits and clip files, the space-time UNet, VideoSpace, frame prediction and
interpolation as frame inpainting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clear_error, run
from PIL import Image

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, TrainConfig
from diffusionlab.data import DataError
from diffusionlab.data.clips import bounce, load_clip_folder, moving_digits, read_clip
from diffusionlab.images import save_animation
from diffusionlab.networks.spacetime import SpaceTimeUNet, TemporalAttention
from diffusionlab.pipeline import Pipeline
from diffusionlab.spaces import build_network, network_parameters
from diffusionlab.tasks import fill_frames, parse_frames
from diffusionlab.training import Trainer
from diffusionlab.training.data import load_training_data

QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}


def test_moving_digits_move_at_their_velocities_and_bounce_off_the_edges() -> None:
    data = moving_digits(n=40, frames=12, seed=3)
    assert data.clips.shape == (40, 12, 1, 32, 32) and data.labels.shape == (40,)
    assert torch.equal(data.clips, moving_digits(n=40, frames=12, seed=3).clips)  # deterministic from the seed
    assert not torch.equal(data.clips, moving_digits(n=40, frames=12, seed=4).clips)
    for i in range(40):
        for axis in range(2):  # a step-by-step simulation of a ball between walls at 0 and 16
            p, v = int(data.positions[i, 0, 0, axis]), int(data.velocities[i, 0, axis])
            assert 1 <= abs(v) <= 3
            for f in range(1, 12):
                p += v
                if p < 0:
                    p, v = -p, -v
                elif p > 16:
                    p, v = 32 - p, -v
                assert int(data.positions[i, 0, f, axis]) == p
    # the pixels move with the stated positions: a frame's centre of mass minus the position is constant
    frames = (data.clips + 1) / 2  # (N, F, 1, 32, 32)
    grid = torch.arange(32, dtype=torch.float32)
    mass = frames.sum((2, 3, 4))
    cx = (frames.sum((2, 3)) * grid).sum(-1) / mass
    cy = (frames.sum((2, 4)) * grid).sum(-1) / mass
    offset = torch.stack([cx, cy], -1) - data.positions[:, 0].float()  # (N, F, 2)
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), atol=1e-4, rtol=0)
    bounced = data.positions[:, :, :, 0].float()
    assert float(bounced.min()) == 0 or float(bounced.max()) == 16  # some clip reaches a wall
    assert torch.equal(bounce(torch.tensor([15.0]), torch.tensor([3.0]), 4, 16), torch.tensor([[15.0, 14, 11, 8]]))


def test_two_digit_clips_show_two_digits_of_the_clips_class() -> None:
    data = moving_digits(n=8, frames=6, num_digits=2, seed=1)
    assert data.positions.shape == (8, 2, 6, 2) and data.velocities.shape == (8, 2, 2)
    assert float(((data.clips + 1) / 2).sum()) > 1.5 * float(((moving_digits(8, 6, 1, seed=1).clips + 1) / 2).sum())


def quantised(clip: torch.Tensor) -> torch.Tensor:
    return (clip * 255).round() / 255


def test_a_clip_round_trips_through_gif_and_webp_exactly(tmp_path: Path) -> None:
    clip = quantised((moving_digits(n=1, frames=8, seed=2).clips[0] + 1) / 2)
    clip[3:6] = clip[3]  # repeated frames: a GIF writer merges them into one longer frame
    for suffix in (".gif", ".webp"):
        save_animation(clip, tmp_path / f"c{suffix}", scale=1)
        back = read_clip(tmp_path / f"c{suffix}")
        assert back.shape == clip.shape and torch.equal(back, clip), suffix
    colour = quantised(torch.rand(5, 3, 8, 8))  # any 8-bit RGB: lossless WebP keeps it (a GIF palette would not)
    colour[:, :, :, :4] = colour[:, :1, :, :4]  # some gray pixels, some not
    save_animation(colour, tmp_path / "rgb.webp", scale=1)
    assert torch.equal(read_clip(tmp_path / "rgb.webp"), colour)


def test_a_clip_folder_of_gifs_and_frame_folders_loads_with_class_labels(tmp_path: Path) -> None:
    clips = quantised((moving_digits(n=3, frames=6, seed=5).clips + 1) / 2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "seq").mkdir(parents=True)
    save_animation(clips[0], tmp_path / "a" / "one.gif", scale=1)
    save_animation(clips[1, :5], tmp_path / "a" / "two.gif", scale=1)
    for f in range(6):
        Image.fromarray((clips[2, f, 0].numpy() * 255).round().astype(np.uint8), "L").save(
            tmp_path / "b" / "seq" / f"{f:03d}.png"
        )
    data = load_clip_folder(tmp_path, image_size=32)
    assert data.clips.shape == (3, 5, 1, 32, 32)  # cut to the shortest clip
    assert data.labels.tolist() == [0, 0, 1] and data.class_names == ["a", "b"]
    torch.testing.assert_close(data.clips[2], clips[2, :5] * 2 - 1, atol=1e-6, rtol=0)
    assert load_clip_folder(tmp_path, image_size=16).clips.shape == (3, 5, 1, 16, 16)
    spec = ModelConfig(data=DataConfig(dataset=f"clips:{tmp_path}", image_size=16, frames=4, channels=3))
    loaded = load_training_data(spec)  # the dataset spec of `train --dataset clips:<folder>`
    assert loaded.x.shape == (3, 4, 3, 16, 16) and loaded.class_names == ["a", "b"]
    torch.testing.assert_close(loaded.x[:, :, :1], loaded.x[:, :, 2:])  # gray clips in three equal channels
    with pytest.raises(DataError, match="has only 5"):
        load_clip_folder(tmp_path, image_size=32, frames=6)
    (tmp_path / "loose.gif").write_bytes((tmp_path / "a" / "one.gif").read_bytes())
    with pytest.raises(DataError, match="mixes loose clips"):
        load_clip_folder(tmp_path, image_size=32)


def test_bad_clip_input_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    out = tmp_path / "m"
    assert_clear_error(run("train", "--dataset", f"clips:{tmp_path / 'none'}", "--out", out), "does not exist")
    assert_clear_error(run("train", "--dataset", f"clips:{tmp_path / 'empty'}", "--out", out), "holds no clips")
    assert_clear_error(run("train", "--dataset", "moving_digits:3", "--out", out), "moving_digits:3", "1 or 2")
    with pytest.raises(DataError, match="cannot read clip"):
        read_clip(tmp_path / "bad.gif")
    assert parse_frames("0-2,6", 8) == [0, 1, 2, 6]
    for text in ("0-9", "a", "3-1"):
        with pytest.raises(ValueError, match="known_frames"):
            parse_frames(text, 8)


def reference_temporal_attention(block: TemporalAttention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """The same attention written out per pixel and head with explicit softmax (Shaw et al. 2018's relative bias)."""
    bf, c, h, w = x.shape
    heads, d = block.num_heads, c // block.num_heads
    normed = block.norm(x).reshape(bf // frames, frames, c, h * w)
    out = torch.zeros_like(normed)
    for b in range(bf // frames):
        for p in range(h * w):
            tokens = normed[b, :, :, p]  # (F, C)
            q, k, v = block.qkv(tokens).split(c, dim=-1)
            mixed = []
            for head in range(heads):
                sl = slice(head * d, (head + 1) * d)
                logits = q[:, sl] @ k[:, sl].T / math.sqrt(d)
                for i in range(frames):
                    for j in range(frames):
                        off = max(-block.max_offset, min(block.max_offset, j - i))
                        logits[i, j] += block.bias[head, off + block.max_offset]
                mixed.append(torch.softmax(logits, -1) @ v[:, sl])
            out[b, :, :, p] = block.proj(torch.cat(mixed, -1))
    return x + out.reshape(bf, c, h, w)


def test_temporal_attention_matches_a_written_out_reference_at_any_frame_count() -> None:
    torch.manual_seed(0)
    block = TemporalAttention(8, num_heads=2, max_offset=3)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for frames in (2, 5, 9):  # 9 frames: offsets beyond max_offset share its bias
        x = torch.randn(2 * frames, 8, 2, 3)
        torch.testing.assert_close(block(x, frames), reference_temporal_attention(block, x, frames), atol=1e-5, rtol=0)


def test_the_space_time_unet_takes_any_frame_count_and_mixes_frames() -> None:
    torch.manual_seed(0)
    net = SpaceTimeUNet(1, 8, (1, 2), 1, (1,), 2, num_classes=3).requires_grad_(False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x, c = torch.randn(2, 6, 1, 8, 8), torch.full((2,), 0.3)
    y = net(x, c, torch.tensor([0, 2]))
    assert net(x[:, :3], c, torch.tensor([0, 2])).shape == (2, 3, 1, 8, 8)
    x2 = x.clone()
    x2[:, 5] += 1
    assert float((net(x2, c, torch.tensor([0, 2])) - y)[:, 0].abs().max()) > 1e-3  # the last frame reaches the first
    no_time = [m for m in net.modules() if isinstance(m, TemporalAttention)]
    for m in no_time:
        m.forward = lambda h, frames: h  # type: ignore[method-assign]
    y_frames = net(x, c, torch.tensor([0, 2]))
    assert torch.equal(net(x2, c, torch.tensor([0, 2]))[:, 0], y_frames[:, 0])  # without it, frames are apart
    with pytest.raises(ValueError, match=r"clips \(B, F, C, H, W\)"):
        net(x[:, 0], c)
    cfg = NetworkConfig(kind="spacetime_unet", **MODEL_SIZES["small"], num_classes=10)
    assert network_parameters(cfg) == sum(p.numel() for p in build_network(cfg).parameters())


@pytest.fixture(scope="module")
def video_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, list[float]]:
    """A tiny class-conditional model of 4-frame moving digits, trained 40 steps; and its losses."""
    folder = tmp_path_factory.mktemp("video") / "model"
    config = ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="moving_digits", frames=4),
        train=TrainConfig(steps=40, batch_size=4, lr=3e-3, warmup_steps=5, **QUIET),
    )
    trainer = Trainer(config, folder, progress=False, track=False)
    losses = [trainer.train_step(s)[0] for s in range(40)]
    trainer.objective.save(folder)  # the model folder without the 80-clip preview of a finished run
    assert not trainer.objective.evaluates  # no final evaluation: `evaluate` has no video metrics
    return folder, losses


def test_a_short_training_run_lowers_the_loss_and_writes_a_video_model(
    video_model: tuple[Path, list[float]], tmp_path: Path
) -> None:
    folder, losses = video_model
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    pipe = Pipeline.load(folder)
    assert pipe.config.space == "video" and pipe.config.network.kind == "spacetime_unet"
    assert pipe.sample_shape == (4, 1, 32, 32) and pipe.config.network.num_classes == 10
    clips = pipe.sample(labels=[3, 3, 5], steps=2, seed=0)
    pipe.space.save(clips, tmp_path / "s.gif", nrow=2, row_labels=["3", "5"])
    with Image.open(tmp_path / "s-frames.png") as strip:  # one row of 4 frames per clip, scaled 2x, 2 px apart
        assert strip.size[1] == 2 + 3 * (2 * 32 + 2)
    gif = read_clip(tmp_path / "s.gif")  # each frame: the clips' frame f side by side, 2 a row
    assert gif.shape[0] == 4
    left = 8 + 7 * 1  # the row labels' width
    first = torch.nn.functional.avg_pool2d(gif[2, :1, 2:66, left + 2 : left + 66], 2)
    torch.testing.assert_close(first, (clips[0, 2] * 255).round() / 255, atol=1 / 255, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "ddpm"])
def test_same_seed_same_clip_at_any_batch_size(video_model: tuple[Path, list[float]], sampler: str) -> None:
    pipe = Pipeline.load(video_model[0])
    clips = pipe.sample(labels=[1, 7, 7], steps=4, sampler=sampler, seed=3)
    assert clips.shape == (3, 4, 1, 32, 32) and 0 <= float(clips.min()) and float(clips.max()) <= 1
    one = pipe.sample(labels=[1, 7, 7], steps=4, sampler=sampler, seed=3, batch_size=1)
    # batched convolutions differ in the last bits; a barely trained net amplifies them in Heun's second evaluation
    # (measured: 7 of 12288 values by up to 1e-3), so Heun is held to 2e-3 on 0.1% of values and 1e-5 on the rest
    differ = (one - clips).abs()
    assert float(differ.max()) < (2e-3 if sampler == "heun" else 1e-5)
    assert float((differ > 1e-5).float().mean()) <= 1e-3
    assert float((clips[1] - clips[2]).abs().max()) > 1e-2  # clips 1 and 2 have their own noise


@pytest.mark.parametrize(
    "known, method", [([0, 1], "repaint"), ([0, 3], "repaint"), ([0, 1], "replace"), ([0, 1, 2, 3], "extend")]
)
def test_prediction_and_interpolation_keep_the_known_frames_bit_for_bit(
    video_model: tuple[Path, list[float]], known: list[int], method: str
) -> None:
    pipe = Pipeline.load(video_model[0])
    real = moving_digits(n=2, frames=4, seed=9, split="test")
    clips = (real.clips + 1) / 2 + torch.rand(2, 4, 1, 32, 32) * 1e-3  # values no 8-bit round trip would keep
    if method == "extend":  # past the model's 4 frames: the network takes 6
        clips = torch.cat([clips, torch.zeros(2, 2, 1, 32, 32)], dim=1)
    kw = {"method": "replace", "sampler": "ddim", "reconstruction_guidance": 2.0} if method == "replace" else {}
    kw = kw or {"jump_length": 2, "jump_n_sample": 2}
    out = fill_frames(pipe, clips, known, steps=4, seed=1, labels=real.labels.tolist(), **kw)
    assert out.shape == clips.shape
    assert torch.equal(out[:, known], clips[:, known])
    unknown = [f for f in range(clips.shape[1]) if f not in known]
    assert float((out[:, unknown] - clips[:, unknown]).abs().max()) > 1e-2  # drawn, not copied
    one = fill_frames(pipe, clips, known, steps=4, seed=1, labels=real.labels.tolist(), batch_size=1, **kw)
    torch.testing.assert_close(one, out, atol=1e-5, rtol=0)  # clip i: the noise of (seed, i) at any batch size


def test_fill_frames_on_the_command_line_predicts_and_keeps_the_given_frames(
    video_model: tuple[Path, list[float]], tmp_path: Path
) -> None:
    clip = quantised((moving_digits(n=1, frames=4, seed=11, split="test").clips[0] + 1) / 2)
    save_animation(clip, tmp_path / "given.gif", scale=1)
    out = tmp_path / "next.gif"
    common = ["--steps", "3", "--jump-length", "1", "--jump-n-sample", "1", "--no-progress"]
    result = run("fill-frames", video_model[0], "--clip", tmp_path / "given.gif", "--frames", 6, "--out", out, *common)
    assert result.exit_code == 0, result.output
    back = read_clip(out)
    assert back.shape == (6, 1, 32, 32) and torch.equal(back[:4], clip)  # 8-bit in, 8-bit out: bit for bit
    assert (tmp_path / "next-frames.png").is_file()
    given = ["fill-frames", video_model[0], "--clip", tmp_path / "given.gif"]
    assert_clear_error(run(*given, "--known-frames", "0-3", "--out", out), "--known-frames", "nothing to fill")
    assert_clear_error(run(*given, "--known-frames", "5", "--frames", 6, "--out", out), "--known-frames='5'")
    assert_clear_error(run(*given, "--frames", 6, "--out", tmp_path / "x.png"), "--out", ".gif or .webp")
    assert_clear_error(run("evaluate", video_model[0], "--num-samples", 10), "video model has no metrics")


def _write_movie(path: Path, frames: np.ndarray, codec: str, pix_fmt: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def test_movie_files_are_read_through_pyav(tmp_path: Path) -> None:
    """A lossless FFV1 movie comes back bit for bit; an MP4 (MPEG-4, lossy) with every frame, close to its source;
    a broken movie is one clear line."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 32, 48, 3), dtype=np.uint8)
    _write_movie(tmp_path / "exact.mkv", frames, "ffv1", "bgr0")
    clip = read_clip(tmp_path / "exact.mkv")
    assert clip.shape == (6, 3, 32, 48)
    assert np.array_equal(np.round(clip.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), frames)
    smooth = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None], 32, axis=1).repeat(3, axis=3)
    _write_movie(tmp_path / "lossy.mp4", np.repeat(smooth, 5, axis=0), "mpeg4", "yuv420p")
    lossy = read_clip(tmp_path / "lossy.mp4")
    assert lossy.shape == (5, 3, 32, 48)
    assert float((lossy.permute(0, 2, 3, 1) - torch.from_numpy(smooth[0] / 255.0)).abs().mean()) < 0.03
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a movie")
    with pytest.raises(DataError, match="cannot decode movie|no video stream|has no frames"):
        read_clip(tmp_path / "broken.mp4")
