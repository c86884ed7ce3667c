"""A diffusers Stable Diffusion model as an original-layout (LDM / CompVis) single-file state dict, as community
checkpoints are shared: the inverse of diffusers' single-file converters, for the tests (issue 20)."""

from __future__ import annotations

from torch import Tensor

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)


def _renamed(rest: str, table) -> str:
    for new, old in table:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(state: dict[str, Tensor], layers_per_block: int) -> dict[str, Tensor]:
    """A UNet2DConditionModel's weights under the original ``model.diffusion_model.`` names (input/middle/output
    blocks), the inverse of diffusers' ``convert_ldm_unet_checkpoint``."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers, n = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], layers_per_block + 1
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if key in layers:
            new = layers[key]
        elif p[0] == "mid_block":
            j, rest = int(p[2]), ".".join(p[3:])
            new = f"middle_block.{2 * j}.{_renamed(rest, _RESNET)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
        elif p[2] in ("downsamplers", "upsamplers"):
            b = int(p[1])
            if p[0] == "down_blocks":
                new = f"input_blocks.{(b + 1) * n}.0.op.{p[-1]}"
            else:
                attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state)
                new = f"output_blocks.{b * n + n - 1}.{2 if attn else 1}.conv.{p[-1]}"
        else:
            b, j, rest = int(p[1]), int(p[3]), ".".join(p[4:])
            idx = 1 + b * n + j if p[0] == "down_blocks" else b * n + j
            where = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
            new = f"{where}.{idx}.0.{_renamed(rest, _RESNET)}" if p[2] == "resnets" else f"{where}.{idx}.1.{rest}"
        out["model.diffusion_model." + new] = value
    return out


_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def vae_to_ldm(state: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
    """An AutoencoderKL's weights under the original ``first_stage_model.`` names (attention as 1x1 convolutions),
    the inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if key in layers:
            new = layers[key]
        elif p[1] == "mid_block":
            rest = ".".join(p[4:])
            if p[2] == "resnets":
                new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{_renamed(rest, (('conv_shortcut', 'nin_shortcut'),))}"
            else:
                new = f"{p[0]}.mid.attn_1.{_renamed(rest, _VAE_ATTN)}"
                value = value[:, :, None, None] if value.ndim == 2 else value
        else:
            i = int(p[2])
            level = i if p[0] == "encoder" else levels - 1 - i
            word = "down" if p[0] == "encoder" else "up"
            if p[3] in ("downsamplers", "upsamplers"):
                new = f"{p[0]}.{word}.{level}.{word}sample.conv.{p[-1]}"
            else:
                rest = ".".join(p[5:])
                new = f"{p[0]}.{word}.{level}.block.{p[4]}.{_renamed(rest, (('conv_shortcut', 'nin_shortcut'),))}"
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CLIPTextModel's weights under SD 1.x's ``cond_stage_model.transformer.text_model.`` names."""
    return {
        "cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
        for k, v in state.items()
    }
