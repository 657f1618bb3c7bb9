"""A small causal language model of nanoGPT's kind, on a synthetic character corpus.

The recipe mirrors nanoGPT's CPU recipe for shakespeare_char: a context of 64 characters, batch 12,
4 layers, 4 heads, 128 wide, no dropout, AdamW at lr 1e-3 (betas 0.9, 0.99; weight decay 0.1 on
the matrices only), 2000 optimizer steps. Here one pass over the data is those 2000 steps: 24,000
windows of 64 tokens at batch 12. The unit is tokens (batch_size * 64 per batch).

The model is written here from scratch: token and position embeddings, pre-LayerNorm transformer
blocks (causal self-attention through ``F.scaled_dot_product_attention(is_causal=True)``, a GELU
MLP), a final LayerNorm and a linear head tied to the token embedding.

The corpus is downloaded from nowhere: it is sampled from a fixed, seeded order-2 Markov chain over
65 symbols (shakespeare_char's vocabulary size, so the loss starts near ln 65 = 4.17). Each symbol
has 10 likely successors (its "bigram" structure), and each pair of symbols allows 3-6 of those
(Dirichlet weights), so the last character already narrows the next one (2.11 nats) and the last
two narrow it to 1.15 nats, the entropy floor (``entropy_floor()`` computes it; 1.16 over a window,
whose first target has one symbol of context). A small GPT learns the bigram part in a few
hundred steps and the pair table slowly after that, so its quality depends on how many optimizer
steps it gets, as a real LM's does: a larger batch with the same learning rate takes fewer steps
per pass and ends visibly worse. ``evaluate`` reports the mean
cross-entropy on 256 held-out windows sampled from the same chain with another seed. On a 2-core
CPU the baseline (batch 12, 2000 steps, ~2 min) ends at a held-out loss of 1.30; batch 240 at the
same max_lr (100 steps) ends at 2.28, barely past the bigram level.

    autotune search --workload benchmarks/workloads/causal_lm.py:workload --timeout 3m
    autotune train --config best.yaml --workload benchmarks/workloads/causal_lm.py:workload
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from autotune import Workload

VOCAB = 65
BLOCK = 64  # tokens a window feeds the model; its target is the same window shifted by one
N_LAYER, N_HEAD, N_EMBD = 4, 4, 128
WINDOWS = 24_000  # 2000 optimizer steps at batch 12
STRIDE = BLOCK  # windows start every 64 tokens (each shares one token with the next)
HELD_OUT_WINDOWS = 256
FOLLOW = 10  # likely successors of each symbol
CHOICES = (3, 6)  # successors a pair of symbols allows, at least and at most
CHAIN_SEED, TRAIN_SEED, HELD_OUT_SEED = 0, 1, 2
STREAMS = 512  # independent runs of the chain, sampled side by side and joined end to end


@functools.lru_cache(maxsize=1)
def chain() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The order-2 chain: for context ``a * VOCAB + b``, the allowed next symbols ``successors[ctx]``
    (padded to CHOICES[1]), their probabilities ``probs[ctx]`` (0 on padding) and cumulative ``cdf``."""
    rng = np.random.default_rng(CHAIN_SEED)
    contexts = VOCAB * VOCAB
    # Each symbol's FOLLOW likely successors (distinct), then each pair picks k of its last symbol's.
    follow = np.argsort(rng.random((VOCAB, VOCAB)), axis=1)[:, :FOLLOW]
    last = np.arange(contexts) % VOCAB
    picks = np.argsort(rng.random((contexts, FOLLOW)), axis=1)[:, : CHOICES[1]]
    successors = np.take_along_axis(follow[last], picks, axis=1)
    k = rng.integers(CHOICES[0], CHOICES[1] + 1, size=contexts)
    weights = rng.standard_gamma(1.0, size=(contexts, CHOICES[1]))  # Dirichlet(1, ..., 1) once normalised
    weights[np.arange(CHOICES[1])[None, :] >= k[:, None]] = 0.0
    probs = weights / weights.sum(axis=1, keepdims=True)
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0 + 1e-9  # every draw below 1 lands on a real choice
    return successors, probs, cdf


def sample_corpus(length: int, seed: int) -> np.ndarray:
    """``length`` symbols (uint8) from the chain: STREAMS runs sampled side by side, joined end to end."""
    successors, _, cdf = chain()
    rng = np.random.default_rng(seed)
    streams = min(STREAMS, max(1, length // 256))
    steps = -(-length // streams)
    out = np.empty((streams, steps), dtype=np.int64)
    out[:, :2] = rng.integers(0, VOCAB, size=(streams, 2))
    draws = rng.random((steps, streams))
    for t in range(2, steps):
        context = out[:, t - 2] * VOCAB + out[:, t - 1]
        choice = (draws[t][:, None] >= cdf[context]).sum(axis=1)
        out[:, t] = successors[context, choice]
    return out.reshape(-1)[:length].astype(np.uint8)


def entropy_floor() -> dict[str, float]:
    """The chain's entropy rate in nats (order 2: the best loss with two symbols of context), and
    the best mean loss over a window (its first target has only one symbol of context)."""
    successors, probs, _ = chain()
    corpus = sample_corpus(200_000, HELD_OUT_SEED + 1).astype(np.int64)
    context = corpus[:-2] * VOCAB + corpus[1:-1]
    row_entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
    order2 = float(row_entropy[context].mean())
    # Order 1: the empirical distribution of the next symbol given only the last one.
    counts = np.zeros((VOCAB, VOCAB))
    np.add.at(counts, (corpus[:-1], corpus[1:]), 1)
    p1 = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    order1 = float(-(counts * np.log(np.where(p1 > 0, p1, 1.0))).sum() / counts.sum())
    unigram = np.bincount(corpus, minlength=VOCAB) / len(corpus)
    order0 = float(-(unigram * np.log(np.where(unigram > 0, unigram, 1.0))).sum())
    return {"order0": order0, "order1": order1, "order2": order2, "window": (order1 + (BLOCK - 1) * order2) / BLOCK}


def _windows_corpus(windows: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(sample_corpus((windows - 1) * STRIDE + BLOCK + 1, seed))


class CharWindows(torch.utils.data.Dataset):
    """Item i: (x, y) = (corpus[s : s+64], corpus[s+1 : s+65]) as int64, for s = i * STRIDE."""

    def __init__(self, windows: int = WINDOWS, seed: int = TRAIN_SEED) -> None:
        self.windows = windows
        self.corpus = _windows_corpus(windows, seed)  # uint8: 1.5 MB, cheap to send to workers

    def __len__(self) -> int:
        return self.windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.windows:
            raise IndexError(index)
        start = index * STRIDE
        chunk = self.corpus[start : start + BLOCK + 1].long()
        return chunk[:-1], chunk[1:]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.out = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # (batch, length, 3, heads, head width) -> three (batch, heads, length, head width)
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LayerNorm: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd)
        self.attention = CausalSelfAttention(n_embd, n_head)
        self.norm2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(), nn.Linear(4 * n_embd, n_embd, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """Tokens (batch, length) -> next-token logits (batch, length, VOCAB)."""

    def __init__(
        self, vocab: int = VOCAB, block: int = BLOCK, n_layer: int = N_LAYER, n_head: int = N_HEAD, n_embd: int = N_EMBD
    ) -> None:
        super().__init__()
        self.block = block
        self.token_embedding = nn.Embedding(vocab, n_embd)
        self.position_embedding = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.token_embedding.weight  # tied
        self.checkpointing = False
        # GPT-2 style initialisation: N(0, 0.02), the residual branches' output layers scaled down.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block_ in self.blocks:
            for layer in (block_.attention.out, block_.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * n_layer))

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in the backward pass (autotune's gradient_checkpointing)."""
        self.checkpointing = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block_ in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block_, x, use_reentrant=False)
            else:
                x = block_(x)
        return self.head(self.norm(x))


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _optimizer(params, lr: float, **kwargs) -> torch.optim.Optimizer:
    """AdamW, betas (0.9, 0.99); weight decay 0.1 on matrices (2-D and up), none on norms and biases."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.99), **kwargs)


@functools.lru_cache(maxsize=1)
def _held_out() -> tuple[torch.Tensor, torch.Tensor]:
    data = CharWindows(HELD_OUT_WINDOWS, HELD_OUT_SEED)
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def evaluate(model: nn.Module, batch_size: int = 64) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) on the held-out windows, on the model's device."""
    x_all, y_all = _held_out()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():  # autotune train calls it under no_grad already; a direct call too
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size].to(device)
            y = y_all[start : start + batch_size].to(device)
            logits = model(x).float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
            count += y.numel()
    return {"loss": total / count}


def _tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].numel()


def workload() -> Workload:
    return Workload(
        model=TinyGPT,
        dataset=CharWindows,
        loss=_loss,
        optimizer=_optimizer,
        base_lr=1e-3,
        baseline={"batch_size": 12},
        epochs=1,
        count=_tokens,
        unit="tokens",
        evaluate=evaluate,
        evaluate_every=1.0,
    )
