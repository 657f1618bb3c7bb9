"""LoRA fine-tuning of a Llama-architecture causal LM (transformers + peft), in tokens per second.

A small LlamaForCausalLM, randomly initialised from a LlamaConfig, stands in for the base model;
peft wraps it with LoRA adapters on the attention projections, so only the adapters train (the
default optimizer takes only parameters that require grad). The corpus is packed sequences of
a fixed length from a synthetic language (each token has four possible successors), so the loss
has something to learn. Gradient checkpointing goes through the model's own hook (peft passes
it on; autotune makes the frozen embeddings' output require grad). Unit: tokens.

It is meant to be searched against a deadline for the full run, then exported three ways:

    autotune search --workload examples/llm_lora.py:workload --trials 6 --timeout 60s \\
        --deadline 2h --safety-margin 15m
    autotune export-best --prefer fastest   # or balanced, memory
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from autotune import Workload

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built from a config: nothing to download

SPACE = str(Path(__file__).with_name("llm_lora.yaml"))
VOCAB = 2048
SEQUENCE_LENGTH = 128
SUCCESSORS = 4  # the corpus' entropy floor is ln(4) ~ 1.39 nats per token


class PackedCorpus(torch.utils.data.Dataset):
    """``size`` sequences of ``SEQUENCE_LENGTH`` tokens from a fixed random Markov chain, each
    generated from its index's seed on read; packed, so every token is real (no padding)."""

    def __init__(self, size: int = 100_000, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        table = torch.randint(0, VOCAB, (VOCAB, SUCCESSORS), generator=torch.Generator().manual_seed(99))
        self.successors = table.tolist()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        choices = torch.randint(0, SUCCESSORS, (SEQUENCE_LENGTH,), generator=generator).tolist()
        token = int(torch.randint(0, VOCAB, (), generator=generator))
        tokens = [token]
        for choice in choices[1:]:
            token = self.successors[token][choice]
            tokens.append(token)
        return {"input_ids": torch.tensor(tokens)}


def lora_llama() -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQUENCE_LENGTH,
        tie_word_embeddings=False,
        use_cache=False,  # training: no KV cache
    )
    base = LlamaForCausalLM(config)  # random init: no pretrained weights
    adapters = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft asks transformers 5 for a renamed attribute: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base, adapters)


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy (the model shifts the labels itself)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def tokens(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].numel()  # packed: no padding to leave out


def workload() -> Workload:
    return Workload(
        model=lora_llama,
        dataset=PackedCorpus,
        loss=causal_lm_loss,
        base_lr=2e-4,
        baseline={"batch_size": 4, "accumulation_steps": 4},  # effective batch 16 sequences, 2048 tokens
        epochs=2,
        count=tokens,
        unit="tokens",
        space=SPACE,
    )
