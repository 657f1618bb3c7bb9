"""Text + tabular regression with a DeBERTa-v2 encoder (Hugging Face transformers).

Each sample is a short listing text with four numeric features, and the target is a price-like
number that depends on both. A small DeBERTa-v2 encoder, randomly initialised from its config,
reads the text; its [CLS] state, joined with the projected features, goes through a regression
head. Batches are dicts with attention masks, padded to the longest text in each batch, so shapes
vary from batch to batch. The unit is real tokens: padding is not counted.

    autotune search --workload examples/text.py:workload --trials 6 --timeout 60s
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built from a config: nothing to download

SPACE = str(Path(__file__).with_name("text.yaml"))
PAD, CLS, SEP, UNK = 0, 1, 2, 3
SPECIAL = 4
VOCAB_WORDS = 2000
NUM_FEATURES = 4
MAX_WORDS = 126  # + [CLS] and [SEP]: at most 128 tokens


def _vocabulary() -> list[str]:
    """Pronounceable made-up words; a few hundred of them carry sentiment the target depends on."""
    generator = torch.Generator().manual_seed(1234)
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < VOCAB_WORDS:
        length = int(torch.randint(2, 5, (), generator=generator))
        picks = torch.randint(0, 80, (length, 2), generator=generator).tolist()
        words.add("".join(consonants[c % len(consonants)] + vowels[v % len(vowels)] for c, v in picks))
    return sorted(words)


class Listings(torch.utils.data.Dataset):
    """``size`` listings: text of 8-126 words (most short, a few long), numeric features, a target.

    Each listing is made from its index's own seed and tokenized on every read (a word-level
    tokenizer), as a Hugging Face pipeline with a tokenizer in the Dataset does."""

    def __init__(self, size: int = 40_000, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.words = _vocabulary()
        self.token_ids = {word: SPECIAL + i for i, word in enumerate(self.words)}
        self.sentiment = torch.zeros(len(self.words))
        self.sentiment[:200], self.sentiment[200:400] = 1.0, -1.0
        self.weights = torch.tensor([0.8, -0.5, 0.3, 0.0])

    def __len__(self) -> int:
        return self.size

    def text(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        """The listing's text, its features and its target."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        # Lengths: log-normal, so padding to the longest text in a batch wastes a real share.
        length = int(torch.exp(3.2 + 0.6 * torch.randn((), generator=generator)).clamp(8, MAX_WORDS))
        picks = torch.randint(0, len(self.words), (length,), generator=generator)
        features = torch.randn(NUM_FEATURES, generator=generator)
        target = self.sentiment[picks].mean() * 2 + features @ self.weights + 0.1 * torch.randn((), generator=generator)
        return " ".join(self.words[j] for j in picks.tolist()), features, target

    def __getitem__(self, index: int) -> dict[str, Any]:
        text, features, target = self.text(index)
        ids = [CLS] + [self.token_ids.get(word, UNK) for word in text.split()] + [SEP]
        return {"input_ids": torch.tensor(ids), "features": features, "target": target}


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad to the longest text in the batch (not to a fixed length); 1 in attention_mask marks real tokens."""
    longest = max(len(sample["input_ids"]) for sample in samples)
    input_ids = torch.full((len(samples), longest), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        ids = sample["input_ids"]
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "features": torch.stack([sample["features"] for sample in samples]),
        "target": torch.stack([sample["target"] for sample in samples]),
    }


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model reads, padding excluded: the unit of throughput."""
    return int(batch["attention_mask"].sum())


class TextRegressor(nn.Module):
    """A DeBERTa-v2 encoder over the text, the numeric features projected beside its [CLS] state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import DebertaV2Config, DebertaV2Model

        config = DebertaV2Config(
            vocab_size=SPECIAL + VOCAB_WORDS,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=MAX_WORDS + 2,
            relative_attention=True,
            position_buckets=64,
            pos_att_type=["p2c", "c2p"],
            pad_token_id=PAD,
        )
        self.encoder = DebertaV2Model(config)  # random init: no pretrained weights
        self.features = nn.Sequential(nn.Linear(NUM_FEATURES, 32), nn.GELU())
        self.head = nn.Sequential(nn.Linear(config.hidden_size + 32, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        joined = torch.cat([hidden[:, 0], self.features(features)], dim=-1)
        return self.head(joined).squeeze(-1)


def checkpoint_encoder(model: TextRegressor) -> None:
    """Gradient checkpointing in the encoder's layers (the wrapper itself has no HF hook)."""
    encoder = model.encoder
    enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
    enable()


def regression_loss(model: TextRegressor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    prediction = model(batch["input_ids"], batch["attention_mask"], batch["features"])
    return F.mse_loss(prediction.float(), batch["target"])


def workload() -> Workload:
    return Workload(
        model=TextRegressor,
        dataset=Listings,
        loss=regression_loss,
        optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        base_lr=5e-5,
        baseline={"batch_size": 16, "accumulation_steps": 4},  # effective batch 64
        epochs=3,
        collate_fn=collate,
        count=real_tokens,
        unit="tokens",
        gradient_checkpointing=checkpoint_encoder,
        space=SPACE,
    )
