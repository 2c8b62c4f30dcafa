"""Semantics of each SQUID component, pinned on small synthetic tensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from model.config import preset  # noqa: E402
from model.network import Discriminator, SquidGenerator  # noqa: E402
from model.network.inpaint import InpaintingBlock, neighbour_table  # noqa: E402
from model.network.memory import MemoryMatrix, SpaceAwareMemoryQueue  # noqa: E402
from model.network.patches import merge_patches, split_patches  # noqa: E402
from model.network.shrinkage import gumbel_shrinkage  # noqa: E402


def tiny_config(**changes):
    base = preset("lite").replace(
        image_size=64,
        encoder_channels=(4, 8, 8, 16),
        bottleneck_channels=4,
        attention_heads=2,
        queue_items=10,
        decoder_memory_slots=6,
        discriminator_channels=(4, 4, 8, 8, 8),
    )
    return base.replace(**changes)


@pytest.mark.parametrize("grid", [1, 2, 4, 8])
def test_patch_split_merge_round_trip(grid):
    x = torch.randn(3, 2, 32, 32)
    patches = split_patches(x, grid)
    assert patches.shape == (3 * grid * grid, 2, 32 // grid, 32 // grid)
    assert torch.equal(merge_patches(patches, grid), x)


def test_patches_are_row_major():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = split_patches(x, 2)
    assert patches[1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # top-right
    assert patches[2, 0].tolist() == [[8.0, 9.0], [12.0, 13.0]]  # bottom-left


def test_shrinkage_forward_keeps_exactly_top_k_renormalised():
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0, 2.0, 0.0, -1.0]])
    weights = gumbel_shrinkage(logits, k=3)
    assert (weights[0] != 0).sum() == 3
    assert torch.allclose(weights.sum(), torch.tensor(1.0))
    expected = torch.softmax(torch.tensor([5.0, 4.0, 3.0]), dim=0)
    assert torch.allclose(weights[0, [0, 2, 3]], expected, atol=1e-6)


def test_shrinkage_backward_is_the_full_softmax_gradient():
    logits = torch.randn(4, 9, requires_grad=True)
    probe = torch.randn(4, 9)
    (gumbel_shrinkage(logits, k=2) * probe).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    (torch.softmax(reference, dim=-1) * probe).sum().backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-6)
    assert (logits.grad != 0).sum() > 4 * 2  # gradient reaches items outside the top-k


def test_queue_fifo_wraps_around_per_region():
    queue = SpaceAwareMemoryQueue(regions=2, size=5, dim=3, top_k=2)
    for step in range(3):  # 3 batches of 2 -> 6 writes into 5 slots
        batch = torch.stack([torch.full((2, 3), float(10 * step + j)) for j in range(2)], dim=0)
        batch[:, 1] += 100  # region 1 gets different values than region 0
        queue.write(batch)
    assert queue.pointers.tolist() == [1, 1]
    assert queue.items[0, :, 0].tolist() == [21.0, 1.0, 10.0, 11.0, 20.0]
    assert queue.items[1, :, 0].tolist() == [121.0, 101.0, 110.0, 111.0, 120.0]


def test_queue_lookup_uses_own_region_dot_product():
    queue = SpaceAwareMemoryQueue(regions=2, size=3, dim=2, top_k=1)
    queue.items.copy_(torch.tensor([[[1.0, 0], [0, 1], [0.5, 0.5]], [[-1.0, 0], [0, -1], [9, 9]]]))
    out = queue.read(torch.tensor([[[3.0, 0.0], [3.0, 0.0]]]))
    assert out[0, 0].tolist() == [1.0, 0.0]
    assert out[0, 1].tolist() == [9.0, 9.0]


def test_queue_and_pointers_are_checkpointed_buffers():
    generator = SquidGenerator(tiny_config())
    state = generator.state_dict()
    assert "inpaint.queue.items" in state and "inpaint.queue.pointers" in state
    assert not any(p is generator.inpaint.queue.items for p in generator.parameters())


def test_training_step_writes_batch_features_into_queue():
    generator = SquidGenerator(tiny_config()).train()
    before = generator.inpaint.queue.items.clone()
    generator(torch.rand(3, 1, 64, 64))
    assert torch.equal(generator.inpaint.queue.items, before)  # nothing written until commit
    generator.commit_to_queue()
    changed = (generator.inpaint.queue.items != before).any(dim=-1)
    assert changed.sum(dim=1).tolist() == [3, 3, 3, 3]
    assert generator.inpaint.queue.pointers.tolist() == [3, 3, 3, 3]


def test_neighbour_table_for_2x2_grid_has_three_real_neighbours():
    index, valid = neighbour_table(2)
    assert valid.sum(dim=1).tolist() == [3, 3, 3, 3]
    assert sorted(index[0][valid[0]].tolist()) == [1, 2, 3]
    assert (index[~valid] == 4).all()  # padding points at the zero token


def test_padding_tokens_do_not_affect_attention():
    torch.manual_seed(0)
    block = InpaintingBlock(
        8,
        4,
        2,
        grid=2,
        queue_items=5,
        top_k=2,
        heads=2,
        mlp_ratio=0.5,
        rho=0.95,
        position_code=True,
    ).eval()
    x = torch.rand(4, 8, 2, 2)
    reference = block(x)
    block.attention_bias[~neighbour_table(2)[1]] = -1e6  # different padding magnitude, same mask
    assert torch.allclose(block(x), reference, atol=1e-6)


def test_masked_shortcut_only_in_training():
    torch.manual_seed(0)
    block = InpaintingBlock(
        8, 4, 2, grid=2, queue_items=5, top_k=2, heads=2, mlp_ratio=0.5, rho=0.5, position_code=True
    )
    x = torch.rand(8, 8, 2, 2) + 5.0
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0  # keep running statistics fixed across modes
    block.train()
    mixed = block(x)
    # In training some locations carry the encoder feature through unchanged (the shortcut).
    assert ((mixed - x).abs().amax(dim=1) < 1e-6).any()
    block.eval()
    inpainted = block(x)
    assert not ((inpainted - x).abs().amax(dim=1) < 1e-6).any()
    assert torch.equal(block(x), inpainted)  # deterministic, no shortcut at inference


def test_memory_matrix_shortcut_only_in_training_and_gradients_reach_slots():
    memory = MemoryMatrix(channels=2, size=4, slots=5, windows=2, top_k=2, rho=0.5)
    x = torch.rand(3, 2, 4, 4, requires_grad=True)
    memory.eval()
    a, b = memory(x), memory(x)
    assert torch.equal(a, b)
    a.sum().backward()
    assert memory.slots.grad is not None and memory.slots.grad.abs().sum() > 0


def test_teacher_sends_no_gradient_into_the_encoder():
    generator = SquidGenerator(tiny_config()).train()
    out = generator(torch.rand(2, 1, 64, 64))
    out.teacher_reconstruction.mean().backward()
    assert all(p.grad is None for p in generator.encoder.parameters())
    assert any(p.grad is not None for p in generator.teacher.parameters())


def test_student_reconstruction_reaches_the_encoder():
    generator = SquidGenerator(tiny_config()).train()
    generator(torch.rand(2, 1, 64, 64)).reconstruction.mean().backward()
    assert all(p.grad is not None for p in generator.encoder.parameters())


@pytest.mark.parametrize("norm", ["instance", "eval"])
def test_scores_do_not_depend_on_the_rest_of_the_batch(norm):
    torch.manual_seed(0)
    config = tiny_config(score_norm=norm)
    generator, discriminator = SquidGenerator(config).eval(), Discriminator(config).eval()
    images = torch.rand(6, 1, 64, 64)
    with torch.no_grad():
        together = discriminator(generator.reconstruct(images))
        alone = torch.cat([discriminator(generator.reconstruct(images[i : i + 1])) for i in range(6)])
        shuffled = discriminator(generator.reconstruct(images.flip(0))).flip(0)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, shuffled, atol=1e-5)


def test_instance_norm_matches_train_mode_batchnorm_at_batch_size_one():
    config = tiny_config()
    discriminator = Discriminator(config)
    image = torch.rand(1, 1, 64, 64)
    discriminator.train()
    reference = discriminator(image)
    discriminator.eval()
    discriminator.set_score_norm("instance")
    assert torch.allclose(discriminator(image), reference, atol=1e-5)


@pytest.mark.parametrize("name", ["thesis", "lite", "digit"])
def test_presets_build_and_produce_input_sized_reconstructions(name):
    config = preset(name)
    generator = SquidGenerator(config)
    out = generator(torch.rand(2, 1, config.image_size, config.image_size))
    assert out.reconstruction.shape == (2, 1, config.image_size, config.image_size)
    reconstruction = out.reconstruction.detach()
    assert float(reconstruction.min()) >= 0 and float(reconstruction.max()) <= 1
    assert len(out.student_features) == len(out.teacher_features) == len(config.encoder_channels)
