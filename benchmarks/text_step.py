"""Tokens per second of a text distillation step (DistillModule.training_step + backward + Adam), with the
teacher run every step ("online") or its outputs looked up from the teacher-output cache ("cached"): KD (logits),
and TinyBERT for the BERT student (per-token hidden states and attention maps, cached padded to max_length).

The models are those of sweeps/matrix/text_synthetic.yaml (teacher: BERT 2 layers, hidden 64; student: 1 layer,
hidden 32, or text_cnn), on data=text_synthetic batches of 32 cut to their longest sequence; tokens = real tokens.
Interleaved repeats of whole epochs (benchmarks/common.py). Run: `python -m benchmarks.text_step [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json

import torch
from omegaconf import OmegaConf

from benchmarks.common import REPO, interleaved, loadavg, machine
from kdexp.caching.teacher_outputs import compute_outputs, wanted_outputs
from kdexp.data import create_datamodule
from kdexp.distill import create_method
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule
from kdexp.modules.optim import build_optimizer

KD = OmegaConf.to_container(OmegaConf.load(REPO / "conf/distill/kd.yaml"))
TINYBERT = OmegaConf.to_container(OmegaConf.load(REPO / "conf/distill/tinybert.yaml"))
STUDENTS = {"hf": {"hf_config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                 "intermediate_size": 64}}, "text_cnn": {}}


def epoch_fn(module: DistillModule, loader, optimizer):
    def run() -> int:
        tokens = 0
        module.train()
        for batch in loader:
            loss = module.training_step(batch, 0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokens += int(batch[0][:, 1].sum())
        return tokens
    return run


def tinybert_module(student, teacher, dm):
    """A TinyBERT DistillModule (conf/distill/tinybert.yaml) and its teacher's outputs for the cache: the hidden
    states and attention maps its layer map reads, per sample padded to max_length (kdexp.caching)."""
    # attention=probs: the cache keeps no query/key projections, so the paper's scores run the teacher online
    method = create_method("tinybert", layers=TINYBERT["layers"], attention="probs")
    probe = dm.split_tensors("train")[0][:2]
    with torch.no_grad():
        method.build(student.forward_intermediates(probe), teacher.forward_intermediates(probe), 3, dm.num_train)
    module = DistillModule(student, teacher=teacher, method=method, weights=TINYBERT["weights"],
                           temperature=TINYBERT["temperature"])
    levels = method.teacher_levels()
    outputs = wanted_outputs(method.needs, True, levels)
    return module, compute_outputs(teacher, dm.split_tensors("train")[0], outputs, dm.num_train, levels=levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dm = create_datamodule("text_synthetic", tokenizer="train", vocab_size=400, max_length=40, batch_size=32)
    dm.setup()
    kwargs = dm.model_kwargs()
    torch.manual_seed(0)
    teacher = create_model("hf", num_classes=3, **kwargs, hf_config={}).eval()
    cached_logits = compute_outputs(teacher, dm.split_tensors("train")[0], ("logits",), dm.num_train)
    tokens = sum(int(x[:, 1].sum()) for x, _, _ in dm.train_dataloader())
    results = {}
    for student_arch, extra in [*STUDENTS.items(), ("hf+tinybert", STUDENTS["hf"])]:
        cases = {}
        for mode in ("online", "cached"):
            torch.manual_seed(1)
            student = create_model(student_arch.partition("+")[0], num_classes=3, **kwargs, **extra)
            if student_arch.endswith("tinybert"):
                module, cached = tinybert_module(student, teacher, dm)
            else:
                module = DistillModule(student, teacher=teacher, weights=KD["weights"], temperature=KD["temperature"])
                cached = cached_logits
            if mode == "cached":
                module.use_teacher_outputs(cached)
            optimizer = build_optimizer(module.param_groups(), {"optimizer": "adam", "lr": 1e-3}, 1)
            cases[f"{student_arch}/{mode}"] = epoch_fn(module, dm.train_dataloader(), optimizer)
        timings = interleaved(cases, args.repeats, warmup=True)
        for name, t in timings.items():
            results[name] = {"tokens_per_s": tokens / t["wall_median_s"], "epoch_wall_s": t["wall_median_s"]}
    print(json.dumps({"machine": machine(), "load": loadavg(), "tokens_per_epoch": tokens, "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
