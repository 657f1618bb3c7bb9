"""The built-in demo: a deterministic synthetic dataset and a small CNN that can learn it."""

from __future__ import annotations

import copy

import pytest
import torch

from autotune.workload import Workload
from autotune.workload.demo import NUM_CLASSES, PatternImages, SmallCNN, classification_loss, workload


def batch(dataset: PatternImages, indices) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(images), torch.tensor(labels)


def test_patternimages_documented_length():
    assert len(PatternImages()) == 16384
    assert len(PatternImages(size=50)) == 50


def test_patternimages_sample_shape_and_label():
    dataset = PatternImages(size=64)
    for index in (0, 7, 13, 63):
        image, label = dataset[index]
        assert isinstance(image, torch.Tensor)
        assert image.shape == (3, 32, 32)
        assert image.dtype == torch.float32
        assert torch.isfinite(image).all()
        assert isinstance(label, int)
        assert 0 <= label < NUM_CLASSES
        assert label == index % NUM_CLASSES


def test_patternimages_deterministic_per_index():
    first, second = PatternImages(size=32), PatternImages(size=32)
    for index in (0, 5, 31):
        image_a, label_a = first[index]
        image_b, label_b = first[index]
        image_c, label_c = second[index]
        assert torch.equal(image_a, image_b) and label_a == label_b
        assert torch.equal(image_a, image_c) and label_a == label_c


def test_patternimages_samples_differ():
    dataset = PatternImages(size=32)
    assert not torch.equal(dataset[0][0], dataset[10][0])  # same class, different noise and augmentation
    assert not torch.equal(dataset[0][0], PatternImages(size=32, seed=1)[0][0])


def test_smallcnn_forward_gives_logits():
    torch.manual_seed(0)
    model = SmallCNN()
    images, _ = batch(PatternImages(size=8), range(5))
    logits = model(images)
    assert logits.shape == (5, NUM_CLASSES)
    assert torch.isfinite(logits).all()


def test_smallcnn_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = SmallCNN(width=8)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    images, labels = batch(PatternImages(size=8), range(8))

    losses = []
    for model in (plain, checkpointed):
        model.train()
        loss = classification_loss(model, (images, labels))
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1])
    assert torch.allclose(plain(images), checkpointed(images), atol=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_smallcnn_training_reduces_loss():
    torch.manual_seed(0)
    dataset = PatternImages(size=2048)
    held_out = batch(dataset, range(1000, 1032))  # samples never trained on
    train = batch(dataset, range(96))
    model = SmallCNN(width=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def held_out_loss() -> float:
        with torch.no_grad():
            return classification_loss(model, held_out).item()

    before = held_out_loss()
    for step in range(8):
        rows = slice((step % 3) * 32, (step % 3) * 32 + 32)
        loss = classification_loss(model, (train[0][rows], train[1][rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert before == pytest.approx(2.3, abs=0.3)  # chance level: ln(10)
    assert after < before - 0.1


def test_demo_workload_contract():
    demo = workload()
    assert isinstance(demo, Workload)
    assert demo.base_lr == 1e-3
    assert demo.baseline == {"batch_size": 8, "num_workers": 0, "precision": "fp32"}
    assert demo.space == "demo"
    model = demo.model()
    optimizer = demo.optimizer(model.parameters(), 0.5)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == 0.5
