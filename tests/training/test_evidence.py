"""The map's arithmetic: the written-out discriminator gradient equals autograd's, integrated gradients
add up to the logit's change, and the map's pixels add up to the raw score's deviation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from model.config import preset  # noqa: E402
from model.network import Discriminator  # noqa: E402
from model.network.ensemble import DiscriminatorEnsemble  # noqa: E402
from model.network.evidence import (  # noqa: E402
    evidence_map,
    gaussian_kernel,
    integrated_gradients,
    oriented_attributions,
)
from model.network.gradients import logit_and_input_gradient  # noqa: E402

SIZE = 64


def trained_like_discriminator(seed: int, blur: float = 0.0, norm: str = "instance") -> Discriminator:
    """A discriminator whose BatchNorm layers hold real running statistics, in eval mode."""
    torch.manual_seed(seed)
    discriminator = Discriminator(preset("lite").replace(image_size=SIZE, d_input_blur=blur))
    discriminator.train()
    with torch.no_grad():
        discriminator(torch.rand(8, 1, SIZE, SIZE))
    discriminator.eval()
    discriminator.set_score_norm(norm)
    return discriminator


@pytest.mark.parametrize("norm", ["instance", "eval"])
@pytest.mark.parametrize("blur", [0.0, 1.5])
def test_written_out_gradient_equals_autograd(norm: str, blur: float) -> None:
    discriminator = trained_like_discriminator(0, blur, norm)
    images = torch.rand(3, 1, SIZE, SIZE, requires_grad=True)
    logits = discriminator(images)
    (expected,) = torch.autograd.grad(logits.sum(), images)
    with torch.no_grad():
        got_logits, got = logit_and_input_gradient(discriminator, images)
    torch.testing.assert_close(got_logits, logits.detach())
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_integrated_gradients_add_up_to_the_logit_change_as_the_path_is_refined() -> None:
    members = DiscriminatorEnsemble([trained_like_discriminator(1), trained_like_discriminator(2)])
    images, baseline = torch.rand(4, 1, SIZE, SIZE), torch.full((1, 1, SIZE, SIZE), 0.5)
    with torch.no_grad():
        change = (members(images) - members(baseline)).double()
        gaps = []
        for steps in (1, 4, 32):
            logit, attributions = integrated_gradients(members, images, baseline, steps)
            gaps.append(float((attributions.double().sum((1, 2, 3)) - change).abs().max()))
    torch.testing.assert_close(logit, members(images))
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 0.25 * gaps[0]


def test_map_pixels_add_up_to_the_deviation_from_the_normals_mean_and_keep_the_attribution_ranking() -> None:
    attributions = torch.zeros(2, 1, SIZE, SIZE)
    attributions[0, 0, 10:20, 40:50] = 1.0
    attributions[1, 0, 40:50, 5:15] = -2.0
    raw = torch.tensor([3.0, -1.0])
    heat = evidence_map(attributions, raw, 0.5, -1.0, gaussian_kernel(SIZE), torch.zeros(1, 1, SIZE, SIZE))
    torch.testing.assert_close(heat.double().sum((1, 2, 3)), (-(raw - 0.5)).double(), rtol=0, atol=1e-4)
    # Oriented: a positive attribution (pushes the logit up, towards "normal") is evidence against
    # "anomalous", so the first image's square is the map's minimum, the second's its maximum.
    row, col = divmod(int(heat[0].argmin()), SIZE)
    assert 10 <= row < 20 and 40 <= col < 50
    row, col = divmod(int(heat[1].argmax()), SIZE)
    assert 40 <= row < 50 and 5 <= col < 15


def test_an_image_as_evidential_as_the_normals_on_average_gets_an_even_map() -> None:
    """The normals' mean map is subtracted: only where an image departs from it is coloured."""
    kernel = gaussian_kernel(SIZE)
    attributions = torch.rand(1, 1, SIZE, SIZE)
    reference = oriented_attributions(attributions, -1.0, kernel)
    heat = evidence_map(attributions, torch.tensor([2.0]), 3.0, -1.0, kernel, reference)
    torch.testing.assert_close(heat, torch.full_like(heat, 1.0 / SIZE**2))
