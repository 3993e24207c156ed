"""Per-token teacher features of text transformers in the teacher-output cache: stored per sample padded to
data.max_length, they give the losses the online teacher gives on batches cut to their longest sequence."""

from __future__ import annotations

import logging

import pytest
import torch

from kdexp.caching.teacher_outputs import prepare_cached_teacher
from kdexp.data import create_datamodule
from kdexp.distill import create_method
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")

pytestmark = pytest.mark.slow

LENGTH = 64
TEACHER = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
STUDENT = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}


@pytest.fixture(scope="module")
def text_dm():
    dm = create_datamodule("text_synthetic", num_samples=60, num_test=10, tokenizer="train", vocab_size=400,
                           max_length=LENGTH, batch_size=16)
    dm.setup()
    dm.batches = list(dm.train_dataloader())
    return dm


def module_for(dm, name: str, **kwargs) -> DistillModule:
    torch.manual_seed(0)
    teacher = create_model("hf", num_classes=3, **dm.model_kwargs(), hf_config=TEACHER)
    student = create_model("hf", num_classes=3, **dm.model_kwargs(), hf_config=STUDENT)
    method = create_method(name, **kwargs)
    probe = torch.zeros(2, 3, LENGTH, dtype=torch.long)
    probe[:, 1] = 1
    with torch.no_grad():
        method.build(student.forward_intermediates(probe), teacher.forward_intermediates(probe), 3, dm.num_train)
    return DistillModule(student, teacher=teacher, method=method, weights={"ce": 1, "kd": 1, **{
        t: 1 for t in method.terms}}, temperature=2.0).eval()


def epoch_terms(module: DistillModule, dm) -> dict[str, list[float]]:
    """Each loss term of every batch of one (fixed-order) train epoch."""
    terms: dict[str, list[float]] = {}
    with torch.no_grad():
        for x, y, i in dm.batches:
            for k, v in module.loss_terms(x, y, i)[0].items():
                terms.setdefault(k, []).append(float(v))
    return terms


def assert_equal_terms(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize(("name", "kwargs", "kept"), [
    ("hidden", {}, {"stages": [2], "attentions": [], "values": []}),
    ("hidden", {"loss": "mse", "project": True, "layers": "uniform"}, {"stages": [2], "attentions": [], "values": []}),
    ("tinybert", {"attention": "probs"}, {"stages": [0, 2], "attentions": [1], "values": []}),
    ("minilm", {}, {"stages": [], "attentions": [1], "values": [1]}),
])
def test_cached_per_token_features_give_the_online_losses(text_dm, tmp_path, caplog, name, kwargs, kept):
    module = module_for(text_dm, name, **kwargs)
    lengths = [int(x.shape[-1]) for x, _, _ in text_dm.batches]
    assert min(lengths) < LENGTH and len(set(lengths)) > 1  # dynamic padding: batches shorter than max_length
    online = epoch_terms(module, text_dm)
    cached = prepare_cached_teacher({"mode": "auto"}, text_dm, module.teacher, module.method.needs, True, tmp_path,
                                    levels=module.method.teacher_levels())
    assert cached is not None and (tmp_path / f"{cached.key}.pt").is_file()
    store = cached.outputs
    for listed, levels in kept.items():  # only the levels the method reads are kept, padded to max_length
        assert [i for i, t in enumerate(getattr(store, listed)) if t is not None] == levels
        for i in levels:
            assert getattr(store, listed)[i].shape[:2] == ((text_dm.num_train, 2) if listed == "attentions" else
                                                           (text_dm.num_train, LENGTH))
    module.use_teacher_outputs(store)
    assert_equal_terms(epoch_terms(module, text_dm), online)
    with caplog.at_level(logging.INFO, logger="kdexp"):  # a second run reads the file: the same losses again
        again = prepare_cached_teacher({"mode": "auto"}, text_dm, module.teacher, module.method.needs, True,
                                       tmp_path, levels=module.method.teacher_levels())
    assert "reusing cached teacher outputs" in caplog.text
    module.use_teacher_outputs(again.outputs)
    assert_equal_terms(epoch_terms(module, text_dm), online)


def test_tinyberts_attention_scores_run_the_teacher_online_the_cache_keeps_no_queries_or_keys(text_dm, tmp_path,
                                                                                                caplog):
    teacher = module_for(text_dm, "tinybert", attention="probs").teacher
    scores = create_method("tinybert")  # attention=scores, the paper's form
    assert {"queries", "keys"} <= scores.needs and not {"queries", "keys"} & create_method(
        "tinybert", attention="probs").needs
    with caplog.at_level(logging.INFO, logger="kdexp"):
        assert prepare_cached_teacher({"mode": "auto"}, text_dm, teacher, scores.needs, True, tmp_path,
                                      levels=scores.teacher_levels()) is None
    assert "teacher runs online: the cache keeps no keys, queries" in caplog.text
    assert not list(tmp_path.iterdir())


def test_per_token_features_above_max_gb_run_online(text_dm, tmp_path, caplog):
    module = module_for(text_dm, "tinybert", attention="probs")
    with caplog.at_level(logging.INFO, logger="kdexp"):
        assert prepare_cached_teacher({"mode": "auto", "max_gb": 1e-6}, text_dm, module.teacher, module.method.needs,
                                      True, tmp_path, levels=module.method.teacher_levels()) is None
    assert "teacher runs online: its outputs ('logits', 'stages', 'attentions')" in caplog.text
    assert not list(tmp_path.iterdir())
