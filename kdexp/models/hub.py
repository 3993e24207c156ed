"""timm and torchvision models by name: `timm:resnet18`, `tv:mobilenet_v3_small` as teacher.arch/student.arch.

Classes and input channels come from the data; `kwargs.pretrained=true` downloads the library's weights (its hub
must be reachable; offline, pass a weights file as teacher.ckpt instead). Features for feature-based methods:
timm's `forward_intermediates` (its feature API); for torchvision, the last output of the network body at each
resolution, taken with forward hooks. Neither library has pre-activation features: `preact` == `stages`.
timm and torchvision are imported here only when such a name is built (the `vision` extra).
"""

from __future__ import annotations

import difflib
import importlib

from torch import Tensor, nn

from kdexp.config.errors import ConfigError
from kdexp.models.base import FeatureOutput, ZooModel

LIBRARIES = {"timm": "timm", "tv": "torchvision"}  # prefix -> the package it needs
INSTALL = "pip install 'kdexp[vision]' (timm, torchvision; they must match the installed torch)"


def is_hub_name(name: str) -> bool:
    return name.partition(":")[0] in LIBRARIES and ":" in name


def _library(prefix: str, key: str, name: str):
    try:
        return importlib.import_module(LIBRARIES[prefix])
    except Exception as exc:  # not installed, or built for another torch (e.g. torchvision::nms missing)
        raise ConfigError(f"{key}={name!r} needs {LIBRARIES[prefix]}, which cannot be imported ({exc}); "
                          f"{INSTALL}") from None


def available(prefix: str, key: str = "arch", name: str = "") -> list[str]:
    """The model names the library `prefix` offers."""
    lib = _library(prefix, key, name)
    if prefix == "timm":
        return list(lib.list_models())
    return list(lib.models.list_models(module=lib.models))  # classification models only


def check_name(key: str, name: str) -> None:
    """Raise ConfigError unless `name` (e.g. "timm:resnet18") exists in its library, naming the nearest ones."""
    prefix, _, model = name.partition(":")
    if prefix not in LIBRARIES:
        raise ConfigError(f"{key}={name!r} is invalid: unknown library {prefix!r}; use timm:NAME or tv:NAME")
    names = available(prefix, key, name)
    if model not in names:
        near = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
        hint = f"nearest: {', '.join(f'{prefix}:{n}' for n in near)}" if near else f"see {LIBRARIES[prefix]}'s list"
        raise ConfigError(f"{key}={name!r} is invalid: {LIBRARIES[prefix]} has no model {model!r}; {hint}")


def _unreachable(name: str, exc: Exception) -> ConfigError:
    return ConfigError(f"{name}: pretrained weights could not be downloaded ({type(exc).__name__}); offline, "
                       f"drop kwargs.pretrained and pass the weights file as teacher.ckpt=PATH")


def create_hub_model(name: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs) -> ZooModel:
    """Build `name` ("timm:NAME" or "tv:NAME") for `num_classes` classes and `in_channels` input channels.

    Args:
        name: the prefixed model name.
        num_classes: classifier outputs.
        in_channels: input channels (a pretrained first conv is adapted by timm, or summed for torchvision).
        pretrained: download the library's weights (the classifier is new where the class count differs).
        kwargs: passed to timm.create_model / torchvision.models.get_model.

    Returns:
        A ZooModel whose forward gives logits and forward_intermediates the features.
    """
    check_name("arch", name)
    prefix, _, model = name.partition(":")
    lib = _library(prefix, "arch", name)
    try:
        if prefix == "timm":
            net = lib.create_model(model, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                   **kwargs)
            return TimmModel(net)
        net = lib.models.get_model(model, weights="DEFAULT" if pretrained else None,
                                   **({} if pretrained else {"num_classes": num_classes}), **kwargs)
    except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), or a hub error
        if pretrained:
            raise _unreachable(name, exc) from None
        raise
    adapt_torchvision(net, num_classes, in_channels)
    return TorchvisionModel(net)


class TimmModel(ZooModel):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        if hasattr(self.net, "forward_intermediates"):
            final, stages = self.net.forward_intermediates(x)
        else:  # a timm model without the feature API: its last feature map only
            final = self.net.forward_features(x)
            stages = [final]
        embedding = self.net.forward_head(final, pre_logits=True)
        return FeatureOutput(self.net.get_classifier()(embedding), list(stages), list(stages), embedding)


def _replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def adapt_torchvision(net: nn.Module, num_classes: int, in_channels: int) -> None:
    """Fit a torchvision model to the data: the first conv to `in_channels` (pretrained RGB filters summed, as
    timm does for one channel, or repeated), the last linear layer to `num_classes` (new where it differs)."""
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if convs and convs[0][1].in_channels != in_channels:
        path, old = convs[0]
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                        old.groups, old.bias is not None)
        weight = old.weight.detach().sum(1, keepdim=True)  # (out, 1, k, k)
        new.weight.data.copy_(weight.repeat(1, in_channels, 1, 1) / in_channels)
        if old.bias is not None:
            new.bias.data.copy_(old.bias.detach())
        _replace(net, path, new)
    if linears and linears[-1][1].out_features != num_classes:
        path, old = linears[-1]
        _replace(net, path, nn.Linear(old.in_features, num_classes, old.bias is not None))


class TorchvisionModel(ZooModel):
    """torchvision has no feature API: forward hooks on the body's modules (its `features` where it has one, else
    its top-level children) keep the last output at each resolution; the embedding is the last linear's input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        body = "features" if isinstance(getattr(net, "features", None), nn.Sequential) else ""
        prefix = f"{body}." if body else ""
        # Names, not modules: a module attribute would be registered twice (and saved twice).
        self.body_names = [prefix + n for n, m in net.get_submodule(body).named_children()
                           if not isinstance(m, nn.Linear)]
        self.head_name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        maps: list[Tensor] = []
        seen: list[Tensor] = []

        def keep(_module, _inputs, out):
            if isinstance(out, Tensor) and out.dim() == 4:
                if maps and maps[-1].shape[-2:] == out.shape[-2:]:
                    maps[-1] = out  # same resolution: the later one is the stage's output
                else:
                    maps.append(out)

        hooks = [self.net.get_submodule(n).register_forward_hook(keep) for n in self.body_names]
        head = self.net.get_submodule(self.head_name)
        hooks.append(head.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0])))
        try:
            logits = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        return FeatureOutput(logits, maps, maps, seen[-1])
