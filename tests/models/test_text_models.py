"""Text models: the hf wrapper (from scratch, from a saved folder) and text_cnn honour the FeatureOutput contract,
ignore padding, refuse what does not fit, initialise from teacher layers, and export to ONNX with parity."""

from __future__ import annotations

import pytest
import torch

from kdexp.config.errors import ConfigError
from kdexp.models import create_model, example_input
from kdexp.models.text import init_from_teacher
from tests.text_helpers import tiny_bert_folder

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")

VOCAB, LENGTH = 60, 16


def scratch(layers=2, hidden=32, heads=2, seed=0, num_classes=3):
    torch.manual_seed(seed)
    return create_model("hf", num_classes=num_classes, vocab_size=VOCAB, max_length=LENGTH,
                        hf_config={"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                                   "intermediate_size": 2 * hidden}).eval()


def padded_batch(n_real=(16, 9, 3), length=LENGTH):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(len(n_real), 3, length, dtype=torch.long)
    for i, n in enumerate(n_real):
        x[i, 0, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        x[i, 1, :n] = 1
    return x


@torch.no_grad()
def test_hf_feature_output_contract():
    model, x = scratch(), padded_batch()
    out = model.forward_intermediates(x)
    assert out.logits.shape == (3, 3) and torch.allclose(out.logits, model(x), atol=1e-6)
    assert len(out.stages) == 3 and all(h.shape == (3, LENGTH, 32) for h in out.stages)  # embeddings + 2 layers
    assert len(out.attentions) == 2 and all(a.shape == (3, 2, LENGTH, LENGTH) for a in out.attentions)
    assert len(out.values) == 2 and all(v.shape == (3, LENGTH, 32) for v in out.values)
    assert torch.equal(out.mask, x[:, 1]) and out.embedding.shape == (3, 32)
    assert model.feature_shapes((3, LENGTH)).logits.shape == (2, 3)  # int64 probe (example_input)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["hf", "text_cnn"])
def test_logits_do_not_depend_on_padding(arch):
    torch.manual_seed(0)
    model = scratch() if arch == "hf" else create_model("text_cnn", num_classes=3, vocab_size=VOCAB).eval()
    x = padded_batch((9, 4))  # padded to 16: 7 columns of padding only
    assert torch.allclose(model(x[..., :9]), model(x), atol=1e-5)


@torch.no_grad()
def test_a_saved_folder_loads_as_saved(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = tiny_bert_folder(tmp_path / "bert", num_labels=3)
    ours = create_model(f"hf:{folder}", num_classes=3, vocab_size=60, max_length=LENGTH).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    x = padded_batch()
    expected = theirs(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2]).logits
    assert torch.allclose(ours(x), expected, atol=1e-5)
    base = tiny_bert_folder(tmp_path / "base", with_head=False)  # a base model: a new head of the data's size
    assert create_model(f"hf:{base}", num_classes=5, vocab_size=60, max_length=LENGTH)(x).shape == (3, 5)


def test_what_does_not_fit_is_a_config_error(tmp_path):
    folder = tiny_bert_folder(tmp_path / "bert", num_labels=2, vocab_size=40)
    with pytest.raises(ConfigError, match="classification head has 2 classes, the data has 3"):
        create_model(f"hf:{folder}", num_classes=3, vocab_size=40, max_length=LENGTH)
    with pytest.raises(ConfigError, match="the tokenizer has 66 tokens but the model's embedding has 40"):
        create_model(f"hf:{folder}", num_classes=2, vocab_size=66, max_length=LENGTH)
    with pytest.raises(ConfigError, match="data.max_length=100 exceeds the model's 64 positions"):
        create_model(f"hf:{folder}", num_classes=2, vocab_size=40, max_length=100)
    with pytest.raises(ConfigError, match="offline, pass a folder saved with save_pretrained"):
        create_model("hf:no-such-org/no-such-model", num_classes=2, vocab_size=40, max_length=LENGTH)
    with pytest.raises(ConfigError, match="hf_config.num_layerz=2"):
        create_model("hf", num_classes=2, vocab_size=40, max_length=LENGTH, hf_config={"num_layerz": 2})


def test_every_kth_teacher_layer_initialises_the_student():
    teacher, student = scratch(layers=4, seed=0), scratch(layers=2, seed=1)
    assert init_from_teacher(student, teacher) == [(0, 0), (1, 2)]
    s, t = student.model.state_dict(), teacher.model.state_dict()
    for i, j in ((0, 0), (1, 2)):
        for key in [k for k in s if k.startswith(f"bert.encoder.layer.{i}.")]:
            assert torch.equal(s[key], t[key.replace(f"layer.{i}.", f"layer.{j}.")]), key
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    with pytest.raises(ConfigError, match="hidden sizes differ"):
        init_from_teacher(scratch(layers=1, hidden=16), teacher)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["hf", "text_cnn"])
def test_onnx_export_matches_torch(arch):
    from kdexp.shipping.export import onnx_metrics

    torch.manual_seed(0)
    model = scratch(layers=1) if arch == "hf" else create_model("text_cnn", num_classes=3, vocab_size=VOCAB).eval()
    out = onnx_metrics(model, padded_batch((16, 9, 3, 12)), batch=4, repeats=2)
    assert out["onnx_parity_ok"] == 1.0 and out["onnx_max_abs_diff"] < 1e-4
    assert out["onnx_latency_b1_ms"] > 0 and out["onnx_speedup_b4"] > 0
    assert example_input(model, (3, LENGTH), 2).dtype == torch.int64
