"""Intensity augmentation of the normals: each option changes the images, all stay min-max."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.augment import random_intensity  # noqa: E402


def images() -> torch.Tensor:
    ramp = torch.linspace(0, 1, 32)
    return (ramp[None, :] * ramp[:, None]).expand(4, 1, 32, 32).clone()


@pytest.mark.parametrize(
    "options",
    [
        {"gamma_range": (0.7, 1.4)},
        {"window_jitter": 0.1},
        {"blur_sigma_max": 2.0},
        {"noise_sigma_max": 0.05},
    ],
)
def test_each_option_changes_the_images_and_keeps_them_min_max(options):
    settings = {"gamma_range": (1.0, 1.0), "window_jitter": 0.0, "blur_sigma_max": 0.0} | options
    noise = settings.pop("noise_sigma_max", 0.0)
    source = images()
    out = random_intensity(
        source, generator=torch.Generator().manual_seed(0), noise_sigma_max=noise, **settings
    )
    again = random_intensity(
        source, generator=torch.Generator().manual_seed(0), noise_sigma_max=noise, **settings
    )
    assert not torch.allclose(out, source, atol=1e-3)
    assert torch.equal(out, again)  # reproducible from the generator (resume depends on it)
    flat = out.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(4)) and torch.allclose(
        flat.max(1).values, torch.ones(4)
    )


def test_no_option_returns_the_images_untouched():
    source = images()
    out = random_intensity(source, (1.0, 1.0), 0.0, 0.0, torch.Generator().manual_seed(0))
    assert out is source


def test_noise_strength_varies_per_image():
    source = images()
    out = random_intensity(
        source, (1.0, 1.0), 0.0, 0.0, torch.Generator().manual_seed(1), noise_sigma_max=0.1
    )
    residual = (out - source).flatten(1).std(1)
    assert residual.max() > 1.5 * residual.min()
