"""Models people already have: diffusers folders and the Stable Diffusion family as diffusionlab pipelines (floor 4).

A diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` with its scheduler becomes a network plus a process: the
scheduler's betas are a ``DiscreteVPProcess`` (step k at t = (k + 1) / T) and its ``prediction_type`` a
parameterisation, so every sampler, guidance mode and task runs on it. A Stable Diffusion folder
(``model_index.json``: unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single-file checkpoint with a local
config folder is a latent text-to-image model: the VAE is the autoencoder (its own scaling factor), CLIP the text
encoder, the UNet the network. diffusers' and transformers' modules run the networks; this module is glue only.

``load_diffusers(folder)`` (and ``Pipeline.load``, which hands such folders here) reads one;
``DiffusersPipeline.save(folder)`` writes it back as a diffusers folder, weights bit for bit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import (
    DataConfig,
    DDPMProcessConfig,
    DiffusionConfig,
    LatentConfig,
    ModelConfig,
    NetworkConfig,
    SampleConfig,
    TextEncoderConfig,
)
from .denoisers import Coefficients, Conditioning, Denoiser, Prediction, _times
from .io import CheckpointError, load_json, make_dir_readable, save_json
from .networks.autoencoder import Autoencoder, DiffusersAutoencoder
from .networks.text import TextEmbedding
from .pipeline import Pipeline

__all__ = [
    "DiffusersUNet",
    "CLIPPromptEncoder",
    "SDXLPromptEncoder",
    "TimestepDenoiser",
    "DiffusersPipeline",
    "is_diffusers_folder",
    "load_diffusers",
    "load_single_file",
    "export_diffusers",
    "read_diffusers_config",
    "sd_config",
    "stable_diffusion_pipeline",
    "weights_file",
    "scheduler_process",
    "scheduler_parameterisation",
    "INPAINT_KEY",
]

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
SD_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
SDXL_PIPELINES = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)
PIXEL_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
# diffusers' beta_schedule -> our DDPM schedule (squaredcos_cap_v2 is Nichol & Dhariwal's cosine, max_beta 0.999)
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# diffusers' prediction_type -> our parameterisation (denoisers.PARAMETERISATIONS)
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SPACINGS = ("leading", "trailing", "linspace")
INPAINT_KEY = "inpaint_latents"  # the mask and masked-image latents an SD inpainting UNet takes beside x


# ------------------------------------------------------------------------------------------------ the scheduler
def scheduler_process(scheduler: dict[str, Any]) -> DDPMProcessConfig:
    """The scheduler's betas as our discrete VP process; one clear error for betas we cannot rebuild."""
    if scheduler.get("trained_betas") is not None:
        raise ValueError("the scheduler has trained_betas; expected beta_schedule linear, scaled_linear or cosine.")
    if scheduler.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True is not supported (its last step has alpha = 0).")
    name = scheduler.get("beta_schedule", "linear")
    if name not in SCHEDULES:
        raise ValueError(f"beta_schedule={name!r} is not supported; expected one of {sorted(SCHEDULES)}.")
    steps = int(scheduler.get("num_train_timesteps", 1000))
    if SCHEDULES[name] == "cosine":
        return DDPMProcessConfig(schedule="cosine", num_steps=steps)
    start, end = float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 2e-2))
    if name == "linear":  # our linear_betas scale their endpoints by 1000 / T; diffusers' do not
        start, end = start * steps / 1000, end * steps / 1000
    return DDPMProcessConfig(schedule=SCHEDULES[name], num_steps=steps, beta_start=start, beta_end=end)


def scheduler_parameterisation(scheduler: dict[str, Any]) -> str:
    """diffusers' ``prediction_type`` as our parameterisation's name."""
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise ValueError(f"prediction_type={kind!r} is not supported; expected one of {sorted(PREDICTIONS)}.")
    return PREDICTIONS[kind]


# ------------------------------------------------------------------------------------------------ the networks
class DiffusersUNet(nn.Module):
    """A diffusers UNet called as our networks are, ``network(x, timestep, **cond)``: ``text`` is the
    cross-attention input, ``inpaint_latents`` (mask + masked-image latents) is concatenated to x."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        cfg = unet.config
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels)
        self.conditional = type(unet).__name__ == "UNet2DConditionModel"
        self.inpaint_channels = self.in_channels - self.out_channels  # 5 for SD inpainting UNets, else 0
        # SDXL: the pooled text embedding rides as the last row of ``text`` (see SDXLPromptEncoder), the size and
        # crop conditioning (original size, crop top-left, target size) is fixed by the image size
        self.sdxl = cfg.get("addition_embed_type") == "text_time"
        self.pooled_dim = 0
        self.register_buffer("time_ids", torch.zeros(6), persistent=False)

    def set_image_size(self, size: int, pooled_dim: int) -> None:
        """SDXL's added conditioning for square images of ``size``: time ids (size, size, 0, 0, size, size)."""
        self.pooled_dim = pooled_dim
        self.time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32, device=self.time_ids.device)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        inpaint_latents: Tensor | None = None,
    ) -> Tensor:
        if self.inpaint_channels:
            if inpaint_latents is None:
                raise ValueError("this UNet is an inpainting UNet: use it through the inpaint task (it needs a mask).")
            x = torch.cat([x, inpaint_latents.to(x.dtype)], dim=1)
        dtype = self.unet.dtype  # fp16 / bf16 weights take inputs of their own dtype; the solver stays in fp32
        if self.conditional:
            if text is None:
                raise ValueError("this UNet is conditioned on text embeddings; none were given.")
            added = None
            if self.sdxl:
                pooled, text = text[:, -1, : self.pooled_dim], text[:, :-1]
                added = {"text_embeds": pooled.to(dtype), "time_ids": self.time_ids.expand(x.shape[0], -1).to(dtype)}
            out = self.unet(
                x.to(dtype), timestep, encoder_hidden_states=text.to(dtype), added_cond_kwargs=added, return_dict=False
            )[0]
        else:
            out = self.unet(x.to(dtype), timestep, return_dict=False)[0]
        return out.to(x.dtype)


class CLIPPromptEncoder(nn.Module):
    """Stable Diffusion's prompt encoding: CLIP tokens padded to the tokenizer's max length (77), the text
    model's last hidden states; called as ``TextEncoder`` is (``encoder(prompts) -> TextEmbedding``)."""

    def __init__(self, tokenizer: Any, model: nn.Module) -> None:
        super().__init__()
        self.tokenizer, self.model = tokenizer, model.eval().requires_grad_(False)
        self.max_length = int(tokenizer.model_max_length)
        self.dim = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        batch = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        ids = batch["input_ids"].to(self.device)
        use_mask = getattr(self.model.config, "use_attention_mask", False)
        mask = batch["attention_mask"].to(self.device) if use_mask else None
        hidden = self.model(ids, attention_mask=mask)[0]
        return TextEmbedding(hidden.float(), torch.ones(ids.shape, dtype=torch.bool, device=self.device))


class SDXLPromptEncoder(nn.Module):
    """SDXL's prompt encoding (diffusers' ``StableDiffusionXLPipeline.encode_prompt``): both CLIP encoders' penultimate
    hidden states side by side, and the second encoder's pooled projection, carried as one extra last row of the
    tokens (zero-padded) so guidance swaps it with the text; the empty prompt is all zeros when the model says
    ``force_zeros_for_empty_prompt`` (diffusers zeroes an absent negative prompt so)."""

    def __init__(self, tokenizers: Sequence[Any], models: Sequence[nn.Module], force_zeros: bool = True) -> None:
        super().__init__()
        self.tokenizers = list(tokenizers)
        self.models = nn.ModuleList(m.eval().requires_grad_(False) for m in models)
        self.force_zeros = force_zeros
        self.max_length = int(self.tokenizers[0].model_max_length)
        self.pooled_dim = int(self.models[1].config.projection_dim)
        self.dim = sum(int(m.config.hidden_size) for m in self.models)

    @property
    def device(self) -> torch.device:
        return next(self.models.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        hidden, pooled = [], None
        for tokenizer, model in zip(self.tokenizers, self.models, strict=True):
            ids = tokenizer(
                prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)  # fmt: skip
            out = model(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if out[0].ndim == 2:
                pooled = out[0]
        tokens = torch.cat(hidden, dim=-1).float()
        assert pooled is not None
        last = torch.nn.functional.pad(pooled.float(), (0, tokens.shape[-1] - pooled.shape[-1]))[:, None]
        tokens = torch.cat([tokens, last], dim=1)
        if self.force_zeros:
            empty = torch.tensor([p == "" for p in prompts], device=tokens.device)
            tokens = torch.where(empty[:, None, None], torch.zeros_like(tokens), tokens)
        return TextEmbedding(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


class TimestepDenoiser(Denoiser):
    """A denoiser whose network takes diffusers' timestep k = t T - 1 (float, exact on the training steps)
    instead of our c_noise; the rest is ``Denoiser``'s."""

    def forward_raw(self, x: Tensor, t: Tensor | float, cond: Conditioning = None) -> tuple[Tensor, Prediction]:
        t = _times(t, x)
        c = Coefficients(self.process, t, x)
        timestep = self.process.timestep(t).to(torch.float32)
        out = self.network(self.parameterisation.network_input(x, c), timestep, **dict(cond or {}))
        x0, eps = self.parameterisation.prediction(out, x, c)
        return out, Prediction(x, x0, eps, c.alpha, c.sigma)


# ------------------------------------------------------------------------------------------------ the pipeline
class DiffusersPipeline(Pipeline):
    """A pipeline around diffusers' modules: sampled, edited and served as any of ours; ``save`` writes a
    diffusers folder (``model_index.json`` and one sub-folder per component)."""

    def __init__(
        self,
        config: ModelConfig,
        unet: nn.Module,
        scheduler: dict[str, Any],
        autoencoder: Autoencoder | None = None,
        text_encoder: CLIPPromptEncoder | SDXLPromptEncoder | None = None,
        class_name: str = "DDPMPipeline",
    ) -> None:
        super().__init__(config, DiffusersUNet(unet), autoencoder=autoencoder)
        self._text_encoder = text_encoder  # type: ignore[assignment]
        self.scheduler = dict(scheduler)
        self.class_name = class_name

    @property
    def unet(self) -> nn.Module:
        return self.network.unet

    def denoiser(self, use_ema: bool = True) -> Denoiser:
        return TimestepDenoiser(self.denoiser_network(use_ema), self.process, self.parameterisation)

    def inpaint_condition(self, images: Tensor, fill: Tensor) -> dict[str, Tensor]:
        """What an SD inpainting UNet takes beside x (diffusers' StableDiffusionInpaintPipeline): the fill mask
        resized to the latents (nearest) and the latents of the images with the region to fill set to grey (0 in
        [-1, 1]); {} for a UNet that takes x alone. ``images`` in [0, 1], ``fill`` True where to fill."""
        if not self.network.inpaint_channels:
            return {}
        fill = fill.to(images.dtype).expand(images.shape[0], 1, *images.shape[-2:])
        masked = self.encode(images * (1 - fill) + 0.5 * fill)
        mask = torch.nn.functional.interpolate(fill, size=tuple(masked.shape[-2:]))
        return {INPAINT_KEY: torch.cat([mask, masked], dim=1)}

    def load_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Fuse LoRA weights (a diffusers / kohya ``.safetensors``, as shared for SD) into the UNet and the text
        encoder at ``scale``, through diffusers' loaders and peft; ``save`` then writes the fused model."""
        path = Path(path)
        if path.suffix != ".safetensors" or not path.is_file():
            raise CheckpointError(f"{path} is not a .safetensors file; expected LoRA weights.")
        if not isinstance(self._text_encoder, CLIPPromptEncoder):
            raise ValueError("LoRA weights are loaded into Stable Diffusion 1.x / 2.x models (not SDXL yet).")
        diffusers = _import_diffusers()
        try:
            import peft  # noqa: F401
        except ImportError:
            raise CheckpointError("loading LoRA weights needs peft: pip install peft.") from None
        enc = self._text_encoder
        sd = diffusers.StableDiffusionPipeline(
            vae=self.autoencoder.network.vae, text_encoder=enc.model, tokenizer=enc.tokenizer, unet=self.unet,
            scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
        try:
            sd.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="lora")
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            reason = str(err).splitlines()[0]
            raise CheckpointError(f"{path} holds no LoRA weights for this model ({reason}).") from None
        sd.fuse_lora(lora_scale=float(scale), adapter_names=["lora"])
        sd.unload_lora_weights()  # the fused weights stay; peft's layers go

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write a diffusers folder that ``load_diffusers`` (and diffusers) read back, weights bit for bit; the
        files go to a temporary folder first, ``model_index.json`` last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=folder))
        try:
            make_dir_readable(tmp)
            index: dict[str, Any] = {"_class_name": self.class_name, "_diffusers_version": _diffusers_version()}
            self.unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
            index["unet"] = ["diffusers", type(self.unet).__name__]
            (tmp / "scheduler").mkdir()
            save_json(self.scheduler, tmp / "scheduler" / SCHEDULER_CONFIG)
            index["scheduler"] = ["diffusers", self.scheduler.get("_class_name", "DDIMScheduler")]
            if self.autoencoder is not None:
                self.autoencoder.network.vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
                index["vae"] = ["diffusers", "AutoencoderKL"]
            if isinstance(self._text_encoder, SDXLPromptEncoder):
                enc2 = self._text_encoder
                for i, (model, tok) in enumerate(zip(enc2.models, enc2.tokenizers, strict=True)):
                    suffix = "" if i == 0 else "_2"
                    model.save_pretrained(str(tmp / f"text_encoder{suffix}"), safe_serialization=True)
                    tok.save_pretrained(str(tmp / f"tokenizer{suffix}"))
                    index[f"text_encoder{suffix}"] = ["transformers", type(model).__name__]
                    index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
                index["force_zeros_for_empty_prompt"] = enc2.force_zeros
            elif self._text_encoder is not None:
                enc = self._text_encoder
                enc.model.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
                enc.tokenizer.save_pretrained(str(tmp / "tokenizer"))
                index["text_encoder"] = ["transformers", type(enc.model).__name__]
                index["tokenizer"] = ["transformers", "CLIPTokenizer"]
            for name in sorted(p.name for p in tmp.iterdir()):
                target = folder / name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp / name, target)
            save_json(index, folder / MODEL_INDEX)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def export_diffusers(pipe: Pipeline, folder: str | os.PathLike[str]) -> None:
    """Write a pipeline as a diffusers folder: imported models (weights bit for bit); a network trained here is
    refused with one line, since none of ours maps onto a diffusers UNet (see the message)."""
    if not isinstance(pipe, DiffusersPipeline):
        raise ValueError(
            f"a {pipe.config.network.kind} network trained here does not map to diffusers: it takes the noise level "
            "c_noise = -log-SNR / 8 where diffusers' UNets take the timestep k, and its blocks are not diffusers'; "
            "only models imported from diffusers folders or single files are exported."
        )
    pipe.save(folder)


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


# ------------------------------------------------------------------------------------------------ reading folders
def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}; expected {what}.")
    data = load_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; expected {what}.")
    return data


def is_diffusers_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a diffusers pipeline folder (``model_index.json``) or a diffusers UNet folder."""
    folder = Path(folder)
    if (folder / MODEL_INDEX).is_file():
        return True
    try:
        cfg = load_json(folder / "config.json")
    except CheckpointError:
        return False
    return isinstance(cfg, dict) and cfg.get("_class_name") in UNET_CLASSES


def _import_diffusers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import diffusers
    except ImportError:
        raise CheckpointError("loading a diffusers folder needs diffusers: pip install diffusers.") from None
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return diffusers


def _from_pretrained(cls: Any, folder: Path, what: str) -> Any:
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"{folder} is not a loadable {what} ({str(err).splitlines()[0]}).") from None


def _scheduler_of(folder: Path) -> dict[str, Any]:
    for where in (folder / "scheduler", folder.parent / "scheduler"):
        if (where / SCHEDULER_CONFIG).is_file():
            return _json(where / SCHEDULER_CONFIG, "a diffusers scheduler config")
    raise CheckpointError(
        f"{folder} has no scheduler/{SCHEDULER_CONFIG} (in it or beside it); expected the UNet's scheduler config."
    )


def _check_unet(config: dict[str, Any], folder: Path, sdxl: bool = False) -> None:
    name = config.get("_class_name")
    if name not in UNET_CLASSES:
        raise CheckpointError(f"{folder} holds a diffusers {name}; expected one of {UNET_CLASSES}.")
    added = config.get("addition_embed_type")
    if (
        config.get("num_class_embeds")
        or config.get("class_embed_type")
        or (added and not (sdxl and added == "text_time"))
    ):
        raise CheckpointError(
            f"{folder}: UNets with class or added embeddings other than SDXL's (class-conditional, {added!r}) are "
            "not supported yet."
        )


def load_diffusers(
    folder: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DiffusersPipeline:
    """A diffusers folder as a pipeline: a Stable Diffusion folder (``model_index.json`` with unet/, vae/,
    text_encoder/, tokenizer/, scheduler/), a pixel UNet pipeline (unet/ + scheduler/) or a UNet folder with its
    scheduler/ inside or beside it. ``image_size`` overrides the size the model samples at (SD 1.x: 512)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; expected a diffusers model folder.")
    config = read_diffusers_config(folder, image_size)  # every check before any weights load
    diffusers = _import_diffusers()
    if config.latent is not None:
        from transformers import CLIPTextModel, CLIPTokenizer

        index = _json(folder / MODEL_INDEX, "a diffusers model_index.json")
        unet = _from_pretrained(diffusers.UNet2DConditionModel, folder / "unet", "diffusers UNet2DConditionModel")
        vae = _from_pretrained(diffusers.AutoencoderKL, folder / "vae", "diffusers AutoencoderKL")
        text_model = _from_pretrained(CLIPTextModel, folder / "text_encoder", "CLIP text model")
        tokenizer = _from_pretrained(CLIPTokenizer, folder / "tokenizer", "CLIP tokenizer")
        scheduler = _json(folder / "scheduler" / SCHEDULER_CONFIG, "a diffusers scheduler config")
        if index["_class_name"] in SDXL_PIPELINES:
            from transformers import CLIPTextModelWithProjection

            text_2 = _from_pretrained(CLIPTextModelWithProjection, folder / "text_encoder_2", "CLIP text model")
            tokenizer_2 = _from_pretrained(CLIPTokenizer, folder / "tokenizer_2", "CLIP tokenizer")
            encoder = SDXLPromptEncoder(
                [tokenizer, tokenizer_2], [text_model, text_2], bool(index.get("force_zeros_for_empty_prompt", True))
            )
            ae = Autoencoder(None, DiffusersAutoencoder(vae))
            ae.network.requires_grad_(False).eval()
            pipe = DiffusersPipeline(config, unet, scheduler, ae, encoder, index["_class_name"])
            pipe.network.set_image_size(config.data.image_size, encoder.pooled_dim)
        else:
            pipe = stable_diffusion_pipeline(
                unet, vae, text_model, tokenizer, scheduler, index["_class_name"], image_size, str(folder)
            )
    else:
        unet_dir = folder / "unet" if (folder / MODEL_INDEX).is_file() else folder
        name = load_json(folder / MODEL_INDEX)["_class_name"] if (folder / MODEL_INDEX).is_file() else "DDPMPipeline"
        unet = _from_pretrained(diffusers.UNet2DModel, unet_dir, "diffusers UNet2DModel")
        pipe = DiffusersPipeline(config, unet, _scheduler_of(unet_dir), class_name=name)
    if dtype is not None:
        for module in (pipe.network, pipe._text_encoder, pipe.autoencoder and pipe.autoencoder.network):
            if module is not None:
                module.to(dtype)
    return pipe.to(device)


def _sample_defaults(scheduler: dict[str, Any], guidance: float) -> SampleConfig:
    spacing = scheduler.get("timestep_spacing", "leading")
    return SampleConfig(
        sampler="ddim",
        steps=50,
        spacing=spacing if spacing in SPACINGS else None,
        guidance=guidance,
        thresholding="none",
    )


def _diffusion(scheduler: dict[str, Any]) -> DiffusionConfig:
    try:
        process = scheduler_process(scheduler)
        param = scheduler_parameterisation(scheduler)
    except ValueError as err:
        raise CheckpointError(f"the scheduler config: {err}") from None
    return DiffusionConfig(process=process, parameterisation=param)


def _size(sample_size: Any) -> int:
    return int(sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size)


def sd_config(
    unet: dict[str, Any],
    vae: dict[str, Any],
    text_dim: int,
    max_length: int,
    scheduler: dict[str, Any],
    image_size: int | None = None,
    source: str = "",
) -> ModelConfig:
    """The ModelConfig of a Stable Diffusion model from its components' configs alone (no weights read)."""
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    latent_channels = int(unet["out_channels"])
    if latent_channels != int(vae["latent_channels"]):
        raise CheckpointError(
            f"the UNet predicts {latent_channels} channels but the VAE's latents have {vae['latent_channels']}."
        )
    if int(unet["cross_attention_dim"]) != text_dim:
        raise CheckpointError(
            f"the UNet attends to {unet['cross_attention_dim']}-wide text but the text encoder gives {text_dim}."
        )
    return ModelConfig(
        space="latent_image",
        network=NetworkConfig(kind="unet", in_channels=latent_channels, text_dim=text_dim),
        diffusion=_diffusion(scheduler),
        data=DataConfig(
            dataset=source or "stable-diffusion",
            image_size=image_size or _size(unet["sample_size"]) * factor,
            channels=int(vae["in_channels"]),
        ),
        sample=_sample_defaults(scheduler, 7.5),
        text_encoder=TextEncoderConfig(name=source or "clip", max_length=max_length),
        latent=LatentConfig(autoencoder=source or None, scaling_factor=float(vae.get("scaling_factor", 0.18215))),
    )


def read_diffusers_config(folder: str | os.PathLike[str], image_size: int | None = None) -> ModelConfig:
    """The ModelConfig a diffusers folder loads as, from its JSON files only (the studio lists models this way)."""
    folder = Path(folder)
    index = _json(folder / MODEL_INDEX, "a diffusers model_index.json") if (folder / MODEL_INDEX).is_file() else {}
    sdxl = index.get("_class_name") in SDXL_PIPELINES
    if index.get("_class_name") in SD_PIPELINES or sdxl:
        parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        for part in (*parts, "text_encoder_2", "tokenizer_2") if sdxl else parts:
            if not (folder / part).is_dir():
                raise CheckpointError(
                    f"{folder} has no {part}/; a Stable Diffusion folder needs unet, vae, text_encoder, tokenizer "
                    "and scheduler."
                )
        unet = _json(folder / "unet" / "config.json", "a diffusers UNet config")
        _check_unet(unet, folder / "unet", sdxl)
        vae = _json(folder / "vae" / "config.json", "a diffusers AutoencoderKL config")
        if vae.get("shift_factor") is not None:
            raise CheckpointError(f"{folder}/vae has a shift_factor; expected an SD 1.x/2.x VAE (scaling only).")
        text = _json(folder / "text_encoder" / "config.json", "a CLIP text model config")
        width = int(text["hidden_size"])
        if sdxl:
            width += int(_json(folder / "text_encoder_2" / "config.json", "a CLIP text model config")["hidden_size"])
        tok_cfg = folder / "tokenizer" / "tokenizer_config.json"
        max_length = int(load_json(tok_cfg).get("model_max_length", 77)) if tok_cfg.is_file() else 77
        scheduler = _json(folder / "scheduler" / SCHEDULER_CONFIG, "a diffusers scheduler config")
        return sd_config(unet, vae, width, max_length + int(sdxl), scheduler, image_size, str(folder))
    if index and (index.get("_class_name") not in PIXEL_PIPELINES or not (folder / "unet").is_dir()):
        raise CheckpointError(
            f"{folder} holds a diffusers {index.get('_class_name')}; expected one of "
            f"{SD_PIPELINES + SDXL_PIPELINES + PIXEL_PIPELINES}."
        )
    unet_dir = folder / "unet" if index else folder
    unet = _json(unet_dir / "config.json", "a diffusers UNet config")
    _check_unet(unet, unet_dir)
    if unet["_class_name"] == "UNet2DConditionModel":
        raise CheckpointError(
            f"{unet_dir} is a text-conditional UNet; load its Stable Diffusion folder (with {MODEL_INDEX}, "
            "text_encoder/ and tokenizer/) instead."
        )
    scheduler = _scheduler_of(unet_dir)
    channels = int(unet.get("in_channels", 3))
    return ModelConfig(
        space="image",
        network=NetworkConfig(kind="unet", in_channels=channels),
        diffusion=_diffusion(scheduler),
        data=DataConfig(dataset=str(unet_dir), image_size=image_size or _size(unet["sample_size"]), channels=channels),
        sample=_sample_defaults(scheduler, 1.0).model_copy(update={"thresholding": "clip"}),
    )


def weights_file(folder: str | os.PathLike[str]) -> Path:
    """The UNet weights of a diffusers folder (what the studio hashes)."""
    folder = Path(folder)
    unet_dir = folder / "unet" if (folder / MODEL_INDEX).is_file() else folder
    return unet_dir / "diffusion_pytorch_model.safetensors"


def stable_diffusion_pipeline(
    unet: nn.Module,
    vae: nn.Module,
    text_model: nn.Module,
    tokenizer: Any,
    scheduler: dict[str, Any],
    class_name: str = "StableDiffusionPipeline",
    image_size: int | None = None,
    source: str = "",
) -> DiffusersPipeline:
    """A latent text-to-image pipeline from diffusers' and transformers' modules already built."""
    ae = Autoencoder(None, DiffusersAutoencoder(vae))
    ae.network.requires_grad_(False).eval()
    encoder = CLIPPromptEncoder(tokenizer, text_model)
    config = sd_config(
        dict(unet.config), dict(vae.config), encoder.dim, encoder.max_length, scheduler, image_size, source
    )
    return DiffusersPipeline(config, unet, scheduler, autoencoder=ae, text_encoder=encoder, class_name=class_name)


def load_single_file(
    path: str | os.PathLike[str],
    config: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DiffusersPipeline:
    """A single-file Stable Diffusion checkpoint (``.safetensors``, original or diffusers key names) with a local
    diffusers folder ``config`` that gives the architecture, tokenizer and scheduler (diffusers'
    ``from_single_file(..., config=)``); nothing is downloaded."""
    path, config = Path(path), Path(config)
    if path.suffix != ".safetensors" or not path.is_file():
        raise CheckpointError(f"{path} is not a .safetensors file; expected a single-file checkpoint.")
    index = _json(config / MODEL_INDEX, "a diffusers Stable Diffusion folder to take the configs from")
    name = index.get("_class_name")
    if name not in SD_PIPELINES:
        raise CheckpointError(f"{config} holds a diffusers {name}; expected one of {SD_PIPELINES}.")
    diffusers = _import_diffusers()
    cls = getattr(diffusers, name)
    try:
        sd = cls.from_single_file(str(path), config=str(config), local_files_only=True, safety_checker=None)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path} is not a loadable {name} checkpoint ({str(err).splitlines()[0]}).") from None
    scheduler = _json(config / "scheduler" / SCHEDULER_CONFIG, "a diffusers scheduler config")
    pipe = stable_diffusion_pipeline(
        sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, scheduler, name, image_size, str(path)
    )
    if dtype is not None:
        for module in (pipe.network, pipe._text_encoder, pipe.autoencoder.network):
            module.to(dtype)
    return pipe.to(device)
