"""Classifiers: ``nn.Module``s mapping a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``.

Every model takes ``input_shape`` and ``num_classes`` from the data (``train`` passes them),
so a model config only holds the architecture's own hyperparameters.

    MLP          any input, flattened
    SmallCNN     images ``(C, H, W)`` (MNIST-sized): two conv/pool stages and an MLP head
    ResNet       CIFAR ResNets with a 3x3 stem (He et al. 2016, "Deep Residual Learning for Image
                 Recognition", CVPR): ``resnet18/34/50`` (four stages, 64-512 wide, the layout of the ImageNet
                 models without the 7x7 stem and max-pool) and ``resnet110`` (the paper's 6n+2 CIFAR design,
                 n = 18: three stages of basic blocks, 16/32/64 wide, identity shortcuts with zero padding)

Convolutional models take ``channels_last`` (default true): the weights are stored NHWC and inputs are
converted on the way in, which is what cuDNN's bf16/fp16 tensor-core kernels and oneDNN on the CPU prefer.
The outputs are the same numbers either way; only the memory layout differs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "BasicBlock", "Bottleneck", "ResNet", "SmallCNN", "resnet18", "resnet34", "resnet50", "resnet110"]


def _check_image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"model={model} needs image input of shape (C, H, W), but the data has input_shape {shape}: "
            "choose an image data set (mnist_5k, mnist, fashion_mnist, cifar10, cifar100) or model=mlp"
        )
    return shape  # type: ignore[return-value]


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"model num_classes={num_classes!r} is invalid: expected an integer >= 2")


class MLP(nn.Module):
    """Multilayer perceptron: flatten, then ``Linear -> ReLU -> Dropout`` per hidden layer, then a linear head.

    Args:
        input_shape: shape of one sample, e.g. ``(64,)`` or ``(1, 28, 28)``; flattened.
        num_classes: number of output logits C.
        hidden_sizes: widths of the hidden layers (may be empty: multinomial logistic regression).
        dropout: dropout probability after each hidden layer, in [0, 1).

    Shapes: input ``(B, *input_shape)`` float32, output ``(B, C)`` float32 logits.

    Raises:
        ValueError: for a non-positive hidden size or dropout outside [0, 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (128, 128),
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden_sizes):
            raise ValueError(f"model.hidden_sizes={hidden_sizes!r} is invalid: expected a list of integers >= 1")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout!r} is invalid: expected a number in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ConvNet(nn.Module):
    """Shared by the convolutional models: optional NHWC (channels-last) weights and inputs."""

    channels_last: bool = False

    def _finish(self, channels_last: bool) -> None:
        if not isinstance(channels_last, bool):
            raise ValueError(f"model.channels_last={channels_last!r} is invalid: expected true or false")
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class SmallCNN(_ConvNet):
    """A small CNN for MNIST-sized images: per stage ``Conv3x3 -> ReLU -> MaxPool2``, then an MLP head.

    ``input (B, C, H, W) -> [conv(c_k, 3x3, pad 1) -> ReLU -> maxpool 2x2] for c_k in channels
    -> flatten (c_last * floor(H / 2^k) * floor(W / 2^k)) -> Linear(hidden) -> ReLU -> Dropout -> Linear(C)``.
    With the defaults on 28x28x1 that is 32 and 64 channels, 64*7*7 = 3,136 features, 421,642 parameters.

    Args:
        input_shape: ``(C_in, H, W)``; H and W must be at least ``2 ** len(channels)``.
        num_classes: number of output logits.
        channels: output channels of the conv stages (each halves H and W).
        hidden: width of the hidden fully connected layer.
        dropout: dropout probability before the last layer, in [0, 1).
        channels_last: store weights and feed inputs in NHWC layout.

    Shapes: input ``(B, C_in, H, W)`` float, output ``(B, num_classes)`` logits.

    Raises:
        ValueError: naming the field, for a non-image ``input_shape`` or a bad hyperparameter.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        c_in, h, w = _check_image_shape("cnn", input_shape)
        _check_num_classes(num_classes)
        channels = list(channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"model.channels={channels!r} is invalid: expected a non-empty list of integers >= 1")
        if min(h, w) < 2 ** len(channels):
            raise ValueError(
                f"model.channels={channels!r} is invalid for {h}x{w} images: {len(channels)} stages halve the "
                f"image {len(channels)} times; expected at most {int(math.log2(min(h, w)))} stages"
            )
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"model.hidden={hidden!r} is invalid: expected an integer >= 1")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout!r} is invalid: expected a number in [0, 1)")
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in, h, w = c, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in * h * w, hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.head = nn.Sequential(*head)
        self._finish(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self._layout(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (He et al. 2016, Fig. 2 left); ``expansion = 1``.

    Args:
        in_planes, planes: input and output channels.
        stride: stride of the first convolution (2 halves H and W).
        shortcut: ``"B"``: a 1x1 convolution + batch norm where the shape changes (the ImageNet-style models);
            ``"A"``: parameter-free identity, subsampled by the stride and zero-padded in the new channels
            (the paper's CIFAR models, Sec. 4.2).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each with batch norm, and a shortcut (He et al. 2016, Fig. 5 right).

    The stride sits on the 3x3 convolution (as in torchvision's ResNet-50, "v1.5"). ``expansion = 4``.
    Arguments as :class:`BasicBlock`; the block outputs ``4 * planes`` channels.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    """Option A of He et al. 2016: ``x[:, :, ::s, ::s]`` with zero channels appended up to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def _shortcut(in_planes: int, out_planes: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "A":
        return _PadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


_DEPTHS = {
    # depth: (block, blocks per stage, stage widths, shortcut option)
    18: ("basic", (2, 2, 2, 2), (64, 128, 256, 512), "B"),
    34: ("basic", (3, 4, 6, 3), (64, 128, 256, 512), "B"),
    50: ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "B"),
    110: ("basic", (18, 18, 18), (16, 32, 64), "A"),
}


class ResNet(_ConvNet):
    """A residual network for CIFAR-sized images (He et al. 2016).

    Stem: ``Conv3x3(C_in -> widths[0], stride 1) -> BN -> ReLU`` (no 7x7 conv or max-pool: 32x32 inputs keep
    their resolution into the first stage). Then one stage per entry of ``widths``, the first at stride 1 and
    the others at stride 2, then global average pooling and a linear layer. Weights: Kaiming-normal (fan-out)
    convolutions, batch-norm scale 1 and shift 0, as torchvision initialises its ResNets.

    ``depth`` picks the layout:

    ====== ========== ================== ================ ========= =============================
    depth  block      blocks per stage   widths           shortcut  parameters (10 classes)
    ====== ========== ================== ================ ========= =============================
    18     basic      2, 2, 2, 2         64..512          B (1x1)   11,173,962
    34     basic      3, 4, 6, 3         64..512          B (1x1)   21,282,122
    50     bottleneck 3, 4, 6, 3         64..512 (x4 out) B (1x1)   23,520,842
    110    basic      18, 18, 18         16, 32, 64       A (pad)   1,727,962 (the paper's "1.7M")
    ====== ========== ================== ================ ========= =============================

    Args:
        input_shape: ``(C_in, H, W)``, e.g. ``(3, 32, 32)``; any H, W >= 1 work (pooling is global).
        num_classes: number of output logits.
        depth: 18, 34, 50 or 110.
        channels_last: store weights and feed inputs in NHWC layout.

    Shapes: input ``(B, C_in, H, W)`` float, output ``(B, num_classes)`` logits.

    Raises:
        ValueError: for a depth not in the table or a non-image ``input_shape``.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 18, channels_last: bool = True):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"model.depth={depth!r} is invalid: expected one of {', '.join(map(str, _DEPTHS))}")
        c_in, _, _ = _check_image_shape(f"resnet{depth}", input_shape)
        _check_num_classes(num_classes)
        kind, blocks, widths, shortcut = _DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages, planes = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(planes, width, stride=2 if (i > 0 and j == 0) else 1, shortcut=shortcut))
                planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._finish(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self._layout(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(input_shape: Sequence[int], num_classes: int, channels_last: bool = True) -> ResNet:
    """CIFAR ResNet-18 (3x3 stem); see :class:`ResNet`."""
    return ResNet(input_shape, num_classes, 18, channels_last)


def resnet34(input_shape: Sequence[int], num_classes: int, channels_last: bool = True) -> ResNet:
    """CIFAR ResNet-34 (3x3 stem); see :class:`ResNet`."""
    return ResNet(input_shape, num_classes, 34, channels_last)


def resnet50(input_shape: Sequence[int], num_classes: int, channels_last: bool = True) -> ResNet:
    """CIFAR ResNet-50 (3x3 stem, bottleneck blocks); the network of Mukhoti et al. 2020's CIFAR tables."""
    return ResNet(input_shape, num_classes, 50, channels_last)


def resnet110(input_shape: Sequence[int], num_classes: int, channels_last: bool = True) -> ResNet:
    """ResNet-110 of He et al. 2016, Sec. 4.2 (6n+2 layers, n = 18); see :class:`ResNet`."""
    return ResNet(input_shape, num_classes, 110, channels_last)
