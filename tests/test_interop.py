"""diffusers folders and the Stable Diffusion family through our samplers and tasks (issue 20).

Every model here is tiny and random, built locally from configs (a UNet2DConditionModel, an AutoencoderKL, a
CLIPTextModel and a CLIPTokenizer whose vocabulary and merges are written by hand): nothing is downloaded. The
reference is diffusers' own ``StableDiffusionPipeline`` run on the same folder with the same initial latents.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusionlab.interop import (  # noqa: E402
    DiffusersPipeline,
    load_diffusers,
    scheduler_parameterisation,
    scheduler_process,
)
from diffusionlab.io import CheckpointError  # noqa: E402
from diffusionlab.pipeline import Pipeline  # noqa: E402
from diffusionlab.sampling import NoiseSource  # noqa: E402
from diffusionlab.tasks.img2img import img2img  # noqa: E402
from diffusionlab.tasks.inpaint import inpaint  # noqa: E402

SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
PROMPT, NEGATIVE, SIZE, LATENT = "a photo ab", "ba", 16, (4, 8, 8)


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table (the alphabet of CLIP's byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def tiny_tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer over single bytes plus the merge "ab", written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    words = [*chars, *(c + "</w>" for c in chars), "ab", "ab</w>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\na b</w>\n")
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
    )


def tiny_sd(folder: Path, unet_in: int = 4, seed: int = 0) -> Path:
    """A random Stable-Diffusion-shaped folder: 16x16 images, 4x8x8 latents, 32-wide CLIP text."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer(folder.parent / f"{folder.name}-tok")
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1,
            pad_token_id=len(tok) - 1,
        )
    )  # fmt: skip
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=unet_in, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        sample_size=SIZE, scaling_factor=0.7,
    )  # fmt: skip
    cls = diffusers.StableDiffusionInpaintPipeline if unet_in == 9 else diffusers.StableDiffusionPipeline
    sd = cls(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=diffusers.DDIMScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    sd.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def pipe(sd_folder: Path) -> Pipeline:
    return Pipeline.load(sd_folder)


# the diffusers scheduler of each of our solvers, set to compute what ours does: every one on the "trailing" grid
# (ours and theirs are the same timesteps), DDIM stepping to alpha = 1 at the end (ours ends on the data)
REFERENCE = {
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"}),
}


def _diffusers_images(folder: Path | Any, sampler: str, steps: int, n: int, seed: int, **kw: Any) -> Tensor:
    """diffusers' StableDiffusionPipeline on the same folder (or that pipeline), from our initial noise of (seed, i)."""
    name, options = REFERENCE[sampler]
    sd = (
        diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        if isinstance(folder, Path)
        else folder
    )
    sd.scheduler = getattr(diffusers, name).from_config(sd.scheduler.config, timestep_spacing="trailing", **options)
    sd.set_progress_bar_config(disable=True)
    sd.scheduler.set_timesteps(steps)
    # our x_T is in the VP frame; diffusers multiplies the latents it is given by init_noise_sigma, and Euler works
    # in the VE frame x / alpha (EDM eq. 4): give it x_T / alpha_T / init_noise_sigma
    t0 = (float(sd.scheduler.timesteps[0]) + 1) / 1000
    alpha = float(scheduler_process(SCHEDULER).build().alpha(t0)) if sampler == "euler" else 1.0
    x = NoiseSource(seed, range(n))(LATENT) / alpha / float(sd.scheduler.init_noise_sigma)
    out = sd(
        prompt=[PROMPT] * n, negative_prompt=[NEGATIVE] * n, num_inference_steps=steps, latents=x,
        output_type="pt", height=SIZE, width=SIZE, **kw,
    )  # fmt: skip
    return out.images


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("sampler", list(REFERENCE))
def test_sampling_matches_diffusers(pipe: Pipeline, sd_folder: Path, sampler: str) -> None:
    """Same folder, same initial noise, same timesteps, CFG 4 with a negative prompt: our solver on the imported
    model gives diffusers' StableDiffusionPipeline's images (VAE-decoded, in [0, 1]) within 1e-4."""
    kw = {"sampler": sampler, "steps": 4, "spacing": "trailing", "guidance": 4.0, "mixed_precision": "no"}
    ours = pipe.sample(2, prompt=PROMPT, negative_prompt=NEGATIVE, seed=3, **kw)
    theirs = _diffusers_images(sd_folder, sampler, 4, 2, 3, guidance_scale=4.0)
    assert ours.shape == theirs.shape == (2, 3, SIZE, SIZE)
    assert float((ours - theirs).abs().max()) < 1e-4
    other = _diffusers_images(sd_folder, sampler, 4, 2, 3, guidance_scale=1.5)  # the comparison can fail
    assert float((ours - other).abs().max()) > 1e-3


def test_the_scheduler_becomes_our_process() -> None:
    """scaled_linear betas are diffusers' alphas_cumprod exactly on the training steps; prediction types map."""
    sch = diffusers.DDIMScheduler(**SCHEDULER)
    process = scheduler_process(SCHEDULER).build()
    assert float((process.alphas_cumprod - sch.alphas_cumprod.double()).abs().max()) < 1e-6
    lin = {**SCHEDULER, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 500}
    ref = diffusers.DDIMScheduler(**lin).alphas_cumprod.double()
    assert float((scheduler_process(lin).build().alphas_cumprod - ref).abs().max()) < 1e-6
    assert [scheduler_parameterisation({"prediction_type": p}) for p in ("epsilon", "v_prediction", "sample")] == [
        "eps",
        "v",
        "x0",
    ]
    for bad, word in (({"prediction_type": "flow"}, "prediction_type='flow'"), ({"beta_schedule": "exp"}, "'exp'")):
        with pytest.raises(ValueError, match=word):
            scheduler_process({**SCHEDULER, **bad})
            scheduler_parameterisation({**SCHEDULER, **bad})


def test_same_seed_same_image_at_any_batch_size(pipe: Pipeline, sd_folder: Path) -> None:
    """Ours: image i depends on (seed, i) only, so images 0..3 drawn 4 at a time equal each drawn alone. diffusers
    draws one noise tensor for the batch from one generator: its image 2 of a batch of 4 is no image of a batch of
    1 with that seed (diffusers #6222)."""
    kw = {"prompt": PROMPT, "steps": 2, "spacing": "trailing", "guidance": 3.0, "seed": 7, "mixed_precision": "no"}
    four = pipe.sample(4, **kw)
    ones = torch.cat([pipe.sample(4, indices=[i], **kw) for i in range(4)])
    assert float((four - ones).abs().max()) < 1e-6
    sd = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    sd.set_progress_bar_config(disable=True)

    def theirs(n: int) -> Tensor:
        g = torch.Generator().manual_seed(7)
        return sd([PROMPT] * n, num_inference_steps=2, generator=g, output_type="pt", height=SIZE, width=SIZE).images

    one, batch = theirs(1), theirs(4)
    assert float((batch[0] - one[0]).abs().max()) < 1e-5  # diffusers' first image agrees ...
    assert float((batch[2] - one[0]).abs().max()) > 1e-2  # ... its others exist only inside that batch


def test_img2img_and_inpaint_keep_what_they_must(pipe: Pipeline) -> None:
    """img2img at a small strength stays near the input; inpainting keeps every unmasked pixel bit for bit after
    the decoded VAE output is pasted back (diffusers #3880)."""
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(SIZE, SIZE)
    mask[4:12, 4:12] = 1
    out = inpaint(pipe, images, mask, method="replace", sampler="ddim", steps=3, prompt=PROMPT, seed=0)
    keep = mask == 0
    assert torch.equal(out[:, :, keep], images[:, :, keep])
    assert float((out[:, :, ~keep] - images[:, :, ~keep]).abs().max()) > 1e-2
    edited = img2img(pipe, images, 0.3, steps=4, prompt=PROMPT, seed=0, mixed_precision="no")
    recon = pipe.decode(pipe.encode(images))
    assert edited.shape == images.shape and float((edited - recon).abs().mean()) < 0.2


def test_inpainting_unet_takes_the_mask(tmp_path: Path) -> None:
    """A 9-channel SD inpainting UNet gets the latent mask and the masked image's latents, as diffusers'
    StableDiffusionInpaintPipeline gives them; unmasked pixels stay exact."""
    folder = tiny_sd(tmp_path / "inpaint-sd", unet_in=9)
    pipe = Pipeline.load(folder)
    assert isinstance(pipe, DiffusersPipeline) and pipe.network.inpaint_channels == 5
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(SIZE, SIZE)
    mask[:, 8:] = 1
    cond = pipe.inpaint_condition(images, mask[None, None] > 0)["inpaint_latents"]
    assert cond.shape == (1, 5, 8, 8) and torch.equal(cond[0, 0, :, 4:], torch.ones(8, 4))
    assert float(cond[0, 0, :, :4].abs().max()) == 0.0
    masked = images.clone()
    masked[..., 8:] = 0.5
    torch.testing.assert_close(cond[:, 1:], pipe.encode(masked), rtol=0, atol=0)
    out = inpaint(pipe, images, mask, method="replace", sampler="ddim", steps=2, prompt=PROMPT, seed=0)
    assert torch.equal(out[..., :8], images[..., :8])
    with pytest.raises(ValueError, match="inpainting UNet"):
        pipe.sample(1, prompt=PROMPT, steps=1)


def test_export_import_round_trip_is_bit_identical(pipe: Pipeline, tmp_path: Path) -> None:
    """An imported model saved as a diffusers folder loads back with the same weights and the same samples."""
    pipe.save(tmp_path / "again")
    back = Pipeline.load(tmp_path / "again")
    for a, b in ((pipe.network, back.network), (pipe.autoencoder.network, back.autoencoder.network)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    kw = {"prompt": PROMPT, "steps": 2, "seed": 1, "mixed_precision": "no"}
    assert torch.equal(pipe.sample(2, **kw), back.sample(2, **kw))


def test_bad_folders_get_one_clear_line(tmp_path: Path, sd_folder: Path) -> None:
    """Not a diffusers folder, a missing component, an unsupported scheduler: one CheckpointError naming it."""
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_diffusers(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(CheckpointError, match="has no unet/"):
        load_diffusers(broken)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "vae": ["x", "y"]}))
    with pytest.raises(CheckpointError, match="FluxPipeline"):
        load_diffusers(odd)


def test_the_studio_serves_a_stable_diffusion_folder(tmp_path: Path) -> None:
    """The registry finds the folder by its model_index.json; a sample job gives the Python API's image."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from diffusionlab.server import create_app

    root = tmp_path / "models"
    root.mkdir()
    copy = tiny_sd(root / "sd-copy")
    client = TestClient(create_app(root, data_dir=tmp_path / "data"))
    listed = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert listed["sd-copy"]["kind"] == "latent_image" and listed["sd-copy"]["text"] is True
    assert client.get("/api/model?model=sd-copy").json()["tasks"] == ["sample", "img2img", "inpaint"]
    body = {"num_samples": 1, "prompt": PROMPT, "steps": 2, "seed": 4, "guidance": 2.0}
    job = client.post("/api/jobs/sample?model=sd-copy", json=body).json()
    for _ in range(3000):
        job = client.get(f"/api/jobs/{job['id']}").json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    assert job["state"] == "done", job
    png = client.get(f"/api/jobs/{job['id']}/files/{job['outputs']['files'][0]}").content
    expected = Pipeline.load(copy).sample(1, prompt=PROMPT, steps=2, seed=4, guidance=2.0)
    got = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(got, np.round(expected[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_a_single_file_checkpoint_imports_bit_for_bit(pipe: Pipeline, sd_folder: Path, tmp_path: Path) -> None:
    """The tiny model as one original-layout .safetensors (as community models are shared), imported by
    `diffusionlab import` with the folder as its config through diffusers' from_single_file: the same weights bit
    for bit and the same samples; a file that is not a .safetensors is one line."""
    from cli_helpers import assert_clear_error, run
    from ldm_checkpoint import clip_to_ldm, unet_to_ldm, vae_to_ldm
    from safetensors.torch import save_file

    state = {
        **unet_to_ldm(pipe.network.unet.state_dict(), layers_per_block=1),
        **vae_to_ldm(pipe.autoencoder.network.vae.state_dict(), levels=2),
        **clip_to_ldm(pipe.text_encoder.model.state_dict()),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tiny.safetensors"))
    result = run("import", tmp_path / "tiny.safetensors", "--config", sd_folder, "--out", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    back = Pipeline.load(tmp_path / "imported")
    pairs = [(pipe.network, back.network), (pipe.autoencoder.network, back.autoencoder.network)]
    for a, b in [*pairs, (pipe.text_encoder.model, back.text_encoder.model)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    kw = {"prompt": PROMPT, "steps": 2, "seed": 5, "mixed_precision": "no"}
    assert torch.equal(pipe.sample(1, **kw), back.sample(1, **kw))
    (tmp_path / "model.ckpt").write_bytes(b"x")
    bad = run("import", tmp_path / "model.ckpt", "--config", sd_folder, "--out", tmp_path / "no")
    assert_clear_error(bad, "model.ckpt is not a .safetensors file")


def test_lora_weights_fuse_as_diffusers_fuses_them(sd_folder: Path, tmp_path: Path) -> None:
    """A tiny LoRA (rank 4 on the UNet's attention, made with peft, saved by diffusers) fused by `diffusionlab
    import --lora` samples what diffusers' pipeline samples with the same LoRA fused at the same scale."""
    from cli_helpers import assert_clear_error, run
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    sd = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"])
    sd.unet.add_adapter(lora)
    for name, p in sd.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    layers = get_peft_model_state_dict(sd.unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=layers)
    weights = tmp_path / "pytorch_lora_weights.safetensors"
    result = run("import", sd_folder, "--out", tmp_path / "fused", "--lora", weights, "--lora-scale", "0.8")
    assert result.exit_code == 0, result.output
    ours = Pipeline.load(tmp_path / "fused")
    # 4 steps: diffusers' DDIM steps k -> k - T // N, off the "trailing" grid unless N divides T (diffusers #11347)
    kw = {"sampler": "ddim", "steps": 4, "spacing": "trailing", "guidance": 3.0, "mixed_precision": "no"}
    images = ours.sample(1, prompt=PROMPT, negative_prompt=NEGATIVE, seed=2, **kw)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    ref.load_lora_weights(str(tmp_path), weight_name=weights.name)
    ref.fuse_lora(lora_scale=0.8)
    ref.unload_lora_weights()  # the fused weights stay
    theirs = _diffusers_images(ref, "ddim", 4, 1, 2, guidance_scale=3.0)
    plain = Pipeline.load(sd_folder).sample(1, prompt=PROMPT, negative_prompt=NEGATIVE, seed=2, **kw)
    assert float((images - theirs).abs().max()) < 1e-4
    assert float((images - plain).abs().max()) > 1e-2  # the LoRA changed the model
    assert_clear_error(run("import", tmp_path / "x.safetensors", "--out", tmp_path / "no"), "--config")


def test_export_refuses_a_network_trained_here(tmp_path: Path, pipe: Pipeline) -> None:
    """Our UNet takes c_noise, diffusers' takes the timestep: one line, nothing written; an imported one exports."""
    from diffusionlab.config import DataConfig, ModelConfig
    from diffusionlab.interop import export_diffusers

    ours = Pipeline(ModelConfig(data=DataConfig(image_size=8, channels=1)))
    with pytest.raises(ValueError, match="unet network trained here does not map to diffusers"):
        export_diffusers(ours, tmp_path / "no")
    assert not (tmp_path / "no").exists()
    export_diffusers(pipe, tmp_path / "yes")
    assert json.loads((tmp_path / "yes" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_a_pixel_unet_folder_samples_what_diffusers_ddim_pipeline_samples(tmp_path: Path, prediction: str) -> None:
    """A UNet2DModel with its scheduler (DDPMPipeline folder; the bare unet/ folder with scheduler/ beside it too):
    our DDIM equals diffusers' DDIMPipeline from the same per-sample noise, for eps and v prediction."""
    from diffusionlab.sampling.noise import sample_seed

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )  # fmt: skip
    sched = diffusers.DDIMScheduler(
        beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, prediction_type=prediction,
        timestep_spacing="trailing",
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(tmp_path / "ddpm"))
    for folder in (tmp_path / "ddpm", tmp_path / "ddpm" / "unet"):
        pipe = Pipeline.load(folder)
        assert pipe.config.diffusion.parameterisation == {"epsilon": "eps", "v_prediction": "v"}[prediction]
        ours = pipe.sample(3, sampler="ddim", steps=4, spacing="trailing", thresholding="none", seed=5)
        ref = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
        ref.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(sample_seed(5, i)) for i in range(3)]
        out = ref(batch_size=3, generator=gens, num_inference_steps=4, eta=0.0, output_type="np").images
        theirs = torch.from_numpy(np.asarray(out))
        assert float((ours - theirs.permute(0, 3, 1, 2)).abs().max()) < 1e-4


def tiny_sdxl(folder: Path) -> Any:
    """A random SDXL-shaped folder: two CLIP encoders (32 + 32 wide, the second with a 32-wide projection), a UNet
    with SDXL's size/crop and pooled-text conditioning, 16x16 images."""
    torch.manual_seed(1)
    tok = tiny_tokenizer(folder.parent / f"{folder.name}-tok")
    clip = {
        "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": len(tok) - 2,
        "eos_token_id": len(tok) - 1, "pad_token_id": len(tok) - 1, "projection_dim": 32,
    }  # fmt: skip
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip))
    text_2 = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**clip))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        sample_size=SIZE, scaling_factor=0.13,
    )  # fmt: skip
    sd = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=diffusers.DDIMScheduler(**SCHEDULER),
    )  # fmt: skip
    sd.save_pretrained(str(folder), safe_serialization=True)
    return sd


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("negative", [NEGATIVE, None])
def test_sdxl_matches_diffusers(tmp_path: Path, negative: str | None) -> None:
    """SDXL: both encoders' penultimate states, the pooled projection and the size/crop time ids reach the UNet as
    diffusers' StableDiffusionXLPipeline gives them; with no negative prompt the unconditional branch is zeros
    (force_zeros_for_empty_prompt). Same images within 1e-4; the export round trip loads back."""
    sd = tiny_sdxl(tmp_path / "xl")
    pipe = Pipeline.load(tmp_path / "xl")
    kw = {"sampler": "ddim", "steps": 4, "spacing": "trailing", "guidance": 4.0, "mixed_precision": "no"}
    ours = pipe.sample(2, prompt=PROMPT, negative_prompt=negative, seed=3, **kw)
    sd.set_progress_bar_config(disable=True)
    sd.scheduler = diffusers.DDIMScheduler.from_config(sd.scheduler.config, timestep_spacing="trailing",
                                                       set_alpha_to_one=True)  # fmt: skip
    x = NoiseSource(3, range(2))(LATENT)
    theirs = sd(
        prompt=[PROMPT] * 2, negative_prompt=None if negative is None else [negative] * 2, num_inference_steps=4,
        guidance_scale=4.0, latents=x, output_type="pt", height=SIZE, width=SIZE,
    ).images  # fmt: skip
    assert float((ours - theirs).abs().max()) < 1e-4
    pipe.save(tmp_path / "again")
    assert torch.equal(Pipeline.load(tmp_path / "again").sample(1, prompt=PROMPT, seed=1, steps=2), pipe.sample(
        1, prompt=PROMPT, seed=1, steps=2))  # fmt: skip
