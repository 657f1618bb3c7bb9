"""Object detection with DETR (Hugging Face transformers' DetrForObjectDetection).

A small DETR, randomly initialised from its config, with a small ResNet backbone built from a
ResNetConfig (no timm, no pretrained weights), learns to find coloured boxes and discs on noisy
backgrounds. Images vary in size and hold 1-6 objects each; the collate function pads them to the
largest in the batch with a ``pixel_mask`` and passes the targets as a list of per-image
``{"class_labels", "boxes"}`` dicts (boxes as normalised centre x, centre y, width, height),
the form DETR's loss takes. Drawing and augmenting each image is CPU work in the Dataset, so
DataLoader workers, channels_last and the batch size all change the speed. Unit: images.

    autotune search --workload examples/detection.py:workload --trials 6 --timeout 60s
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

SPACE = str(Path(__file__).with_name("detection.yaml"))
NUM_CLASSES = 4  # 0-1: boxes of two colours, 2-3: discs of two colours
MIN_SIDE, MAX_SIDE = 128, 160  # the training size; drawn at twice that, then resized
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
_COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.1], [0.2, 0.8, 0.3]]).view(4, 3, 1, 1)


class Shapes(torch.utils.data.Dataset):
    """``size`` images made on every read from the index's own seed, as a detection pipeline
    decodes and augments photos: a textured background and 1-6 objects drawn at twice the training
    size, resized (antialiased), then a flip and colour jitter."""

    def __init__(self, size: int = 20_000, seed: int = 0) -> None:
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        height, width = torch.randint(MIN_SIDE, MAX_SIDE + 1, (2,), generator=generator).tolist()
        source_h, source_w = 2 * height, 2 * width  # the "photo", resized to the training size below
        # Background: smoothed noise, so the objects do not stand out trivially.
        noise = torch.rand(1, 3, source_h // 16, source_w // 16, generator=generator)
        image = F.interpolate(noise, size=(source_h, source_w), mode="bicubic", align_corners=False)[0] * 0.6
        image += 0.15 * torch.randn(3, source_h, source_w, generator=generator)
        count = int(torch.randint(1, 7, (), generator=generator))
        labels, boxes = [], []
        ys, xs = torch.arange(source_h).view(-1, 1), torch.arange(source_w).view(1, -1)
        for _ in range(count):
            label = int(torch.randint(0, NUM_CLASSES, (), generator=generator))
            box_w = int(torch.randint(source_w // 8, source_w // 3, (), generator=generator))
            box_h = int(torch.randint(source_h // 8, source_h // 3, (), generator=generator))
            x0 = int(torch.randint(0, source_w - box_w, (), generator=generator))
            y0 = int(torch.randint(0, source_h - box_h, (), generator=generator))
            inside = (ys >= y0) & (ys < y0 + box_h) & (xs >= x0) & (xs < x0 + box_w)
            if label >= 2:  # a disc (an ellipse) inside the box
                cy, cx = y0 + box_h / 2, x0 + box_w / 2
                inside &= ((ys - cy) / (box_h / 2)) ** 2 + ((xs - cx) / (box_w / 2)) ** 2 <= 1
            image = torch.where(inside, _COLOURS[label], image)
            labels.append(label)
            boxes.append([x0 / 2, y0 / 2, (x0 + box_w) / 2, (y0 + box_h) / 2])
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True)[0]
        boxes_xyxy = torch.tensor(boxes, dtype=torch.float32)
        if torch.rand((), generator=generator) < 0.5:  # horizontal flip, boxes with it
            image = image.flip(-1)
            boxes_xyxy[:, [0, 2]] = width - boxes_xyxy[:, [2, 0]]
        image = image * (0.8 + 0.4 * torch.rand(3, 1, 1, generator=generator))  # colour jitter
        image = (image.clamp(0, 1) - _MEAN) / _STD
        return {"image": image, "class_labels": torch.tensor(labels), "boxes_xyxy": boxes_xyxy}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad images to the largest in the batch (``pixel_mask`` marks real pixels); each image's
    targets as DETR takes them, boxes normalised to the padded size (as DetrImageProcessor.pad does)."""
    height = max(sample["image"].shape[1] for sample in samples)
    width = max(sample["image"].shape[2] for sample in samples)
    pixel_values = torch.zeros(len(samples), 3, height, width)
    pixel_mask = torch.zeros(len(samples), height, width, dtype=torch.long)
    labels = []
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    for row, sample in enumerate(samples):
        _, h, w = sample["image"].shape
        pixel_values[row, :, :h, :w] = sample["image"]
        pixel_mask[row, :h, :w] = 1
        x0, y0, x1, y1 = (sample["boxes_xyxy"] / scale).unbind(-1)
        centre_size = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        labels.append({"class_labels": sample["class_labels"], "boxes": centre_size})
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


def detr() -> nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage4"],
    )
    config = DetrConfig(
        backbone_config=backbone,  # built from its config: no timm, no pretrained weights
        use_pretrained_backbone=False,
        num_labels=NUM_CLASSES,
        num_queries=20,
        d_model=96,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=192,
        decoder_ffn_dim=192,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
    )
    return DetrForObjectDetection(config)


def detection_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """DETR's own loss: Hungarian matching, then classification, L1 and GIoU box terms."""
    return model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]).loss


def held_out_loss(model: nn.Module) -> dict[str, float]:
    """The mean loss over 128 held-out images (another seed); autotune runs it in eval mode, under no_grad."""
    device = next(model.parameters()).device
    dataset = Shapes(size=128, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=collate)
    total, batches = 0.0, 0
    for batch in loader:
        labels = [{key: value.to(device) for key, value in target.items()} for target in batch["labels"]]
        output = model(
            pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device), labels=labels
        )
        total += float(output.loss)
        batches += 1
    return {"held_out_loss": total / batches}


def workload() -> Workload:
    return Workload(
        model=detr,
        dataset=Shapes,
        loss=detection_loss,
        optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4),
        base_lr=1e-4,
        baseline={"batch_size": 8},
        epochs=10,
        collate_fn=collate,
        unit="images",
        space=SPACE,
        evaluate=held_out_loss,
        evaluate_every=2,
    )
