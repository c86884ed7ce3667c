"""The discrete samplers with exact answers: an oracle for i.i.d. categorical data gives tokens distributed as p;
the same seed gives the same tokens at any batch size; the cache changes nothing but the number of model calls;
infilling keeps the given tokens; tiny top-p and zero temperature give the argmax; guidance mixes as promised."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from diffusionlab.discrete.processes import AbsorbingProcess, make_process
from diffusionlab.discrete.sampling import guided_log_probs, sample_tokens, x0_probs

K = 5
P = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small tensors: one thread."""


class Counting:
    """A model that counts its calls and the rows it evaluated; ``context`` > 0 makes each token's logits depend
    on its left neighbour (so a wrong cache would show), and labels in ``cond`` pick the class distribution."""

    def __init__(self, context: float = 0.0) -> None:
        self.calls = 0
        self.rows = 0
        self.context = context

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        self.calls += 1
        self.rows += x_t.shape[0]
        logits = P.log().expand(*x_t.shape, K).clone()
        if self.context:
            left = torch.nn.functional.pad(x_t, (1, 0), value=K)[:, :-1]  # MASK (or nothing) to the left
            logits = logits + self.context * torch.nn.functional.one_hot(left, K + 1)[..., :K].float()
        return logits


def _chi2(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens.flatten(), minlength=len(probs))
    assert len(counts) == len(probs), f"tokens outside 0..{len(probs) - 1}: {counts.tolist()}"
    return float(
        chisquare(counts.double().numpy(), (probs.double() / probs.double().sum() * counts.sum()).numpy()).pvalue
    )


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_oracle_samples_have_the_data_distribution(name: str) -> None:
    process = make_process(name, K, "loglinear")
    x = sample_tokens(process, Counting(), (64, 64), 50, seed=1)
    assert x.shape == (64, 64) and x.dtype == torch.long
    assert int((x >= K).sum()) == 0  # no MASK left
    assert _chi2(x, P) > 1e-3


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_same_seed_same_tokens_at_any_batch_size(name: str) -> None:
    process = make_process(name, K, "cosine")
    model = Counting(context=1.5)
    one = sample_tokens(process, model, (1, 24), 20, seed=9)
    eight = sample_tokens(process, model, (8, 24), 20, seed=9)
    assert torch.equal(one[0], eight[0])
    assert torch.equal(sample_tokens(process, model, (2, 24), 20, seed=9, indices=[5, 3]), eight[[5, 3]])
    assert not torch.equal(eight[0], eight[1])
    assert not torch.equal(sample_tokens(process, model, (1, 24), 20, seed=10)[0], one[0])


def test_cache_gives_identical_tokens_with_fewer_calls() -> None:
    """MDLM's cache: a sample whose tokens did not change is not evaluated again; the tokens are the same as when
    the model is called at every step (the model ignores t, as MDLM's), with a context-dependent model."""
    process = AbsorbingProcess(K, "loglinear")
    cached, every = Counting(context=2.0), Counting(context=2.0)
    a = sample_tokens(process, cached, (4, 16), 200, seed=5, cache=True)
    b = sample_tokens(process, every, (4, 16), 200, seed=5, cache=False)
    assert torch.equal(a, b)
    assert every.calls == 200 and every.rows == 800
    # at most one evaluation per change of a sample's tokens, plus the first: <= 16 + 1 per sample
    assert cached.calls < 200 and cached.rows <= 4 * 17


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_infilling_keeps_the_given_tokens(name: str) -> None:
    process = make_process(name, K, "loglinear")
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(6, 20, generator=g) < 0.4
    given = torch.where(keep, torch.randint(K, (6, 20), generator=g), torch.full((6, 20), 99))  # 99: ignored
    seen = []
    x = sample_tokens(
        process,
        Counting(context=1.0),
        (6, 20),
        30,
        seed=2,
        keep=keep,
        given=given,
        callback=lambda **kw: seen.append(kw),
    )
    assert torch.equal(x[keep], given[keep])
    assert len(seen) == 30 and all(torch.equal(step["x"][keep], given[keep]) for step in seen)
    assert [round(step["t"][0].item(), 6) for step in seen[:2]] == [round(1 - 1 / 30, 6), round(1 - 2 / 30, 6)]
    assert int((x >= K).sum()) == 0


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_tiny_top_p_and_zero_temperature_give_the_argmax(name: str) -> None:
    process = make_process(name, K, "cosine")
    argmax = torch.zeros(3, 12, dtype=torch.long)  # P's most likely class is 0
    assert torch.equal(sample_tokens(process, Counting(), (3, 12), 10, seed=4, top_p=1e-6), argmax)
    assert torch.equal(sample_tokens(process, Counting(), (3, 12), 10, seed=4, temperature=0.0), argmax)
    assert torch.equal(sample_tokens(process, Counting(), (3, 12), 10, seed=4, temperature=1e-3), argmax)


def test_x0_probs_temperature_and_nucleus() -> None:
    logits = P.log()
    torch.testing.assert_close(x0_probs(logits), P)
    torch.testing.assert_close(x0_probs(logits, temperature=0.5), P**2 / (P**2).sum())
    # top_p = 0.6: 0.4 < 0.6 so the second class (0.25) joins, 0.65 >= 0.6 stops there
    torch.testing.assert_close(x0_probs(logits, top_p=0.6), torch.tensor([0.4, 0.25, 0, 0, 0]) / 0.65)
    torch.testing.assert_close(x0_probs(logits, top_p=0.35), torch.tensor([1.0, 0, 0, 0, 0]))


def test_classifier_free_guidance() -> None:
    """guided = uncond + w (cond - uncond) in log space: w = 1 is the conditional model, w = 0 the unconditional
    one, and w = 2 samples p_u (p_c / p_u)^2 (normalised)."""
    p_c = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])

    def model(x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.where((labels >= 0)[:, None, None], p_c, P)
        return probs.log().expand(*x_t.shape, K).contiguous()

    process = AbsorbingProcess(K, "loglinear")
    labels = torch.zeros(64, dtype=torch.long)
    w2 = P * (p_c / P) ** 2
    torch.testing.assert_close(guided_log_probs(p_c.log(), P.log(), 2.0).exp(), w2 / w2.sum())
    conditional = sample_tokens(process, model, (64, 48), 20, seed=6, cond=labels)
    assert torch.equal(sample_tokens(process, model, (64, 48), 20, seed=6, cond=labels, guidance=1.0), conditional)
    assert _chi2(conditional, p_c) > 1e-3
    assert _chi2(sample_tokens(process, model, (64, 48), 20, seed=6, cond=labels, guidance=0.0), P) > 1e-3
    assert _chi2(sample_tokens(process, model, (64, 48), 20, seed=6, cond=labels, guidance=2.0), w2 / w2.sum()) > 1e-3


def test_one_step_unmasks_everything() -> None:
    x = sample_tokens(AbsorbingProcess(K), Counting(), (4, 30), 1, seed=0)
    assert int((x >= K).sum()) == 0


def test_bad_input_is_one_clear_error() -> None:
    process, model = AbsorbingProcess(K), Counting()
    keep = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"steps=0 must be a positive integer"):
        sample_tokens(process, model, (2, 4), 0, seed=0)
    with pytest.raises(ValueError, match=r"top_p=0\.0 must lie in \(0, 1\]"):
        sample_tokens(process, model, (2, 4), 5, seed=0, top_p=0.0)
    with pytest.raises(ValueError, match=r"temperature=-1\.0 must be a finite number >= 0"):
        sample_tokens(process, model, (2, 4), 5, seed=0, temperature=-1.0)
    with pytest.raises(ValueError, match=r"seed=-1 must be a non-negative integer"):
        sample_tokens(process, model, (2, 4), 5, seed=-1)
    with pytest.raises(ValueError, match=r"shape=\(2,\) must be \(batch, length\)"):
        sample_tokens(process, model, (2,), 5, seed=0)
    with pytest.raises(ValueError, match="infilling needs both keep"):
        sample_tokens(process, model, (2, 4), 5, seed=0, keep=keep)
    with pytest.raises(ValueError, match=r"given holds token id 7; expected ids 0\.\.4\."):
        sample_tokens(process, model, (2, 4), 5, seed=0, keep=~keep, given=torch.full((2, 4), 7))
    with pytest.raises(ValueError, match=r"guidance=3\.0 needs a condition"):
        sample_tokens(process, model, (2, 4), 5, seed=0, guidance=3.0)
    with pytest.raises(ValueError, match=r"the model returned logits of shape \(2, 4, 6\); expected \(2, 4, 5\)"):
        sample_tokens(process, lambda x, t, c: torch.zeros(*x.shape, K + 1), (2, 4), 5, seed=0)
    with pytest.raises(ValueError, match=r"3 indices were given for a batch of 2"):
        sample_tokens(process, model, (2, 4), 5, seed=0, indices=[0, 1, 2])
