"""Quantization-aware students with torch's eager-mode QAT (`torch.ao.quantization`: QuantStub/DeQuantStub,
`fuse_modules_qat`, `prepare_qat`, `convert`): prepare, convert to a real int8 model, evaluate it.

On torch 2.13 every quantization flow in torch itself is deprecated in favour of torchao (eager mode and
PT2E alike), but torchao's int8 convolutions only become real int8 kernels through torch.compile/Inductor;
eager mode is the one flow that still yields executable int8 modules on a plain CPU install. Its
deprecation warnings are silenced here, where we chose it on purpose.

Families: the small CNNs (`cnn_*`: conv+BN+ReLU fused), MLPs (`mlp_*`) and CIFAR ResNets (`resnet*`: residual
adds go through a FloatFunctional, conv+BN(+ReLU) fused); VGGs and ShuffleNetV2 convert as they are. Any
other architecture (WRNs, MobileNetV2, ShuffleNetV1, ResNet50: tensor `+` in their blocks) is rejected
before training, with a clear error, when its int8 conversion does not run.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.ao import quantization as tq
from torch.ao.nn import quantized as ao_nn

from kdexp.config.errors import ConfigError
from kdexp.config.variants import QUANT_BACKENDS
from kdexp.models.resnet import BasicBlock

BACKENDS = QUANT_BACKENDS  # the variant=quantized choices (kdexp.config.variants)


@contextmanager
def quiet_quantization():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|reduce_range|quantize_per).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


class QuantizedStudent(nn.Module):
    """A zoo model between QuantStub and DeQuantStub: float tensors in and out, int8 inside once converted."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.quant, self.model, self.dequant = tq.QuantStub(), model, tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.model(self.quant(x)))


class QuantizableBasicBlock(nn.Module):
    """The ResNet BasicBlock with its residual add as a FloatFunctional (int8 tensors cannot use `+`)."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.relu, self.conv2, self.shortcut = block.conv1, block.relu, block.conv2, block.shortcut
        self.skip_add = ao_nn.FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_add.add(self.conv2(self.relu(self.conv1(x))), self.shortcut(x))


def swap_residual_blocks(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, BasicBlock):
            setattr(model, name, QuantizableBasicBlock(child))
        else:
            swap_residual_blocks(child)


FUSABLE = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.ReLU))


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Names of conv+BN(+ReLU) and linear+ReLU runs inside Sequentials, and conv1+relu of residual blocks."""
    groups: list[list[str]] = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, QuantizableBasicBlock):
            groups.append([f"{dot}conv1.0", f"{dot}conv1.1", f"{dot}relu"])
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        i = 0
        while i < len(children):
            for pattern in FUSABLE:
                run = children[i : i + len(pattern)]
                if len(run) == len(pattern) and all(type(m) is t for (_, m), t in zip(run, pattern)):
                    groups.append([f"{dot}{n}" for n, _ in run])
                    i += len(pattern) - 1
                    break
            i += 1
    # a block's conv1 Sequential is also matched alone as conv+BN: keep only the longer group
    covered = {name for g in groups if len(g) == 3 for name in g}
    return [g for g in groups if len(g) == 3 or not set(g) & covered]


def prepare_qat_student(model: nn.Module, backend: str = "x86") -> QuantizedStudent:
    """Fused, fake-quantized copy of `model` for training (torch.ao eager-mode QAT)."""
    if backend not in BACKENDS:
        raise ConfigError(f"variant.backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    torch.backends.quantized.engine = backend
    wrapped = QuantizedStudent(copy.deepcopy(model)).train()
    swap_residual_blocks(wrapped)
    with quiet_quantization():
        groups = fusion_groups(wrapped)
        if groups:
            tq.fuse_modules_qat(wrapped, groups, inplace=True)
        wrapped.qconfig = tq.get_default_qat_qconfig(backend)
        tq.prepare_qat(wrapped, inplace=True)
    return wrapped


def convert_int8(qat: nn.Module) -> nn.Module:
    """The real int8 model: observers' ranges become scales, weights int8, kernels quantized."""
    with quiet_quantization():
        return tq.convert(copy.deepcopy(qat).cpu().eval(), inplace=False)


def observed(qat: nn.Module) -> nn.Module:
    """A copy whose observers no longer move: evaluating it cannot tune the int8 ranges to the data it sees."""
    model = copy.deepcopy(qat).eval()
    model.apply(tq.disable_observer)
    return model


def float_view(qat: nn.Module) -> nn.Module:
    """The QAT student's float weights with fake quantization switched off (the same weights, unquantized)."""
    model = copy.deepcopy(qat).eval()
    model.apply(tq.disable_fake_quant)
    model.apply(tq.disable_observer)
    return model


def check_quantizable(model: nn.Module, input_shape: tuple[int, ...], backend: str, arch: str) -> None:
    """Prepare, convert and run the architecture once: an unsupported family fails before any training."""
    try:
        with quiet_quantization(), torch.no_grad():
            qat = prepare_qat_student(model, backend)
            qat(torch.zeros(2, *input_shape))
            convert_int8(qat)(torch.zeros(2, *input_shape))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"variant=quantized: student {arch!r} cannot be converted to int8 in eager mode "
                          f"({exc}); "
                          "supported: cnn_*, mlp_*, resnet* (CIFAR), vgg*, shufflenetv2") from None


@torch.inference_mode()
def int8_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size].cpu()) for i in range(0, len(x), batch_size)])
