"""Classifiers: sizes from the papers and torchvision's documented counts, shapes, layouts and input checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ceexp.models import MLP, ResNet, SmallCNN, resnet18, resnet34, resnet50, resnet110


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# torchvision documents its ImageNet ResNets (1000 classes, 7x7 stem) as 11,689,512 / 21,797,672 / 25,557,032
# parameters. The CIFAR models differ only in the stem (3x3x3x64 = 1,728 weights instead of 7x7x3x64 = 9,408)
# and the head (final width x 10 + 10 instead of x 1000 + 1000).
def cifar_count(imagenet: int, final_width: int) -> int:
    return imagenet - (9408 - 1728) - (final_width * 1000 + 1000) + (final_width * 10 + 10)


@pytest.mark.parametrize("factory, expected", [
    (resnet18, cifar_count(11_689_512, 512)),
    (resnet34, cifar_count(21_797_672, 512)),
    (resnet50, cifar_count(25_557_032, 2048)),
])
def test_resnet_sizes_match_torchvision_less_stem_and_head(factory, expected):
    assert n_params(factory((3, 32, 32), 10)) == expected


def test_resnet110_is_the_6n_plus_2_design_with_1_7m_parameters():
    model = resnet110((3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 6 * 18 + 2  # zero-padding shortcuts add no layers
    # by hand: stem 3*16*9 + BN 2*16; stage 1: 18 blocks of 2 (16*16*9) convs + 2 BN(16);
    # stage 2: first block 16*32*9 + 32*32*9, then 17 blocks of 2 (32*32*9), each with 2 BN(32); stage 3 alike at 64;
    # head 64*10 + 10
    stem = 3 * 16 * 9 + 32
    stage1 = 18 * (2 * 16 * 16 * 9 + 2 * 32)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 64) + 17 * (2 * 32 * 32 * 9 + 2 * 64)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 128) + 17 * (2 * 64 * 64 * 9 + 2 * 128)
    assert n_params(model) == stem + stage1 + stage2 + stage3 + 64 * 10 + 10 == 1_727_962  # He et al.: "1.7M"
    assert [m.out_channels for m in convs[-1:]] == [64]


def test_small_cnn_size_by_hand():
    # conv 1->32 (9*32 + 32), conv 32->64 (9*32*64 + 64), fc 64*7*7 -> 128, fc 128 -> 10
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (64 * 7 * 7 * 128 + 128) + (128 * 10 + 10)
    assert n_params(SmallCNN((1, 28, 28), 10)) == expected == 421_642


@pytest.mark.parametrize("factory, shape", [
    (lambda s, c: SmallCNN(s, c), (1, 28, 28)), (lambda s, c: SmallCNN(s, c, channels=[8, 8, 8]), (3, 32, 32)),
    (resnet18, (3, 32, 32)), (resnet18, (1, 28, 28)),
    # pooling is global, so any size works: 16x16 keeps the deep ones under a second each on a CPU
    (resnet34, (3, 16, 16)), (resnet50, (3, 16, 16)), (resnet110, (3, 16, 16)),
])
def test_logits_shape_and_gradients(factory, shape):
    torch.manual_seed(0)
    model = factory(shape, 7)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7) and out.dtype == torch.float32
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("factory", [lambda cl: resnet18((3, 32, 32), 10, channels_last=cl),
                                     lambda cl: SmallCNN((1, 28, 28), 10, channels_last=cl)])
def test_channels_last_changes_the_layout_not_the_numbers(factory):
    torch.manual_seed(0)
    nchw = factory(False).eval()
    nhwc = factory(True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    conv = [m for m in nhwc.modules() if isinstance(m, nn.Conv2d)][-1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(3, *((3, 32, 32) if isinstance(nchw, ResNet) else (1, 28, 28)))
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_the_first_block_of_a_later_stage_halves_the_resolution():
    model = resnet18((3, 32, 32), 10, channels_last=False)
    sizes = []
    x = model.stem(torch.randn(1, 3, 32, 32))
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


@pytest.mark.parametrize("make, pattern", [
    (lambda: SmallCNN((64,), 10), "^model=cnn needs image input of shape \\(C, H, W\\)"),
    (lambda: resnet50((30,), 2), "^model=resnet50 needs image input"),
    (lambda: ResNet((3, 32, 32), 10, depth=20), "^model.depth=20 is invalid"),
    (lambda: SmallCNN((1, 8, 8), 10, channels=[4, 4, 4, 4]), "^model.channels=\\[4, 4, 4, 4\\] is invalid for 8x8"),
    (lambda: SmallCNN((1, 28, 28), 10, dropout=1.0), "^model.dropout=1.0 is invalid"),
    (lambda: resnet18((3, 32, 32), 10, channels_last="yes"), "^model.channels_last='yes' is invalid"),
    (lambda: MLP((4,), 3, hidden_sizes=[0]), "^model.hidden_sizes"),
])
def test_bad_input_is_one_line_naming_the_field(make, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        make()
    assert "\n" not in str(err.value)
