"""Minimal re-implementations of the field's CIFAR models, with their module names, registration order and
forward passes (RepDistiller `models/`, identical in mdistiller `mdistiller/models/cifar/`; torchvision's
ResNet-50): written here to test that their checkpoints load into the zoo with equal logits, without a download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv(i, o, k=3, s=1, g=1, bias=False):
    return nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=bias)


class ResBlock(nn.Module):  # RepDistiller resnet.py BasicBlock
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1, self.bn1 = conv(i, o, 3, s), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = conv(o, o), nn.BatchNorm2d(o)
        self.downsample = nn.Sequential(conv(i, o, 1, s), nn.BatchNorm2d(o)) if s != 1 or i != o else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):  # resnet8 ... resnet110, resnet8x4, resnet32x4
    def __init__(self, depth, widths, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = conv(3, widths[0]), nn.BatchNorm2d(widths[0])
        for stage in range(3):
            i, o = widths[stage], widths[stage + 1]
            blocks = [ResBlock(i if b == 0 else o, o, 2 if stage and b == 0 else 1) for b in range(n)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


class WrnBlock(nn.Module):  # RepDistiller wrn.py BasicBlock
    def __init__(self, i, o, s):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), conv(i, o, 3, s)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), conv(o, o)
        self.equal = i == o
        self.convShortcut = None if self.equal else conv(i, o, 1, s)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class NetworkBlock(nn.Module):
    def __init__(self, n, i, o, s):
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(i if b == 0 else o, o, s if b == 0 else 1) for b in range(n)])

    def forward(self, x):
        return self.layer(x)


class WRN(nn.Module):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv(3, 16)
        self.block1, self.block2, self.block3 = (NetworkBlock(n, ch[k], ch[k + 1], 1 if k == 0 else 2)
                                                 for k in range(3))
        self.bn1, self.fc = nn.BatchNorm2d(ch[3]), nn.Linear(ch[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class VGG(nn.Module):  # RepDistiller vgg.py, vgg8 = [[64], [128], [256], [512], [512]]
    def __init__(self, cfg, num_classes):
        super().__init__()
        i = 3
        for b, channels in enumerate(cfg):
            layers = []
            for o in channels:
                layers += [conv(i, o, bias=True), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
                i = o
            setattr(self, f"block{b}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        for b in range(5):
            x = F.relu(getattr(self, f"block{b}")(x))
            x = F.max_pool2d(x, 2) if b < 3 else x  # no pool before block4 at 32x32
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):  # RepDistiller mobilenetv2.py
    def __init__(self, i, o, s, t):
        super().__init__()
        h = i * t
        self.residual = s == 1 and i == o
        self.conv = nn.Sequential(conv(i, h, 1), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                                  conv(h, h, 3, s, g=h), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                                  conv(h, o, 1), nn.BatchNorm2d(o))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileHalf(nn.Module):  # mobile_half: T=6, width 0.5
    def __init__(self, num_classes):
        super().__init__()
        setting = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1)]
        i = 16
        self.conv1 = nn.Sequential(conv(3, i, 3, 2), nn.BatchNorm2d(i), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            o, group = c // 2, []
            for k in range(n):
                group.append(InvertedResidual(i, o, s if k == 0 else 1, t))
                i = o
            self.blocks.append(nn.Sequential(*group))
        self.conv2 = nn.Sequential(conv(i, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.classifier(F.adaptive_avg_pool2d(self.conv2(x), 1).flatten(1))


def shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):  # RepDistiller ShuffleNetv1.py Bottleneck
    def __init__(self, i, o, s, groups):
        super().__init__()
        m, self.g, self.s = o // 4, 1 if i == 24 else groups, s
        self.conv1, self.bn1 = conv(i, m, 1, g=self.g), nn.BatchNorm2d(m)
        self.conv2, self.bn2 = conv(m, m, 3, s, g=m), nn.BatchNorm2d(m)
        self.conv3, self.bn3 = conv(m, o, 1, g=groups), nn.BatchNorm2d(o)

    def forward(self, x):
        out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.s == 2 else out + x)


class ShuffleV1(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 24, 1), nn.BatchNorm2d(24)
        i = 24
        for k, (o, n) in enumerate(zip((240, 480, 960), (4, 8, 4))):
            blocks = [ShuffleV1Block(i if b == 0 else o, o - i if b == 0 else o, 2 if b == 0 else 1, 3)
                      for b in range(n)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
            i = o
        self.linear = nn.Linear(960, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))


class ShuffleV2Block(nn.Module):  # RepDistiller ShuffleNetv2.py BasicBlock
    def __init__(self, c):
        super().__init__()
        c //= 2
        self.conv1, self.bn1 = conv(c, c, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = conv(c, c, 3, g=c), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = conv(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        x1, x2 = x.chunk(2, 1)
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2))))))))
        return shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):  # DownBlock
    def __init__(self, i, o):
        super().__init__()
        m = o // 2
        self.conv1, self.bn1 = conv(i, i, 3, 2, g=i), nn.BatchNorm2d(i)
        self.conv2, self.bn2 = conv(i, m, 1), nn.BatchNorm2d(m)
        self.conv3, self.bn3 = conv(i, m, 1), nn.BatchNorm2d(m)
        self.conv4, self.bn4 = conv(m, m, 3, 2, g=m), nn.BatchNorm2d(m)
        self.conv5, self.bn5 = conv(m, m, 1), nn.BatchNorm2d(m)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x))))))))
        return shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(nn.Module):  # net_size 1: (116, 232, 464, 1024), (3, 7, 3)
    def __init__(self, num_classes):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 24, 1), nn.BatchNorm2d(24)
        i = 24
        for k, (o, n) in enumerate(zip((116, 232, 464), (3, 7, 3))):
            setattr(self, f"layer{k + 1}", nn.Sequential(ShuffleV2Down(i, o), *[ShuffleV2Block(o) for _ in range(n)]))
            i = o
        self.conv2, self.bn2 = conv(464, 1024, 1), nn.BatchNorm2d(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1))


class Bottleneck(nn.Module):  # RepDistiller resnetv2.py (shortcut) / torchvision (downsample)
    def __init__(self, i, m, s, shortcut_name):
        super().__init__()
        o = 4 * m
        self.conv1, self.bn1 = conv(i, m, 1), nn.BatchNorm2d(m)
        self.conv2, self.bn2 = conv(m, m, 3, s), nn.BatchNorm2d(m)
        self.conv3, self.bn3 = conv(m, o, 1), nn.BatchNorm2d(o)
        self.shortcut_name = shortcut_name
        reshape = nn.Sequential(conv(i, o, 1, s), nn.BatchNorm2d(o)) if s != 1 or i != o else None
        if reshape is not None or shortcut_name == "shortcut":  # RepDistiller keeps an empty Sequential
            setattr(self, shortcut_name, reshape if reshape is not None else nn.Sequential())
        else:
            setattr(self, shortcut_name, None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        short = getattr(self, self.shortcut_name)
        return F.relu(out + (x if short is None else short(x)))


class ResNet50(nn.Module):
    """RepDistiller's CIFAR ResNet50 (3x3 stem, `linear`), or torchvision's (`imagenet`: 7x7/2 + max-pool, `fc`)."""

    def __init__(self, num_classes, imagenet=False):
        super().__init__()
        self.imagenet = imagenet
        self.conv1 = conv(3, 64, 7, 2) if imagenet else conv(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        i = 64
        for k, n in enumerate((3, 4, 6, 3)):
            m = 64 * 2**k
            name = "downsample" if imagenet else "shortcut"
            blocks = [Bottleneck(i if b == 0 else 4 * m, m, 2 if k and b == 0 else 1, name) for b in range(n)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
            i = 4 * m
        setattr(self, "fc" if imagenet else "linear", nn.Linear(2048, num_classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        head = self.fc if self.imagenet else self.linear
        return head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(name: str, num_classes: int) -> nn.Module:
    """The field's model `name` (RepDistiller's names; "tv_resnet50" for torchvision's), randomly initialised
    with random BN statistics, so that equal logits mean every tensor landed in its place."""
    base, x4 = (16, 16, 32, 64), (32, 64, 128, 256)
    resnets = {**{f"resnet{d}": (d, base) for d in (8, 14, 20, 32, 44, 56, 110)},
               "resnet8x4": (8, x4), "resnet32x4": (32, x4)}
    wrns = {f"wrn_{d}_{k}": (d, k) for d in (16, 40) for k in (1, 2)}
    vggs = {"vgg8": [[64], [128], [256], [512], [512]], "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
            "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
            "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
            "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]}
    if name in resnets:
        net = CifarResNet(*resnets[name], num_classes)
    elif name in wrns:
        net = WRN(*wrns[name], num_classes)
    elif name in vggs:
        net = VGG(vggs[name], num_classes)
    else:
        net = {"MobileNetV2": lambda: MobileHalf(num_classes), "ShuffleV1": lambda: ShuffleV1(num_classes),
               "ShuffleV2": lambda: ShuffleV2(num_classes), "ResNet50": lambda: ResNet50(num_classes),
               "tv_resnet50": lambda: ResNet50(num_classes, imagenet=True)}[name]()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.normal_(m.weight, 1, 0.2)
            nn.init.normal_(m.bias, 0, 0.1)
    return net.eval()
