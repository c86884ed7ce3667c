"""The 1-D networks (UNet1D, DiffWave): shapes over lengths, clear errors, class conditioning with the null label,
zero-initialised outputs, and a denoising toy that a few Adam steps fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusionlab.networks.diffwave import DiffWave
from diffusionlab.networks.unet1d import SelfAttention1D, UNet1D

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_unet(**kw: object) -> UNet1D:
    return UNet1D(1, base_channels=16, **kw)


def _small_diffwave(**kw: object) -> DiffWave:
    return DiffWave(1, residual_channels=16, layers=6, dilation_cycle=3, **kw)


def _perturb(net: nn.Module) -> nn.Module:
    """Random weights everywhere (the zero-initialised output layers would hide what the labels do)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("length", [4, 64, 100, 1000])
def test_unet1d_keeps_the_shape_for_lengths_its_depth_allows(length: int) -> None:
    net = UNet1D(2, base_channels=8, channel_mults=(1, 2, 2), attention_levels=(1,), num_heads=2)
    x = torch.randn(3, 2, length)
    assert net(x, torch.rand(3)).shape == (3, 2, length)
    assert net(x, torch.tensor(0.5)).shape == (3, 2, length)


@pytest.mark.parametrize(
    ("mults", "length", "multiple"), [((1, 2, 2), 1001, 4), ((1, 2, 2), 2, 4), ((1, 2, 2, 2), 1004, 8)]
)
def test_unet1d_refuses_a_length_its_depth_does_not_allow(mults: tuple[int, ...], length: int, multiple: int) -> None:
    net = UNet1D(1, base_channels=8, channel_mults=mults)
    with pytest.raises(ValueError, match=rf"length {length} .*multiple of {multiple}"):
        net.check_input_length(length)
    with pytest.raises(ValueError, match=rf"length {length} "):
        net(torch.randn(1, 1, length), torch.rand(1))
    net.check_input_length(8 * multiple)


@pytest.mark.parametrize("length", [1, 1000, 1001])
def test_diffwave_takes_any_length(length: int) -> None:
    net = DiffWave(2, residual_channels=8, layers=4, dilation_cycle=2)
    assert net(torch.randn(2, 2, length), torch.rand(2)).shape == (2, 2, length)


@pytest.mark.parametrize("make", [_small_unet, _small_diffwave])
def test_a_wrong_input_shape_is_one_clear_error(make) -> None:
    net = make()
    with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, 1, length\), got \(2, 64\)"):
        net(torch.randn(2, 64), torch.rand(2))
    with pytest.raises(ValueError, match=r"got \(2, 3, 64\)"):
        net(torch.randn(2, 3, 64), torch.rand(2))


@pytest.mark.parametrize("make", [_small_unet, _small_diffwave])
def test_labels_change_the_output_and_the_null_label_equals_none(make) -> None:
    torch.manual_seed(0)
    net = _perturb(make(num_classes=3)).eval()
    x, c = torch.randn(4, 1, 64), torch.rand(4)
    with torch.no_grad():
        y0 = net(x, c, torch.zeros(4, dtype=torch.long))
        y1 = net(x, c, torch.ones(4, dtype=torch.long))
        y_null = net(x, c, torch.full((4,), -1, dtype=torch.long))
        y_none = net(x, c)
    assert (y0 - y1).abs().mean() > 1e-2 * y0.abs().mean()
    assert (y0 - y_null).abs().mean() > 1e-2 * y0.abs().mean()
    assert torch.equal(y_null, y_none)


@pytest.mark.parametrize("make", [_small_unet, _small_diffwave])
def test_a_network_without_classes_refuses_labels(make) -> None:
    with pytest.raises(ValueError, match="built without num_classes"):
        make()(torch.randn(2, 1, 64), torch.rand(2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("make", [_small_unet, _small_diffwave])
def test_the_initial_output_is_exactly_zero(make) -> None:
    net = make(num_classes=2)
    assert torch.equal(net(torch.randn(2, 1, 64), torch.rand(2), torch.tensor([0, 1])), torch.zeros(2, 1, 64))
    if isinstance(net, DiffWave):
        assert torch.equal(net.out.weight, torch.zeros_like(net.out.weight))


def test_diffwave_default_size_and_receptive_field() -> None:
    net = DiffWave(1)
    assert len(net.layers) == 20
    assert [layer.dilated.dilation[0] for layer in net.layers[:11]] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1]
    assert net.receptive_field == 1 + 2 * 2 * 1023
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 1.2e6


def test_self_attention_1d_matches_a_plain_softmax_attention() -> None:
    torch.manual_seed(0)
    att = _perturb(SelfAttention1D(8, num_heads=2))
    x = torch.randn(2, 8, 10)
    qkv = att.qkv(att.norm(x)).reshape(2, 3, 2, 4, 10)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, L)
    w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(4), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 8, 10)
    torch.testing.assert_close(att(x), x + att.proj(out), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [_small_unet, _small_diffwave])
def test_a_few_adam_steps_fit_a_denoising_toy(make) -> None:
    torch.manual_seed(0)
    net = make()
    t = torch.linspace(0, 1, 64)
    x0 = torch.stack([torch.sin(2 * math.pi * f * t + p) for f, p in [(2, 0.0), (3, 1.0), (5, 2.0), (4, 0.5)]])[:, None]
    c = torch.full((4,), 0.3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (net(x0 + 0.3 * torch.randn_like(x0), c) - x0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    # 18-48x over seeds 0-2; below half the noise variance, so better than returning the noisy input
    assert last < first / 10, (first, last)
    assert last < 0.3**2 / 2, last
