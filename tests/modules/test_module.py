"""DistillModule: KD loss values, the frozen teacher, weighted terms, best-epoch tracking."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from kdexp.data import create_datamodule
from kdexp.distill import kd_loss
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule
from kdexp.modules.optim import build_optimizer, fused_kernels


def test_kd_loss_matches_hand_computation_with_t_squared():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    T = 2.0
    expected = 0.0
    for si, ti in zip(s.tolist(), t.tolist()):
        ps = [math.exp(v / T) for v in si]
        pt = [math.exp(v / T) for v in ti]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    expected = expected / 2 * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_scale_is_temperature_independent_for_small_logits():
    # With the T² factor the gradient magnitude stays ~constant as T grows (Hinton et al. §2.1).
    s = torch.tensor([[0.1, -0.2, 0.05]], requires_grad=True)
    t = torch.tensor([[0.3, -0.1, 0.0]])
    grads = []
    for T in (5.0, 50.0):
        s.grad = None
        kd_loss(s, t, T).backward()
        grads.append(s.grad.norm().item())
    assert grads[0] == pytest.approx(grads[1], rel=0.05)


@pytest.fixture(scope="module")
def synthetic():
    dm = create_datamodule("synthetic", num_samples=256, num_test=64, image_size=8, batch_size=32, seed=0)
    dm.setup()
    return dm


def _fit(module, dm, epochs=2):
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, dm.train_dataloader(), dm.val_dataloader())
    return trainer


def test_teacher_stays_frozen_including_batchnorm_buffers(synthetic):
    teacher = create_model("cnn_small", num_classes=10, in_channels=3)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = create_model("cnn_tiny", num_classes=10, in_channels=3)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    module = DistillModule(student, teacher=teacher, weights={"ce": 0.1, "kd": 0.9}, max_epochs=2)
    _fit(module, synthetic)
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # running_mean/var and num_batches_tracked included
        assert torch.equal(v, before[k]), k
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)


def test_loss_is_weighted_sum_of_named_terms(synthetic):
    torch.manual_seed(0)
    teacher = create_model("cnn_small", num_classes=10, in_channels=3)
    student = create_model("cnn_tiny", num_classes=10, in_channels=3)
    module = DistillModule(student, teacher=teacher, weights={"ce": 0.3, "kd": 2.0}, temperature=3.0)
    student.eval()  # no BN statistics drift between the two forward passes
    x, y, index = next(iter(synthetic.train_dataloader()))
    terms, _ = module.loss_terms(x, y, index)
    assert set(terms) == {"ce", "kd"}
    with torch.no_grad():
        expected_ce = F.cross_entropy(student(x), y)
        expected_kd = kd_loss(student(x), teacher(x), 3.0)
    assert terms["ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    total = module.training_step((x, y, index), 0)
    assert total.item() == pytest.approx(0.3 * expected_ce.item() + 2.0 * expected_kd.item(), rel=1e-5)


def test_zero_weight_terms_are_not_computed(synthetic):
    teacher = create_model("cnn_small", num_classes=10, in_channels=3)
    module = DistillModule(create_model("cnn_tiny", in_channels=3), teacher=teacher, weights={"ce": 1.0, "kd": 0})
    assert not module.uses_teacher  # no teacher forward pass is paid for a zero-weight KD term
    x, y, index = next(iter(synthetic.train_dataloader()))
    terms, _ = module.loss_terms(x, y, index)
    assert set(terms) == {"ce"}


def test_epoch_metrics_reach_the_sink_and_best_epoch_is_tracked(synthetic):
    seen = []
    student = create_model("cnn_tiny", num_classes=10, in_channels=3)
    module = DistillModule(student, recipe={"optimizer": "adam", "lr": 0.01}, max_epochs=3,
                           metric_sink=lambda m, epoch: seen.append((epoch, m)))
    _fit(module, synthetic, epochs=3)
    assert [e for e, _ in seen] == [0, 1, 2]
    for _, metrics in seen:
        assert {"train/loss", "train/ce", "train/acc", "val/acc", "val/loss", "lr"} <= set(metrics)
        assert 0.0 <= metrics["val/acc"] <= 1.0
    val = [m["val/acc"] for _, m in seen]
    assert module.best_val_acc == max(val) and module.best_epoch == val.index(max(val))
    assert module.last_val_acc == val[-1]
    best = module.best_student()
    x, y = synthetic.split_tensors("val")
    with torch.no_grad():
        best.eval()
        assert (best(x).argmax(1) == y).float().mean().item() == pytest.approx(module.best_val_acc)


@pytest.mark.parametrize("recipe, expected", [
    ({"optimizer": "sgd", "lr": 0.05, "schedule": "multistep", "milestones": [2, 4], "gamma": 0.1},
     [0.05, 0.05, 0.005, 0.005, 0.0005]),
    ({"optimizer": "adam", "lr": 0.01, "schedule": "constant"}, [0.01] * 5),
])
def test_schedules(recipe, expected):
    params = [torch.nn.Parameter(torch.zeros(1))]
    out = build_optimizer(params, recipe, max_epochs=5)
    opt = out["optimizer"] if isinstance(out, dict) else out
    sched = out["lr_scheduler"]["scheduler"] if isinstance(out, dict) else None
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
    assert lrs == pytest.approx(expected)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="recipe.optimizer='lbfgs'.*sgd, adam, adamw"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], {"optimizer": "lbfgs", "lr": 1.0}, 1)


@pytest.mark.parametrize("recipe", [
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05},
])
def test_fused_optimizer_follows_the_reference_update(recipe):
    """build_optimizer's fused kernels must take the same steps as torch's per-tensor implementation."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(20)]
    fused = [torch.nn.Parameter(t.clone()) for t in start]
    opt = build_optimizer(fused, recipe, max_epochs=1)
    assert opt.defaults["fused"] is True
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    reference = build_optimizer(plain, recipe, max_epochs=1, fused=False)
    assert not reference.defaults["fused"]
    for step_grads in grads:
        for params, o in ((fused, opt), (plain, reference)):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            o.step()
    for a, b, before in zip(fused, plain, start):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - before).abs().mean() > 1e-2  # the parameters moved: the comparison is not vacuous


def test_fused_kernels_only_where_torch_has_them():
    cpu = torch.nn.Parameter(torch.zeros(2))
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert fused_kernels([cpu]) and fused_kernels([{"params": [cpu], "lr": 0.1}])
    assert not fused_kernels([cpu, meta]) and not fused_kernels([])
    assert not build_optimizer([meta], {"optimizer": "adam", "lr": 0.1}, 1).defaults["fused"]


def test_epoch_sums_report_counts_as_accuracies_and_weight_means_by_batch_size():
    from kdexp.modules.base import EpochSums

    sums = EpochSums()
    sums.add(4, correct=torch.tensor(3), correct_1=torch.tensor(1), loss=torch.tensor(2.0))
    sums.add(2, correct=torch.tensor(1), correct_1=torch.tensor(2), loss=torch.tensor(5.0))
    assert sums.reduce("val") == pytest.approx({"val/acc": 4 / 6, "val/acc_1": 3 / 6, "val/loss": (8 + 10) / 6})
    assert sums.reduce("val") == {}  # reduced once: the next epoch starts empty
