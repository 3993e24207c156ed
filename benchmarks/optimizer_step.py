"""The optimizer step: torch's per-tensor implementation (its CPU default) against the fused kernels that
kdexp.modules.optim.build_optimizer picks (one kernel over all parameters), alone and inside a training step.

    python benchmarks/optimizer_step.py          # 2.5 min here
    python benchmarks/optimizer_step.py --quick  # smoke run

"step" rows time optimizer.step() on random gradients; "train step" rows time forward + backward + step of
a student at the benchmark batch (128 for 28x28 Fashion-MNIST-sized inputs, 64 for 32x32 CIFAR-sized).
Results: outputs/bench/optimizer_step[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.common import REPO, loadavg, machine, md_table, median_ms, write_results
from kdexp.models import create_model
from kdexp.modules.optim import build_optimizer

RECIPES = {"sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
           "adam": {"optimizer": "adam", "lr": 1e-3}}
# arch, input channels, image size, classes, batch: the default Fashion pair's student and CIFAR students
MODELS = [("cnn_tiny", 1, 28, 10, 128), ("resnet8x4", 3, 32, 100, 64), ("wrn_16_2", 3, 32, 100, 64)]


def optimizer(model: torch.nn.Module, recipe: dict, fused: bool) -> torch.optim.Optimizer:
    """build_optimizer as kdexp runs it, with the fused kernels on or off."""
    out = build_optimizer(list(model.parameters()), recipe, max_epochs=1, fused=None if fused else False)
    return out["optimizer"] if isinstance(out, dict) else out


def case(arch: str, channels: int, size: int, classes: int, batch: int, recipe: dict, fused: bool, repeats: int):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=classes, in_channels=channels)
    opt = optimizer(model, recipe, fused)
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, classes, (batch,))
    for p in model.parameters():
        p.grad = torch.randn_like(p)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step = median_ms(opt.step, repeats * 4)
    return step, median_ms(train_step, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args()
    models, repeats = (MODELS[:1], 3) if args.quick else (MODELS, 25)
    res = {"machine": machine(), "load_before": loadavg(), "rows": []}
    for arch, channels, size, classes, batch in models:
        params = sum(p.numel() for p in create_model(arch, num_classes=classes, in_channels=channels).parameters())
        for name, recipe in RECIPES.items():
            times = {}
            for fused in (False, True, False, True):  # alternate: a load change hits both
                times.setdefault(fused, []).append(case(arch, channels, size, classes, batch, recipe, fused, repeats))
            (loop_step, loop_train), (fused_step, fused_train) = (min(times[False]), min(times[True]))
            res["rows"].append({"arch": arch, "params": params, "optimizer": name, "batch": batch,
                                "loop_step_ms": loop_step, "fused_step_ms": fused_step,
                                "loop_train_step_ms": loop_train, "fused_train_step_ms": fused_train})
    res["load_after"] = loadavg()
    rows = [[r["arch"], r["params"], r["optimizer"], r["batch"], round(r["loop_step_ms"], 3),
             round(r["fused_step_ms"], 3), round(r["loop_step_ms"] / r["fused_step_ms"], 2),
             round(r["loop_train_step_ms"], 2), round(r["fused_train_step_ms"], 2),
             round(r["loop_train_step_ms"] / r["fused_train_step_ms"], 3)] for r in res["rows"]]
    md = (f"Optimizer step, per-tensor loop vs fused, {res['machine']['cpu']}, {res['machine']['cores']} cores, "
          f"torch {res['machine']['torch']}, load {res['load_before']} -> {res['load_after']}\n\n"
          + md_table(["model", "params", "optimizer", "batch", "loop step ms", "fused step ms", "step speed-up",
                      "loop train step ms", "fused train step ms", "train step speed-up"], rows))
    write_results(args.out, "optimizer_step" + ("_quick" if args.quick else ""), res, md)
    print(md)


if __name__ == "__main__":
    main()
