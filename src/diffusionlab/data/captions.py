"""The captioned digits: the embedded digits with several phrasings of a caption each ("a thick seven").

Captions name the class (as a word or a numeral) and, in some phrasings, the stroke weight: thick or thin,
relative to the median ink of the image's own class. ``HELDOUT_TEMPLATES`` are phrased with other words
and other synonyms than any training caption, to measure whether a text-conditioned model follows meaning
rather than memorised strings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ImageDataset
from .digits import load_digits_dataset

__all__ = [
    "DIGIT_WORDS",
    "CAPTION_TEMPLATES",
    "HELDOUT_TEMPLATES",
    "stroke_is_thick",
    "caption",
    "load_captioned_digits",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {word}: "seven"; {num}: "7"; {weight}: thick/thin; {stroke}: heavy/light
CAPTION_TEMPLATES = (
    "a {weight} {word}",
    "the digit {num}",
    "a handwritten {word}",
    "{word}, drawn with {stroke} strokes",
    "number {num}",
    "a {weight} handwritten {num}",
    "{word}",
)
# other phrasings and other attribute words: bold/fat for thick, fine/skinny for thin
HELDOUT_TEMPLATES = (
    "please draw the numeral {word}",
    "an image showing a {num}",
    "a {bold} {word} written by hand",
    "{word} in {bold} ink",
)
_WEIGHT = {True: "thick", False: "thin"}
_STROKE = {True: "heavy", False: "light"}
_HELDOUT_WEIGHT = {True: ("bold", "fat"), False: ("fine", "skinny")}


def stroke_is_thick(images: Tensor, labels: Tensor) -> Tensor:
    """True where an image holds more ink than the median image of its class (images in [-1, 1])."""
    ink = (images.flatten(1) + 1).sum(1)
    thick = torch.zeros(len(images), dtype=torch.bool)
    for c in labels.unique():
        sel = labels == c
        thick[sel] = ink[sel] > ink[sel].median()
    return thick


def caption(template: str, label: int, thick: bool, variant: int = 0) -> str:
    """One caption: a template filled with a class and a stroke weight (``variant`` picks a held-out synonym)."""
    if not 0 <= label < len(DIGIT_WORDS):
        raise ValueError(f"label {label} is not a digit 0..9.")
    bold = _HELDOUT_WEIGHT[thick][variant % 2]
    return template.format(word=DIGIT_WORDS[label], num=label, weight=_WEIGHT[thick], stroke=_STROKE[thick], bold=bold)


def load_captioned_digits(image_size: int = 16, split: str = "all") -> ImageDataset:
    """The digits (as ``load_digits_dataset``) with ``captions``: every training phrasing of each image."""
    ds = load_digits_dataset(image_size=image_size, split=split)
    full = load_digits_dataset(image_size=8, split=split)  # stroke weight is judged on the original pixels
    thick = stroke_is_thick(full.images, full.labels)
    captions = [[caption(t, int(y), bool(k)) for t in CAPTION_TEMPLATES] for y, k in zip(ds.labels, thick, strict=True)]
    return ImageDataset(ds.images, ds.labels, ds.class_names, ds.num_classes, captions)
