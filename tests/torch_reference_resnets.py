"""PyTorch reference ResNets for the conversion tests (torchvision is not installable here).

Written independently of the Flax code from the published architectures: torchvision's
``resnet50`` (v1.5 Bottleneck, stride on the 3x3 conv) and Idelbayev's CIFAR ResNets (option-A
shortcut). State-dict keys match torchvision / akamaster exactly. ``forward_stages`` returns the
same stage outputs the Flax models sow (NCHW here). Importing this module requires torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Normalized(nn.Module):
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)["logits"]


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option_a = stride != 1 or in_planes != planes
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option_a:
            p = self.planes // 4
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p), "constant", 0.0)
        return F.relu(out + x)


class TorchCifarResNet(_Normalized):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        k = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for b in range(k):
                stride = 2 if (i > 1 and b == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out["stem"] = h
        for i in (1, 2, 3):
            h = getattr(self, f"layer{i}")(h)
            out[f"layer{i}"] = h
        h = F.avg_pool2d(h, h.shape[3]).flatten(1)
        out["pool"] = h
        out["logits"] = self.linear(h)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, width: int, stride: int):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + identity)


class TorchResNet50(_Normalized):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 1 and b == 0) else 1
                blocks.append(Bottleneck(inplanes, width, stride))
                inplanes = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = self.maxpool(F.relu(self.bn1(self.conv1(self.normalize(x)))))
        out["stem"] = h
        for i in (1, 2, 3, 4):
            h = getattr(self, f"layer{i}")(h)
            out[f"layer{i}"] = h
        h = self.avgpool(h).flatten(1)
        out["pool"] = h
        out["logits"] = self.fc(h)
        return out


def build_reference(arch: str) -> _Normalized:
    if arch == "resnet50":
        return TorchResNet50()
    if arch.startswith("cifar_resnet"):
        return TorchCifarResNet(int(arch[len("cifar_resnet"):]))
    raise ValueError(f"no torch reference for {arch!r}")


def randomize(model: nn.Module, seed: int, head_gain: float = 8.0) -> nn.Module:
    """Random weights (PyTorch's default init under ``seed``), random BatchNorm statistics and
    affine parameters, so that inference-mode BN is far from the identity; eval mode. The last
    linear layer is scaled by ``head_gain`` so logits spread over several units, like a trained
    net's (PyTorch's default init alone gives logits of about +-1)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    head = model.fc if hasattr(model, "fc") else model.linear
    with torch.no_grad():
        head.weight.mul_(head_gain)
        head.bias.mul_(head_gain)
    return model.eval()


def state_dict_numpy(model: nn.Module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
