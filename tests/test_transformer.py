"""DiscreteTransformer: adaLN-Zero at initialisation, padding, bidirectional vs causal attention, rotary positions,
time and label conditioning, overfitting a batch, batch independence, bad inputs."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from diffusionlab.networks.transformer import (
    TIME_FEATURES,
    DiscreteTransformer,
    apply_rotary,
    rotary_tables,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 7  # clean classes; the absorbing process's MASK is id K


def tiny(**kwargs: object) -> DiscreteTransformer:
    torch.manual_seed(0)
    options = dict(vocab_in=K + 1, vocab_out=K, max_len=16, width=32, depth=2, heads=2)
    options.update(kwargs)
    return DiscreteTransformer(**options)


def woken(**kwargs: object) -> DiscreteTransformer:
    """A tiny model whose zero-initialised layers (adaLN modulations, head) are drawn at random, as after training."""
    model = tiny(**kwargs)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation" in name or name.startswith("out."):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return model.eval()


def tokens(batch: int = 3, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K + 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_shape_and_exact_zero_logits_at_init() -> None:
    model = tiny()
    x, t = tokens(), torch.tensor([0.1, 0.5, 0.9])
    out = model(x, t)
    assert out.shape == (3, 10, K) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: every gate and the head are zero
    assert model.layers[0].modulation.weight.abs().sum() == 0


def test_parameter_count_formula() -> None:
    for num_classes in (None, 5):
        model = DiscreteTransformer(vocab_in=28, vocab_out=27, max_len=256, num_classes=num_classes)
        w, c, depth = 256, num_classes or -1, 6
        formula = (
            28 * w
            + (TIME_FEATURES + 2) * w
            + w * w
            + (c + 1) * w
            + depth * (18 * w * w + 15 * w)
            + 2 * w * w
            + 2 * w
            + w * 27
            + 27
        )
        assert sum(p.numel() for p in model.parameters()) == formula
    assert formula - 6 * 256 == 7_378_203  # the unconditional default for text8's 27 symbols + MASK
    free = DiscreteTransformer(vocab_in=28, vocab_out=27, max_len=256, num_classes=5, time_conditioning=False)
    prompted = DiscreteTransformer(vocab_in=28, vocab_out=27, max_len=256, num_classes=5, text_dim=384)
    assert sum(p.numel() for p in free.parameters()) == formula - (TIME_FEATURES + 2) * w - w * w
    assert sum(p.numel() for p in prompted.parameters()) == formula + (384 + 1) * w


def test_a_time_free_network_ignores_t_and_a_prompted_one_reads_its_prompt() -> None:
    x = tokens()
    free = woken(time_conditioning=False)
    assert torch.equal(free(x, torch.full((3,), 0.1)), free(x, torch.full((3,), 0.9)))
    assert torch.equal(free(x, torch.full((3,), 0.1)), free(x, None))
    model = woken(text_dim=8)
    text, mask = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2)), torch.ones(3, 5, dtype=torch.bool)
    t = torch.full((3,), 0.5)
    base = model(x, t, text=text, text_mask=mask)
    assert not torch.allclose(base, model(x, t, text=text.flip(0), text_mask=mask))
    padded = torch.cat([text, torch.randn(3, 2, 8)], 1), torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(x, t, text=padded[0], text_mask=padded[1]), base)  # padding is not read
    with pytest.raises(ValueError, match="prompt-conditioned: give text"):
        model(x, t)


@pytest.mark.parametrize("causal", [False, True])
def test_padded_positions_never_reach_real_ones(causal: bool) -> None:
    model = woken(causal=causal)
    x, t = tokens(2, 12), torch.tensor([0.3, 0.7])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False  # right padding
    mask[1, [2, 5, 11]] = False  # padding anywhere
    other = x.clone()
    other[~mask] = (x[~mask] + 3) % (K + 1)
    with torch.no_grad():
        a, b = model(x, t, padding_mask=mask), model(other, t, padding_mask=mask)
        assert (a[mask] - b[mask]).abs().max() <= 1e-6
        # the stack itself: arbitrary hidden states at padded positions leave the real ones unchanged
        h = model.embed(x)
        cond = model.condition(t, None, 2, x.device)
        noisy = h.clone()
        noisy[~mask] = 10 * torch.randn(int((~mask).sum()), model.width)
        ha, hb = model.blocks(h, cond, mask), model.blocks(noisy, cond, mask)
        assert (ha[mask] - hb[mask]).abs().max() <= 1e-6
        assert (ha[~mask] - hb[~mask]).abs().max() > 1e-2  # the padded ones did change
        # a right-padded sequence gives the logits of the same sequence without padding
        short = model(x[:1, :8], t[:1])
        assert (a[0, :8] - short[0]).abs().max() <= 1e-5
        if not causal:  # without the mask, the padding would leak in (a causal model never sees it here)
            assert (model(x, t)[0, :8] - short[0]).abs().max() > 1e-3


def test_bidirectional_sees_the_future_and_causal_does_not() -> None:
    x, t = tokens(1, 10), torch.tensor([0.5])
    later = x.clone()
    later[0, -1] = (x[0, -1] + 1) % (K + 1)
    with torch.no_grad():
        bidi = woken()
        assert (bidi(x, t)[0, 0] - bidi(later, t)[0, 0]).abs().max() > 1e-4
        causal = woken(causal=True)
        a, b = causal(x, t), causal(later, t)
        assert torch.equal(a[0, :-1], b[0, :-1])
        assert (a[0, -1] - b[0, -1]).abs().max() > 1e-4
        # the autoregressive baseline also runs without a time input (no time conditioning)
        assert causal(x).shape == (1, 10, K)
        mask = torch.ones(1, 10, dtype=torch.bool)
        assert torch.allclose(causal(x, t, padding_mask=mask), a, atol=1e-6)  # the explicit-mask path agrees


def test_time_conditioning_matters_after_training_steps() -> None:
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = tokens(4, 10), tokens(4, 10, seed=1) % K
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    probe = tokens(1, 10, seed=2)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x, t).reshape(-1, K), target.reshape(-1)).backward()
        opt.step()

    def gap() -> float:
        with torch.no_grad():
            return float((model(probe, torch.tensor([0.1])) - model(probe, torch.tensor([0.9]))).abs().max())

    step()
    # adaLN-Zero: the first step's gradient reaches only the head (everything upstream meets its zero weight)
    assert gap() == 0.0
    with torch.no_grad():
        assert float(model(probe, torch.tensor([0.1])).abs().max()) > 1e-3
    step()
    assert gap() > 1e-4


def test_rotary_is_eq34_and_scores_depend_on_relative_position_only() -> None:
    gen = torch.Generator().manual_seed(0)
    dim = 16
    q, k = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)

    def rotate(x: torch.Tensor, m: int) -> torch.Tensor:
        cos, sin = rotary_tables(torch.tensor([m]), dim)
        return apply_rotary(x[None], cos, sin)[0]

    # eq. 34 as an explicit block-diagonal rotation matrix R(m) with theta_i = 10000^(-2i/d)
    m = 7
    rot = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(dim // 2):
        a = m * 10000 ** (-2 * i / dim)
        rot[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
            [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        )
    assert torch.allclose(rotate(q, m).double(), rot @ q.double(), atol=1e-5)

    def score(m: int, n: int) -> float:
        return float(rotate(q, m) @ rotate(k, n))

    for m, n in [(0, 3), (5, 2), (9, 9)]:
        for shift in (1, 4, 37, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(0, 3) - score(0, 4)) > 1e-2  # the score does depend on the offset m - n
    assert float(rotate(q, 11).norm()) == pytest.approx(float(q.norm()), rel=1e-6)  # a rotation


def test_label_minus_one_is_the_null_label() -> None:
    model = woken(num_classes=3)
    x, t = tokens(2, 6), torch.tensor([0.4, 0.4])
    with torch.no_grad():
        none = model(x, t)
        assert torch.equal(model(x, t, labels=torch.tensor([-1, -1])), none)
        assert torch.equal(model(x, t, labels=torch.tensor([3, 3])), none)  # the null id num_classes
        mixed = model(x, t, labels=torch.tensor([0, -1]))
        assert (mixed[0] - none[0]).abs().max() > 1e-4
        assert torch.equal(mixed[1], none[1])
        null_row = model.label_embedding.table.weight[model.label_embedding.null_label]
        assert torch.equal(
            model.condition(t, torch.tensor([-1, 2]), 2, x.device)[0], model.condition(t, None, 2, x.device)[0]
        )
        cond = model.condition(t, None, 2, x.device)
        assert torch.allclose(cond - model.time_embedding(t), null_row.expand(2, -1), atol=1e-7)


def test_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = DiscreteTransformer(vocab_in=K + 1, vocab_out=K, max_len=16, width=32, depth=2, heads=2)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, K, (8, 16), generator=gen)
    masked = torch.rand(8, 16, generator=gen) < 0.5
    xt = torch.where(masked, torch.full_like(x0, K), x0)  # absorbing corruption, held fixed
    t = torch.rand(8, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = F.cross_entropy(model(xt, t).reshape(-1, K), x0.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(K), abs=1e-6)  # zero logits at initialisation
    assert losses[-1] < 0.1 * losses[0], losses[-1]
    assert time.perf_counter() - start < 30


def test_batch_independence_in_eval_mode() -> None:
    model = woken(dropout=0.1, num_classes=3)
    x, t, labels = tokens(4, 9), torch.tensor([0.1, 0.3, 0.6, 0.9]), torch.tensor([0, 1, -1, 2])
    with torch.no_grad():
        full = model(x, t, labels)
        others = x.clone()
        others[1:] = tokens(3, 9, seed=5)
        changed = model(others, torch.tensor([0.1, 0.8, 0.2, 0.5]), torch.tensor([0, 2, 2, 1]))
        assert (full[0] - changed[0]).abs().max() <= 1e-6
        alone = model(x[:1], t[:1], labels[:1])
        assert (full[0] - alone[0]).abs().max() <= 1e-5
        model.train()  # dropout is active in training mode only
        assert (model(x, t, labels) - full).abs().max() > 1e-4


def _bad(model: DiscreteTransformer, **kwargs: object) -> str:
    args = dict(tokens=tokens(2, 6), t=torch.tensor([0.5, 0.5]))
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        model(**args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_inputs_are_one_clear_error() -> None:
    model = tiny(num_classes=3)
    assert "[0, 7]" in _bad(model, tokens=torch.full((2, 6), K + 1))
    assert "-1" in _bad(model, tokens=torch.full((2, 6), -1))
    assert "max_len=16" in _bad(model, tokens=torch.zeros(2, 17, dtype=torch.long))
    assert "(batch, length)" in _bad(model, tokens=torch.zeros(2, 6, 1, dtype=torch.long))
    assert "(batch, length)" in _bad(model, tokens=torch.zeros(2, 6))
    assert "shape (2,)" in _bad(model, t=torch.tensor([0.5, 0.5, 0.5]))
    assert "t is required" in _bad(model, t=None)
    assert "padding_mask" in _bad(model, padding_mask=torch.ones(2, 5, dtype=torch.bool))
    assert "padding_mask" in _bad(model, padding_mask=torch.ones(2, 6))
    assert "labels" in _bad(model, labels=torch.tensor([0, 3 + 1]))
    assert "labels" in _bad(model, labels=torch.tensor([0]))
    assert "without num_classes" in _bad(tiny(), labels=torch.tensor([0, 1]))
    # ids at padded positions are not checked: any pad id works
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    x = tokens(2, 6)
    x[~mask] = -100
    assert model(x, torch.tensor([0.5, 0.5]), padding_mask=mask).shape == (2, 6, K)
    for kwargs, words in [
        (dict(width=30, heads=4), "divisible"),
        (dict(width=12, heads=4), "even head dimension"),
        (dict(vocab_in=0), "vocab_in=0"),
        (dict(max_len=0), "max_len=0"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(dropout=1.0), "dropout=1.0"),
    ]:
        with pytest.raises(ValueError, match=words):
            tiny(**kwargs)
