"""Text infilling: keep the given characters exactly, fill the blanks (floor 5).

The text inpainting of a masked diffusion model (MDLM; Sahoo et al. 2024): the sampler starts from the prompt with
its blanks masked and never changes a given token (``sample_tokens``' ``keep``/``given``). A prompt shorter than the
model's sequence is a prefix: blanks fill the rest (continuation); blanks first and text after is suffix
conditioning. One blank character stands for one token (one character for character and byte tokenizers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import DataError
from ..pipeline import Pipeline
from ..sampling.request import SampleRequest

__all__ = ["BLANK", "InfillPrompt", "parse_infill", "infill"]

BLANK = "_"  # the default blank character of an infilling prompt


@dataclass(frozen=True)
class InfillPrompt:
    """A prompt as the sampler takes it: tokens (L,) and which of them are given (True) or to fill (False)."""

    tokens: Tensor
    keep: Tensor

    @property
    def blanks(self) -> int:
        return int((~self.keep).sum())


def _check_blank(blank: str) -> str:
    if not isinstance(blank, str) or len(blank) != 1:
        raise ValueError(f"blank={blank!r} must be one character, e.g. '_'.")
    return blank


def _encode_segment(tokenizer: Any, text: str, start: int) -> list[int]:
    """The ids of a run of given characters, or one clear error naming the first character outside the alphabet
    by its position in the whole prompt."""
    try:
        return list(tokenizer.encode(text))
    except DataError:
        for i, ch in enumerate(text):
            try:
                tokenizer.encode(ch)
            except DataError:
                raise ValueError(
                    f"character {ch!r} (U+{ord(ch):04X}) at position {start + i} of the prompt is not in this "
                    f"model's alphabet ({tokenizer.vocab_size} symbols)."
                ) from None
        raise


def parse_infill(pipe: Pipeline, text: str, blank: str = BLANK) -> InfillPrompt:
    """A prompt with ``blank`` characters as the model's tokens and keep-mask, padded with blanks to the model's
    length; one clear error for a prompt that is too long, has characters outside the alphabet, or leaves nothing
    (or everything) to fill."""
    blank = _check_blank(blank)
    if not isinstance(text, str):
        raise ValueError(f"the prompt must be a str, got {type(text).__name__}.")
    length, tokenizer = pipe.sample_shape[0], pipe.space.tokenizer
    ids: list[int] = []
    keep: list[bool] = []
    start = 0
    for part_index, part in enumerate(text.split(blank)):
        if part_index:
            ids.append(0)
            keep.append(False)
        segment = _encode_segment(tokenizer, part, start) if part else []
        ids += segment
        keep += [True] * len(segment)
        start += len(part) + 1
    if len(ids) > length:
        raise ValueError(
            f"the prompt is {len(ids)} tokens long, longer than this model's sequences of {length} (data.seq_len)."
        )
    ids += [0] * (length - len(ids))
    keep += [False] * (length - len(keep))
    given = sum(keep)
    if given == length:
        raise ValueError(
            f"the prompt has no blank ({blank!r}) and fills the whole sequence of {length} tokens: nothing to fill."
        )
    if given == 0:
        raise ValueError("the prompt gives no characters, only blanks: nothing to keep; use `sample` instead.")
    return InfillPrompt(torch.tensor(ids, dtype=torch.long), torch.tensor(keep))


def infill(
    pipe: Pipeline,
    text: str,
    num_samples: int = 1,
    *,
    blank: str = BLANK,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **settings: Any,
) -> list[str]:
    """``num_samples`` completions of a prompt whose ``blank`` characters are filled (sample i from the random stream
    (seed, i), as in ``Pipeline.sample``); ``settings`` are the request's fields by name (``steps``, ``seed``,
    ``labels``, ``guidance``, ``temperature``, ``top_p``)."""
    if pipe.space.name != "tokens":
        raise ValueError(f"infilling fills the blanks of text; this is a {pipe.space.name} model (use inpaint).")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be a positive integer.")
    prompt = parse_infill(pipe, text, blank)
    given = sorted(k for k, v in settings.items() if v is not None)
    if request is not None and given:
        raise ValueError(f"give request= or the settings {given} by name, not both.")
    req = (request or SampleRequest.from_settings(**settings)).resolve(pipe.config.sample)
    pipe.family.check_sampler(req.sampler.sampler)
    keep = prompt.keep.expand(num_samples, -1)
    tokens = prompt.tokens.expand(num_samples, -1)
    filled = pipe.family.draw_tokens(
        pipe, req, num_samples, list(range(num_samples)), batch_size, keep=keep, given=tokens, progress=progress
    )
    return pipe.space.texts(filled)
