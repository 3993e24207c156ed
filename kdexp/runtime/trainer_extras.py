"""Lightning callbacks and loggers from config, merged with kdexp's own, and the Trainer arguments kdexp keeps.

    kdexp-train '+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/acc,
                                      mode: max, patience: 3}]'
    kdexp-train +trainer.logger.csv._target_=lightning.pytorch.loggers.CSVLogger +trainer.logger.csv.save_dir=csv

`trainer.callbacks` and `trainer.logger` are a list of nodes with a `_target_` (a class path), or a mapping of
names to such nodes (so one entry can be overridden on the command line). Every training stage (teacher,
baseline, student, a method's init stage, fine-tuning) gets fresh instances: an EarlyStopping's patience counts
within one stage. Everything else in `trainer:` is a lightning.Trainer argument, except kdexp's own switches.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from kdexp.config.errors import ConfigError
from kdexp.config.rules import unknown_key

KDEXP_SWITCHES = ("compile", "channels_last")  # kdexp's own keys in `trainer:` (training/trainer.py TRAINER_EXTRAS)
LIST_KEYS = ("callbacks", "logger")
# Trainer arguments kdexp sets itself, and what to do instead. max_epochs is not here: trainer.max_epochs is the
# student's and the baseline's epoch count; the teacher (teacher.max_epochs) and fine-tuning (finetune.epochs)
# stages override it.
RESERVED = {
    "enable_checkpointing": "kdexp turns it on exactly when trainer.callbacks holds a checkpoint callback "
                            "(e.g. lightning.pytorch.callbacks.ModelCheckpoint); final weights go to MLflow anyway",
    "default_root_dir": "kdexp sets it to the run's output dir (hydra.run.dir / hydra.sweep.dir, under paths.root)",
}
EXAMPLES = {"callbacks": "lightning.pytorch.callbacks.EarlyStopping", "logger": "lightning.pytorch.loggers.CSVLogger"}


def check_trainer_node(trainer_node: Mapping) -> None:
    """The checks that need no import of Lightning: reserved keys and the shape of callbacks / logger."""
    for key, why in RESERVED.items():
        if key in trainer_node:
            raise ConfigError(f"trainer.{key}={trainer_node[key]!r} is reserved: {why}; remove it")
    for key in LIST_KEYS:
        _entries(key, trainer_node.get(key))


def check_trainer_arguments(trainer_node: Mapping) -> None:
    """Misspelled Trainer arguments, checked last in validation (it imports Lightning when a key is not one of the
    schema's typed ones), so that a typo fails before any MLflow run exists and after every cheaper check."""
    from kdexp.config.schema import TrainerSchema

    typed = set(TrainerSchema.__dataclass_fields__) | set(LIST_KEYS)
    others = {k: v for k, v in trainer_node.items() if k not in typed}
    if others:
        import lightning.pytorch as pl

        _check_trainer_arguments(others, pl.Trainer)


def trainer_extras(trainer_node: Mapping) -> tuple[dict[str, Any], list, list]:
    """(trainer_kwargs, callbacks, loggers) for one stage's lightning.Trainer.

    trainer_kwargs: the `trainer:` node without callbacks / logger, with enable_checkpointing set (True only
    when a checkpoint callback is configured); kdexp's switches (compile, channels_last) stay in, for the caller
    to pop. callbacks / loggers: fresh instances of the configured nodes, to merge with kdexp's own callbacks
    and to pass as `logger=loggers or False`.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, Checkpoint, LearningRateMonitor, ProgressBar, TQDMProgressBar
    from lightning.pytorch.loggers import Logger

    check_trainer_node(trainer_node)
    kwargs = {k: v for k, v in trainer_node.items() if k not in LIST_KEYS}
    _check_trainer_arguments(kwargs, pl.Trainer)
    callbacks = [_build("callbacks", where, node, Callback)
                 for where, node in _entries("callbacks", trainer_node.get("callbacks"))]
    loggers = [_build("logger", where, node, Logger) for where, node in _entries("logger", trainer_node.get("logger"))]
    if not loggers:
        needy = next((c for c in callbacks if isinstance(c, LearningRateMonitor)), None)
        if needy is not None:
            raise ConfigError(
                f"trainer.callbacks has {type(needy).__name__}, which needs a logger, and trainer.logger is empty: "
                f"add one, e.g. +trainer.logger.csv._target_={EXAMPLES['logger']} +trainer.logger.csv.save_dir=DIR "
                "(kdexp already records the lr of every epoch in MLflow as metric `lr`)"
            )
    kwargs["enable_checkpointing"] = any(isinstance(c, Checkpoint) for c in callbacks)
    if kwargs.get("enable_progress_bar") and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TQDMProgressBar())  # Lightning would pick Rich's bar wherever `rich` is installed
    return kwargs, callbacks, loggers


def _entries(key: str, value: Any) -> list[tuple[str, Mapping]]:
    """[(where, node)] of trainer.callbacks / trainer.logger; None, False and empty mean none."""
    if value is None or value is False:
        return []
    if isinstance(value, Mapping) and "_target_" not in value:  # {name: node}: one entry per name
        items = [(f"trainer.{key}.{name}", node) for name, node in value.items() if node is not None]
    elif isinstance(value, (list, tuple)):
        items = [(f"trainer.{key}[{i}]", node) for i, node in enumerate(value)]
    else:
        raise ConfigError(
            f"trainer.{key}={value!r} is invalid: give a list of nodes with a _target_, e.g. "
            f"[{{_target_: {EXAMPLES[key]}}}] (kdexp records metrics in MLflow itself)"
        )
    for where, node in items:
        if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
            raise ConfigError(f"{where}={node!r} is invalid: each entry needs a _target_ class path, "
                              f"e.g. {{_target_: {EXAMPLES[key]}}}")
    return items


def _check_trainer_arguments(kwargs: Mapping, trainer_class: type) -> None:
    accepted = set(inspect.signature(trainer_class.__init__).parameters) - {"self", "callbacks", "logger"}
    valid = sorted(accepted | set(KDEXP_SWITCHES) | set(LIST_KEYS))
    for key in kwargs:
        if key in accepted or key in KDEXP_SWITCHES:
            continue
        raise unknown_key(f"trainer.{key}", kwargs[key], valid,
                          f"not a lightning.Trainer argument nor a kdexp switch ({', '.join(KDEXP_SWITCHES)})")


def _locate(key: str, where: str, target: str) -> Any:
    module_name, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name) if module_name else importlib.import_module(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}._target_={target!r} cannot be imported ({exc}): give a class path such as "
                          f"{EXAMPLES[key]}") from None


def _build(key: str, where: str, node: Mapping, base: type) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = node["_target_"]
    _locate(key, where, target)  # an unknown class path: a clear error, before Hydra's longer one
    try:
        obj = instantiate(dict(node), _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{where}: {target}(...) failed: {type(cause).__name__}: {cause}") from None
    if not isinstance(obj, base):
        raise ConfigError(f"{where}._target_={target!r} is not a {base.__module__}.{base.__name__} "
                          f"(trainer.{key} takes those, e.g. {EXAMPLES[key]})")
    return obj
