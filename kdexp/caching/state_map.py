"""Fit a checkpoint's tensors to a model whose tensor names differ: checkpoints from the field.

RepDistiller and mdistiller save their CIFAR teachers as `{'model': state_dict}` with their own module names
(conv1/bn1/layer1.0.conv1/fc where kdexp has stem.0/stem.1/stages.0.0.conv1.0/classifier), torchvision saves
bare state dicts, Lightning nests them under `state_dict` with a module prefix. Their architectures register
the same tensors in the same order as the zoo's (verified against their code), so tensors are matched by
position, each pair checked for shape and kind (weight, bias, running_mean...). A checkpoint that does not map
is refused naming the first mismatch: nothing is loaded from it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

# Sub-dicts a checkpoint may keep its weights in, and the module prefixes a training wrapper adds: a
# Lightning checkpoint of kdexp's own modules (student./teacher./model.), mdistiller's whole distiller
# (module.student./module.teacher.: DataParallel's module. comes first and is dropped).
CONTAINERS = ("state_dict", "model", "net")
PREFIXES = ("student.", "teacher.", "model.", "net.")
PARALLEL = "module."
COUNTER = "num_batches_tracked"  # absent from old torchvision files; the model's own is kept then


def candidates(obj) -> list[dict[str, Tensor]]:
    """The state dicts a loaded checkpoint may hold, most likely first (a Lightning checkpoint's student
    before its teacher, as before: a distilled student is the usual next teacher)."""
    if not isinstance(obj, Mapping):
        return []
    found = []
    for key in CONTAINERS:
        if isinstance(obj.get(key), Mapping):
            found += candidates(obj[key])
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith(PARALLEL) for k in tensors):
        tensors = {k[len(PARALLEL):]: v for k, v in tensors.items()}
    if tensors:
        for prefix in PREFIXES:
            sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if sub:
                found.append(sub)
        found.append(tensors)
    return found


def map_state(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` renamed to `own`'s names: by name where all names agree, else by position.

    Returns a complete state dict for the model. Raises ValueError naming the first tensor that does not map,
    with both shapes (or the counts, where one list ends first).
    """
    if set(state) == set(own):
        wrong = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
        if not wrong:
            return dict(state)
        k = wrong[0]
        raise ValueError(f"tensor {k!r} has shape {tuple(state[k].shape)}, the model's {tuple(own[k].shape)}")
    theirs = [k for k in state if not k.endswith(COUNTER)]
    ours = [k for k in own if not k.endswith(COUNTER)]
    renamed: dict[str, Tensor] = {}
    modules: dict[str, str] = {}  # our module path -> theirs, to carry the BN counters along
    for i, (a, b) in enumerate(zip(theirs, ours)):
        shape_a, shape_b = tuple(state[a].shape), tuple(own[b].shape)
        if shape_a != shape_b or a.rsplit(".", 1)[-1] != b.rsplit(".", 1)[-1]:
            raise ValueError(f"tensor #{i} {a!r} {shape_a} does not match the model's {b!r} {shape_b}")
        renamed[b] = state[a]
        modules[b.rpartition(".")[0]] = a.rpartition(".")[0]
    if len(theirs) != len(ours):
        first = (f"its {theirs[len(ours)]!r} has no counterpart" if len(theirs) > len(ours)
                 else f"the model's {ours[len(theirs)]!r} {tuple(own[ours[len(theirs)]].shape)} has none")
        raise ValueError(f"it holds {len(theirs)} tensors, the model {len(ours)}: {first}")
    for k, v in own.items():
        if k.endswith(COUNTER):
            module = modules.get(k.rpartition(".")[0])
            counter = state.get(f"{module}.{COUNTER}") if module is not None else None
            renamed[k] = counter if counter is not None else v
    return renamed
