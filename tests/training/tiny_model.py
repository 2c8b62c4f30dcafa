"""The smallest SQUID the training tests can afford: lite's structure at 64 px with few channels."""

from __future__ import annotations

from model.config import SquidConfig, preset

SIZE = 64


def tiny_config() -> SquidConfig:
    return preset("lite").replace(
        image_size=SIZE,
        encoder_channels=(4, 8, 8, 16),
        bottleneck_channels=4,
        attention_heads=2,
        queue_items=10,
        decoder_memory_slots=6,
        discriminator_channels=(4, 4, 8, 8, 8),
        batch_size=4,
    )
