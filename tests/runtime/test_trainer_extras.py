"""trainer.callbacks / trainer.logger from config: instantiated, merged with kdexp's callbacks, run on a real fit;
reserved and unknown keys rejected with one clear line."""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf

from kdexp.config.errors import ConfigError
from kdexp.runtime.trainer_extras import KDEXP_SWITCHES, check_trainer_node, trainer_extras
from kdexp.tracking.progress import EpochProgress
from tests.conftest import compose_train
from tests.tiny_fit import tiny_module_and_loaders

LR = 0.004


def trainer_node(*overrides: str) -> dict:
    """The `trainer:` node of kdexp-train's composed config, as the pipeline sees it (plain containers)."""
    cfg = compose_train(["trainer.accelerator=cpu", *overrides])
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def stage_trainer(node: dict, root, max_epochs: int, own_callbacks: list):
    """What kdexp's `fit` does with the node: kdexp's callbacks first, then the configured ones."""
    import lightning as L

    kwargs, callbacks, loggers = trainer_extras(node)
    kwargs["max_epochs"] = max_epochs
    for key in KDEXP_SWITCHES:
        kwargs.pop(key)
    return L.Trainer(**kwargs, logger=loggers or False, callbacks=[*own_callbacks, *callbacks],
                     default_root_dir=str(root))


def test_early_stopping_and_lr_monitor_from_config_run_on_a_real_fit(tmp_path):
    node = trainer_node(
        # min_delta=1: no epoch can improve val/acc by 1, so patience 1 stops after the 2nd of 10 epochs
        "+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/acc, mode: max,"
        " patience: 1, min_delta: 1.0},"
        " {_target_: lightning.pytorch.callbacks.LearningRateMonitor, logging_interval: epoch}]",
        "+trainer.logger.csv._target_=lightning.pytorch.loggers.CSVLogger",
        f"+trainer.logger.csv.save_dir={tmp_path / 'csv'}", "+trainer.logger.csv.name=kd",
    )
    own = EpochProgress("student kd")
    trainer = stage_trainer(node, tmp_path, 10, [own])
    assert [type(c).__name__ for c in trainer.callbacks[:3]] == ["EpochProgress", "EarlyStopping",
                                                                  "LearningRateMonitor"]
    module, train, val, logged = tiny_module_and_loaders(10, lr=LR)
    trainer.fit(module, train, val)
    assert trainer.current_epoch == 2 and len(logged) == 2 and trainer.should_stop  # stopped by EarlyStopping
    assert len(own.durations) == 2  # kdexp's own callback ran beside them
    with open(tmp_path / "csv" / "kd" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert lrs == [LR, LR]  # LearningRateMonitor logged the recipe's lr once per epoch through the CSV logger


def test_empty_callbacks_no_longer_clash_with_kdexps_own():
    """`+trainer.callbacks=[]` used to die with TypeError: got multiple values for keyword argument 'callbacks'."""
    kwargs, callbacks, loggers = trainer_extras(trainer_node("+trainer.callbacks=[]", "+trainer.logger=[]"))
    assert callbacks == [] and loggers == [] and not {"callbacks", "logger"} & set(kwargs)
    assert kwargs["enable_checkpointing"] is False and kwargs["max_epochs"] == 30  # the node's, kept for fit


def test_checkpoint_callback_turns_checkpointing_on(tmp_path):
    node = trainer_node("+trainer.callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                        "+trainer.callbacks.ckpt.monitor=val/acc", "+trainer.callbacks.ckpt.mode=max")
    trainer = stage_trainer(node, tmp_path, 1, [])
    trainer.fit(*tiny_module_and_loaders(1)[:3])
    assert trainer.checkpoint_callback is not None and list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_progress_bar_switch_passes_through():
    on = stage_trainer(trainer_node("trainer.enable_progress_bar=true"), ".", 1, [])
    off = stage_trainer(trainer_node(), ".", 1, [])
    assert type(on.progress_bar_callback).__name__ == "TQDMProgressBar" and off.progress_bar_callback is None


@pytest.mark.parametrize("override, message", [
    ("+trainer.enable_checkpointing=true", "trainer.enable_checkpointing=True is reserved: kdexp turns it on"),
    ("+trainer.default_root_dir=/tmp/x", "trainer.default_root_dir='/tmp/x' is reserved"),
    ("+trainer.logger=true", "trainer.logger=True is invalid: give a list of nodes with a _target_"),
    ("+trainer.callbacks=[early_stopping]", "trainer.callbacks[0]='early_stopping' is invalid: each entry needs a"),
    ("+trainer.max_epoch=3", ("trainer.max_epoch=3 is invalid: not a lightning.Trainer argument nor a kdexp switch "
                             "(compile, channels_last); did you mean max_epochs")),
    ("+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.EarlyStoping}]",
     ("trainer.callbacks[0]._target_='lightning.pytorch.callbacks.EarlyStoping' cannot be imported (module "
     "'lightning.pytorch.callbacks' has no attribute 'EarlyStoping')")),
    ("+trainer.callbacks.es._target_=no_such_package.Callback",
     "trainer.callbacks.es._target_='no_such_package.Callback' cannot be imported (No module named 'no_such_package')"),
    ("+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.EarlyStopping, monitr: val/acc}]",
     "trainer.callbacks[0]: lightning.pytorch.callbacks.EarlyStopping(...) failed: TypeError:"),
    ("+trainer.callbacks=[{_target_: collections.OrderedDict}]",
     "trainer.callbacks[0]._target_='collections.OrderedDict' is not a lightning.pytorch.callbacks.callback.Callback"),
    ("+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.LearningRateMonitor}]",
     "trainer.callbacks has LearningRateMonitor, which needs a logger, and trainer.logger is empty"),
])
def test_bad_trainer_config_is_one_clear_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        trainer_extras(trainer_node(override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_structure_checks_need_no_lightning():
    """check_trainer_node is what a fail-fast validation can call before importing Lightning."""
    import subprocess
    import sys

    code = ("import sys; from kdexp.runtime.trainer_extras import check_trainer_node as c; "
            "c({'max_epochs': 1, 'callbacks': [{'_target_': 'a.B'}]}); print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(ConfigError, match="trainer.default_root_dir"):
        check_trainer_node({"default_root_dir": "x"})


def test_misspelled_trainer_argument_fails_before_any_mlflow_run(tmp_path):
    """The did-you-mean check runs in the config validation, so the store is never created for a typo."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "kdexp-train")
    out = subprocess.run([exe, f"paths.root={tmp_path}", "+trainer.max_epoch=3"], capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert out.returncode == 2 and "did you mean max_epochs" in out.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_lightning_banners_stay_out_of_every_stage_whichever_package_logs_them():
    """GPU/TPU/tip lines and 'fit stopped' come from lightning.pytorch or, where the standalone package is
    installed, pytorch_lightning: neither logs at INFO once kdexp has set up an experiment."""
    import logging

    from kdexp.training.context import quiet_lightning

    quiet_lightning()
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)
