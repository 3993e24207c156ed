"""Resume after a kill: a fit resumed from last.ckpt ends with the weights of an uninterrupted one, bitwise."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from kdexp.caching.checkpoints import LAST, checkpoint_callback, last_checkpoint
from kdexp.caching.teacher_outputs import augmented_views, compute_outputs
from kdexp.data import create_datamodule
from kdexp.distill import create_method
from kdexp.models import create_model
from kdexp.modules.base import CHECKPOINT_KEY
from kdexp.modules.distill import DistillModule

EPOCHS = 3


class Killed(RuntimeError):
    pass


class KillMidEpoch(L.Callback):
    """Stands in for kill -9 in the middle of epoch `epoch` (after its checkpoint of epoch - 1)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise Killed


def build(case: str) -> tuple[DistillModule, object, object]:
    """A fresh process's set-up: seed, data, models, module; returns (module, train loader, val loader)."""
    L.seed_everything(0, verbose=False)
    dm = create_datamodule("synthetic", num_samples=160, num_test=20, image_size=8, batch_size=16, seed=5,
                           augment=case != "alone")
    student = create_model("cnn_tiny", num_classes=10, in_channels=3)
    recipe = {"optimizer": "sgd", "lr": 0.05, "schedule": "cosine"}
    if case == "alone":
        return DistillModule(student, recipe=recipe, max_epochs=EPOCHS), dm.train_dataloader(), dm.val_dataloader()
    teacher = create_model("cnn_small", num_classes=10, in_channels=3)
    method = create_method("crd", num_negatives=32)  # negatives come from the global RNG
    shape = dm.input_shape
    method.build(student.feature_shapes(shape), teacher.feature_shapes(shape), 10, dm.num_train)
    module = DistillModule(student, teacher=teacher, method=method, weights={"ce": 1, "kd": 1, "crd": 0.5},
                           recipe=recipe, max_epochs=EPOCHS)
    train = dm.train_dataloader()  # online teacher, random augmentation every epoch
    if case == "cached views":
        views = augmented_views(dm, 2, seed=0)
        module.use_teacher_outputs(compute_outputs(teacher, views, ("logits", "embedding"), dm.num_train, 2))
        train = dm.view_loader(views, 2)
    return module, train, dm.val_dataloader()


def run(case: str, folder, kill_at: int | None = None, resume: bool = False) -> tuple[DistillModule, list]:
    module, train, val = build(case)
    seen = []
    module.metric_sink = lambda metrics, epoch: seen.append((epoch, metrics))
    callbacks = [checkpoint_callback(folder)] + ([KillMidEpoch(kill_at)] if kill_at is not None else [])
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        default_root_dir=str(folder))
    trainer.fit(module, train, val, ckpt_path=last_checkpoint(folder) if resume else None)
    return module, seen


@pytest.mark.slow
@pytest.mark.parametrize("case", ["alone", "crd online teacher", "cached views"])
def test_resumed_training_ends_with_the_uninterrupted_weights(case, tmp_path):
    whole, whole_seen = run(case, tmp_path / "whole")
    assert last_checkpoint(tmp_path / "whole") == tmp_path / "whole" / LAST
    assert sorted(p.name for p in (tmp_path / "whole").glob("*.ckpt")) == [LAST]  # one file, replaced every epoch
    folder = tmp_path / "killed"
    assert last_checkpoint(folder) is None
    with pytest.raises(Killed):
        run(case, folder, kill_at=2)
    killed_at = torch.load(folder / LAST, weights_only=True)
    assert killed_at["epoch"] == 1 and killed_at[CHECKPOINT_KEY]["best_epoch"] in (0, 1)
    assert killed_at["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 2, "seed": 5}]
    resumed, resumed_seen = run(case, folder, resume=True)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert (resumed.best_val_acc, resumed.best_epoch) == (whole.best_val_acc, whole.best_epoch)
    assert all(torch.equal(v, resumed.best_state[k]) for k, v in whole.best_state.items())
    assert resumed.last_val_acc == whole.last_val_acc
    assert resumed_seen == whole_seen[2:]  # only the resumed epoch is reported again, with the same numbers


def test_checkpoint_callback_keeps_only_last(tmp_path):
    cb = checkpoint_callback(tmp_path)
    assert cb.save_top_k == 1 and cb.monitor is None and cb.dirpath == str(tmp_path)
    assert last_checkpoint(tmp_path) is None
