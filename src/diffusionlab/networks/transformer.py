"""A transformer over token sequences for discrete diffusion, and the same code as an autoregressive baseline
(floor 1: knows nothing about diffusion).

Pre-LayerNorm blocks whose norms are modulated by the time (and class-label) embedding through adaptive layer
norm with zero-initialised gates, adaLN-Zero (DiT, Peebles & Xie 2023, sec. 3.2): every block is the identity
and the zero-initialised head outputs zero logits at initialisation. Positions enter only through rotary
embeddings of the queries and keys (RoFormer, Su et al. 2021, eq. 34), so attention scores depend on relative
positions only. Attention is bidirectional (MDLM's denoiser, Sahoo et al. 2024) or, with ``causal=True``, causal
(the autoregressive baseline of the same code, where the time input may be left out).

The parts are separable so that a patchified image version (DiT) is a small step: ``embed(tokens)`` maps inputs
to hidden states, ``condition(t, labels, batch)`` builds the conditioning vector, ``blocks(h, cond, ...)`` runs
the stack on any (B, N, width) hidden states, and ``head(h, cond)`` gives the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, add_label_embedding

__all__ = ["DiscreteTransformer", "TransformerBlock", "rotary_tables", "apply_rotary", "TIME_FEATURES", "MLP_RATIO"]

TIME_FEATURES = 256  # sinusoidal features of t before the time MLP (DiT's frequency_embedding_size)
MLP_RATIO = 4  # hidden width of each block's MLP, in multiples of the width (Vaswani et al. 2017; DiT)


def rotary_tables(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles m * theta_i, theta_i = base^(-2i/dim), i = 0..dim/2-1, for positions m:
    two (len(positions), dim // 2) float32 tensors (RoFormer, Su et al. 2021, eq. 15 and 34)."""
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {dim}.")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_{2i}, x_{2i+1}) of x (..., L, dim) by the angle of its position (RoFormer eq. 34):
    R(m) x = x * cos(m theta) + (-x_2, x_1, -x_4, x_3, ...) * sin(m theta); so <R(m) q, R(n) k> depends on m - n."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def _modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """DiT's adaptive layer norm: a normalised h scaled by (1 + scale) and shifted, per sample."""
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


class TransformerBlock(nn.Module):
    """A pre-LayerNorm transformer block with adaLN-Zero conditioning (DiT, Peebles & Xie 2023, sec. 3.2):
    shift, scale and a zero-initialised gate of both the attention and the MLP branch are regressed from cond."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(MLP_RATIO * width, width),
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self, h: Tensor, cond: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).chunk(6, dim=-1)
        b, n, width = h.shape
        qkv = self.qkv(_modulate(self.norm1(h), shift1, scale1))
        q, k, v = qkv.reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        h = h + gate1[:, None, :] * self.proj(out.transpose(1, 2).reshape(b, n, width))
        return h + gate2[:, None, :] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class DiscreteTransformer(nn.Module):
    """Transformer denoiser over token sequences: ``forward(tokens, t, labels=None, padding_mask=None)`` maps
    ids in [0, vocab_in) of shape (B, L <= max_len) to logits (B, L, vocab_out).

    Time t (B,) in [0, 1] enters through sinusoidal features and an MLP, plus an optional class label (-1 or
    ``num_classes``: the null label for classifier-free guidance), as adaLN-Zero modulation of every block
    (DiT). ``causal=True`` gives the autoregressive baseline of the same code (t may then be None: no time
    conditioning). ``padding_mask`` (B, L) is True on real tokens; padded positions are never attended to, their
    ids are not checked, and their logits are meaningless.

    ``time_conditioning=False`` drops the time input (MDLM's absorbing denoiser, Sahoo et al. 2024 sec. 3.2.1:
    x0_hat of a masked sequence does not depend on t), which makes the sampler's skip-when-unchanged cache exact.
    ``text_dim`` adds prompt conditioning: the masked mean of a text encoder's token embeddings ``text`` (B, T,
    text_dim) over ``text_mask`` (B, T), projected to the width and added to the conditioning vector (the pooled
    text embedding of SDXL, Podell et al. 2023 sec. 2.1, here the only text input).

    Parameters for ``C = num_classes or -1``, ``W = width``: ``vocab_in*W + (TIME_FEATURES+2)*W + W^2 + (C+1)*W
    + depth*(18*W^2 + 15*W) + 2*W^2 + 2*W + W*vocab_out + vocab_out``; without time conditioning minus the time
    MLP's ``(TIME_FEATURES+2)*W + W^2``; with text plus ``(text_dim+1)*W``.
    """

    def __init__(
        self,
        vocab_in: int,
        vocab_out: int,
        max_len: int,
        width: int = 256,
        depth: int = 6,
        heads: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
        causal: bool = False,
        time_conditioning: bool = True,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_in", vocab_in), ("vocab_out", vocab_out), ("max_len", max_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if depth < 1 or heads < 1 or width < 1:
            raise ValueError(f"width={width}, depth={depth} and heads={heads} must be positive integers.")
        if width % heads or (width // heads) % 2:
            raise ValueError(
                f"width={width} must be divisible by heads={heads} into an even head dimension (rotary pairs)."
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be a positive integer or None (unconditional).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1).")
        if text_dim is not None and (isinstance(text_dim, bool) or not isinstance(text_dim, int) or text_dim < 1):
            raise ValueError(f"text_dim={text_dim!r} must be a positive integer or None (no prompts).")
        self.vocab_in, self.vocab_out, self.max_len = vocab_in, vocab_out, max_len
        self.width, self.depth, self.heads = width, depth, heads
        self.num_classes, self.causal = num_classes, causal
        self.time_conditioning, self.text_dim = time_conditioning, text_dim

        self.token_embedding = nn.Embedding(vocab_in, width)
        self.time_embedding = NoiseLevelEmbedding(TIME_FEATURES, hidden=width) if time_conditioning else None
        self.text_projection = nn.Linear(text_dim, width) if text_dim else None
        self.label_embedding = LabelEmbedding(num_classes, width) if num_classes else None
        self.layers = nn.ModuleList([TransformerBlock(width, heads, dropout) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, vocab_out)
        cos, sin = rotary_tables(torch.arange(max_len), width // heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears with zero biases, N(0, 0.02) embeddings and time MLP,
        then adaLN modulations and the output head zeroed (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.table.weight, std=0.02)
        for layer in self.time_embedding.mlp if self.time_embedding is not None else ():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for linear in [block.modulation for block in self.layers] + [self.final_modulation, self.out]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def embed(self, tokens: Tensor) -> Tensor:
        """Hidden states (B, L, width) of token ids (B, L); positions enter later, through rotary attention."""
        return self.token_embedding(tokens)

    def condition(
        self,
        t: Tensor | None,
        labels: Tensor | None,
        batch: int,
        device: torch.device,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """The conditioning vector (B, width): time embedding (zero when t is None or the network takes no time),
        plus the label embedding, plus the projected mean of the prompt's token embeddings."""
        if t is None or self.time_embedding is None:
            cond = torch.zeros(batch, self.width, device=device)
        else:
            cond = self.time_embedding(t.expand(batch) if t.ndim == 0 else t)
        cond = add_label_embedding(cond, self.label_embedding, labels, "DiscreteTransformer")
        if self.text_projection is None:
            return cond
        if text is None:
            raise ValueError("this transformer is prompt-conditioned: give text (B, T, text_dim) and text_mask (B, T).")
        mask = torch.ones(text.shape[:2], device=text.device) if text_mask is None else text_mask.to(text.dtype)
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return cond + self.text_projection(pooled.to(self.text_projection.weight.dtype)).expand(batch, -1)

    def blocks(
        self,
        h: Tensor,
        cond: Tensor,
        padding_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Run the block stack on hidden states h (B, N, width) with cond (B, width); ``padding_mask`` (B, N) True
        on real positions; ``rope`` (cos, sin) of shape (N, head_dim // 2) defaults to positions 0..N-1."""
        n = h.shape[1]
        if rope is None:
            if n > self.max_len:
                raise ValueError(f"sequence length {n} exceeds this transformer's max_len={self.max_len}.")
            rope = (self.rope_cos[:n], self.rope_sin[:n])
        attn_mask, is_causal = None, self.causal
        if padding_mask is not None:
            # a query attends to real keys (and, only so that no row is empty, a padded query to itself)
            eye = torch.eye(n, dtype=torch.bool, device=h.device)
            allowed = padding_mask[:, None, :] | eye
            if self.causal:
                allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
            attn_mask, is_causal = allowed[:, None], False
        for layer in self.layers:
            h = layer(h, cond, rope, attn_mask, is_causal)
        return h

    def head(self, h: Tensor, cond: Tensor) -> Tensor:
        """Final adaptive layer norm and the zero-initialised linear head (DiT's final layer): (B, N, vocab_out)."""
        shift, scale = self.final_modulation(F.silu(cond)).chunk(2, dim=-1)
        return self.out(_modulate(self.final_norm(h), shift, scale))

    def forward(
        self,
        tokens: Tensor,
        t: Tensor | None = None,
        labels: Tensor | None = None,
        padding_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, L, vocab_out) of token ids (B, L) at times t (B,) (None: no time; causal models only), with
        optional labels (B,) (-1 = no label), padding_mask (B, L) (True = real token) and, for a prompt-conditioned
        network, the prompt's token embeddings text (B or 1, T, text_dim) with text_mask (B or 1, T)."""
        self._check_inputs(tokens, t, labels, padding_mask)
        if padding_mask is not None:
            tokens = tokens.masked_fill(~padding_mask, 0)
        h = self.embed(tokens)
        cond = self.condition(t, labels, tokens.shape[0], tokens.device, text, text_mask).to(h.dtype)
        return self.head(self.blocks(h, cond, padding_mask), cond)

    def _check_inputs(
        self, tokens: Tensor, t: Tensor | None, labels: Tensor | None, padding_mask: Tensor | None
    ) -> None:
        """One clear error for each kind of bad input."""
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(
                f"tokens must be an integer tensor of shape (batch, length), got {tokens.dtype} {tuple(tokens.shape)}."
            )
        b, n = tokens.shape
        if n < 1 or n > self.max_len:
            raise ValueError(f"sequence length {n} must lie in [1, max_len={self.max_len}].")
        if padding_mask is not None:
            if padding_mask.dtype != torch.bool or padding_mask.shape != tokens.shape:
                raise ValueError(
                    f"padding_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)} (True = real "
                    f"token), got {padding_mask.dtype} {tuple(padding_mask.shape)}."
                )
        real = tokens if padding_mask is None else tokens[padding_mask]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.vocab_in):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_in - 1}] (vocab_in={self.vocab_in}), "
                f"got ids from {int(real.min())} to {int(real.max())}."
            )
        if t is None:
            if not self.causal and self.time_conditioning:
                raise ValueError("t is required: only a causal (autoregressive) transformer runs without a time.")
        elif t.ndim > 1 or (t.ndim == 1 and t.shape[0] != b) or not t.dtype.is_floating_point:
            raise ValueError(f"t must be a float tensor of shape ({b},) or a scalar, got {t.dtype} {tuple(t.shape)}.")
        if labels is not None and self.label_embedding is not None:
            if labels.shape != (b,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"labels must be an integer tensor of shape ({b},), got {labels.dtype} {tuple(labels.shape)}."
                )
            if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) > self.num_classes):
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes - 1}], or be -1 (or {self.num_classes}) for no label; "
                    f"got labels from {int(labels.min())} to {int(labels.max())}."
                )
