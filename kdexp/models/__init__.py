"""The model zoo: `create_model(name, num_classes=..., in_channels=...)` and `list_models()`.

Each architecture family lives in its own module and registers its constructors with
`@register_model`; importing this package imports every family.
"""

from __future__ import annotations

from kdexp.config.registry import Registry
from kdexp.models.base import FeatureOutput, ZooModel, example_input, num_params
from kdexp.models.hub import create_hub_model, is_hub_name

MODELS: Registry[ZooModel] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> ZooModel:
    """A zoo model; `family:source` (hf:<hub id or folder>) passes `source` to the family; timm and torchvision
    models by prefixed name ("timm:resnet18", "tv:resnet18"; kdexp.models.hub)."""
    if is_hub_name(name):
        model = create_hub_model(name, num_classes, in_channels, **kwargs)
    else:
        name, _, source = name.partition(":")
        if source:
            kwargs["source"] = source
        model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.num_classes, model.in_channels = num_classes, in_channels
    return model


def list_models() -> list[str]:
    return MODELS.names()


# Families register themselves on import (kept last: they import register_model from here).
from kdexp.models import (  # noqa: E402,F401
    mobilenetv2,
    resnet,
    resnet_imagenet,
    shufflenet,
    small,
    text,
    vgg,
    wrn,
)

__all__ = ["FeatureOutput", "ZooModel", "create_model", "example_input", "list_models", "num_params",
           "register_model"]
