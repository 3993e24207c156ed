"""Transformer-pair methods against the papers' formulas, written here independently with loops over samples,
heads and real tokens (as test_distill_features.py does for the vision methods); layer maps; refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdexp.distill import IncompatiblePairError, create_method
from kdexp.distill.transformer import layer_map
from kdexp.models import create_model
from tests.text_helpers import tiny_bert_folder

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")

VOCAB, LENGTH = 50, 12


def bert(layers: int, hidden: int, heads: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
           "intermediate_size": 2 * hidden}
    return create_model("hf", num_classes=3, vocab_size=VOCAB, max_length=LENGTH, hf_config=cfg).eval()


def batch(seed: int = 1):
    """3 sequences of 12, 7 and 4 real tokens, padded to 12."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(3, 3, LENGTH, dtype=torch.long)
    for i, n in enumerate((12, 7, 4)):
        x[i, 0, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        x[i, 1, :n] = 1
    return x


def outputs(teacher, student, x):
    with torch.no_grad():
        return student.forward_intermediates(x), teacher.forward_intermediates(x)


def lengths(x):
    return x[:, 1].sum(1).tolist()


def test_layer_maps():
    assert layer_map(2, 4, "uniform") == [(1, 2), (2, 4)]  # TinyBERT: m <- m N / M
    assert layer_map(3, 12, "uniform") == [(1, 4), (2, 8), (3, 12)]
    assert layer_map(2, 4, "last") == [(1, 3), (2, 4)]
    assert layer_map(4, 4, "last") == layer_map(4, 4, "uniform") == [(i, i) for i in range(1, 5)]
    with pytest.raises(IncompatiblePairError):
        layer_map(5, 4, "uniform")
    with pytest.raises(ValueError, match="distill.layers='first'"):
        create_method("tinybert", layers="first")


def test_hidden_cosine_is_distilberts_loss_on_the_last_layer():
    teacher, student, x = bert(4, 32), bert(2, 32, seed=1), batch()
    s, t = outputs(teacher, student, x)
    method = create_method("hidden", loss="cosine", layers="last")
    method.build(s, t, 3, 10)
    got = method(s, t, None, None, 0)["hidden"]
    # 1 - cos over every real token of the last hidden states, averaged over real tokens
    terms = [1 - F.cosine_similarity(s.stages[-1][b, i], t.stages[-1][b, i], dim=0)
             for b, n in enumerate(lengths(x)) for i in range(n)]
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert not list(method.parameters())  # equal widths: no projection


def loop_scores(model, states, layer, b, n):
    """TinyBERT's A = Q K^T / sqrt(d_k) of one sample's n real tokens, per head, by loops: the layer's own query and
    key weights applied to its input hidden states (eval mode: no dropout between them)."""
    attn = model.model.bert.encoder.layer[layer - 1].attention.self
    heads, h = attn.num_attention_heads, states.shape[-1]
    d = h // heads
    x = states[b]
    out = torch.zeros(heads, n, n)
    for a in range(heads):
        rows = slice(a * d, (a + 1) * d)
        q = [attn.query.weight[rows] @ x[i] + attn.query.bias[rows] for i in range(n)]
        k = [attn.key.weight[rows] @ x[j] + attn.key.bias[rows] for j in range(n)]
        for i in range(n):
            for j in range(n):
                out[a, i, j] = q[i] @ k[j] / math.sqrt(d)
    return out


def loop_tinybert(s, t, x, method, student, teacher, pairs, form="scores"):
    """The paper's L_hidn = MSE(H_S W_h, H_T) and L_attn = 1/h sum_heads MSE(A_S, A_T) over real tokens, summed over
    the mapped layers (L_model = sum_m L_layer): {term: value}."""
    w, bias = method.proj.weight.detach(), method.proj.bias.detach()
    hidden = []
    for i, j in pairs:  # MSE(H_S W_h, H_T) over real tokens and features
        sq = [((s.stages[i][b, k] @ w.T + bias - t.stages[j][b, k]) ** 2).mean()
              for b, n in enumerate(lengths(x)) for k in range(n)]
        hidden.append(torch.stack(sq).mean())
    attention = []
    for i, j in pairs[1:]:  # 1/h sum_heads MSE(A_S, A_T) over real (query, key) pairs
        per_sample = []
        for b, n in enumerate(lengths(x)):
            if form == "scores":
                a_s = loop_scores(student, s.stages[i - 1], i, b, n)
                a_t = loop_scores(teacher, t.stages[j - 1], j, b, n)
            else:
                a_s, a_t = s.attentions[i - 1][b, :, :n, :n], t.attentions[j - 1][b, :, :n, :n]
            diff = (a_s - a_t) ** 2
            per_sample.append((diff.sum(), diff.numel()))
        attention.append(sum(v for v, _ in per_sample) / sum(c for _, c in per_sample))
    return {"hidden": torch.stack(hidden).sum(), "attention": torch.stack(attention).sum()}


@pytest.mark.parametrize("attention", ["scores", "probs"])
def test_tinybert_hidden_and_attention_losses(attention):
    teacher, student, x = bert(4, 48), bert(2, 32, seed=1), batch()
    for layer in teacher.model.bert.encoder.layer:  # scores far from 0 (BERT's init gives |scores| << 1)
        layer.attention.self.query.weight.data *= 10
        layer.attention.self.key.weight.data *= 10
    s, t = outputs(teacher, student, x)
    method = create_method("tinybert", layers="uniform", attention=attention)
    method.build(s, t, 3, 10)
    with torch.no_grad():
        got = method(s, t, None, None, 0)
        want = loop_tinybert(s, t, x, method, student, teacher, [(0, 0), (1, 2), (2, 4)], attention)  # m <- 2m
    assert got["hidden"].item() == pytest.approx(want["hidden"].item(), rel=1e-5)
    assert got["attention"].item() == pytest.approx(want["attention"].item(), rel=1e-5)
    assert want["attention"] > (1.0 if attention == "scores" else 1e-4)
    with torch.no_grad():  # the first stage trains these two terms
        assert {k: v.item() for k, v in method.init_terms(s, t, None, None).items()} == \
            pytest.approx({k: v.item() for k, v in got.items()})


def test_tinybert_scores_of_a_model_from_a_folder(tmp_path):
    """A teacher loaded from a saved folder (as hf:<folder>): the scores are its own projections' too."""
    folder = tiny_bert_folder(tmp_path / "bert", num_labels=3, vocab_size=VOCAB)
    teacher = create_model("hf", num_classes=3, source=str(folder), vocab_size=VOCAB, max_length=LENGTH).eval()
    student, x = bert(1, 32, seed=1), batch()
    s, t = outputs(teacher, student, x)
    method = create_method("tinybert")
    method.build(s, t, 3, 10)
    with torch.no_grad():
        got = method(s, t, None, None, 0)
        want = loop_tinybert(s, t, x, method, student, teacher, [(0, 0), (1, 2)])
    assert got["attention"].item() == pytest.approx(want["attention"].item(), rel=1e-5)


def test_tinybert_refuses_attention_that_is_not_softmax_of_the_scores():
    """A model that attends with other scores than Q K^T / sqrt(d_k) (here: another scaling) is refused by name."""
    teacher, student = bert(2, 32), bert(1, 32, seed=1)
    teacher.model.bert.encoder.layer[1].attention.self.scaling = 1.0
    shapes = student.feature_shapes((3, LENGTH)), teacher.feature_shapes((3, LENGTH))
    with pytest.raises(IncompatiblePairError, match=r"^tinybert: the teacher's attention in layer 2 is not softmax"):
        create_method("tinybert").build(*shapes, 3, 10)
    create_method("tinybert", attention="probs").build(*shapes, 3, 10)  # the probability form needs no scores
    with pytest.raises(ValueError, match=r"distill.attention='logits' is invalid: choose one of scores, probs"):
        create_method("tinybert", attention="logits")


def test_minilm_attention_and_value_relation_kl():
    teacher, student, x = bert(3, 48), bert(2, 32, seed=1), batch()
    s, t = outputs(teacher, student, x)
    method = create_method("minilm")
    method.build(s, t, 3, 10)
    got = method(s, t, None, None, 0)["minilm"]

    def kl(p, q):
        return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum()

    def relation(v, n, heads):  # softmax(V_a V_a^T / sqrt(d_k)) over the n real tokens
        d = v.shape[-1] // heads
        return [torch.softmax(v[:n, a * d:(a + 1) * d] @ v[:n, a * d:(a + 1) * d].T / math.sqrt(d), -1)
                for a in range(heads)]

    at, vr, count = 0.0, 0.0, 0
    for b, n in enumerate(lengths(x)):
        for a in range(2):
            for q in range(n):  # KL(teacher || student) per real query row, last layers
                at += kl(t.attentions[-1][b, a, q, :n], s.attentions[-1][b, a, q, :n])
        rs, rt = relation(s.values[-1][b], n, 2), relation(t.values[-1][b], n, 2)
        vr += sum(kl(rt[a][q], rs[a][q]) for a in range(2) for q in range(n))
        count += 2 * n
    assert got.item() == pytest.approx((at / count + vr / count).item(), rel=1e-4)


def test_padding_does_not_change_any_loss():
    """Losses count real tokens only: a batch cut to its longest sequence gives the same values."""
    teacher, student = bert(4, 48), bert(2, 32, seed=1)
    x = batch()
    x[0, 1, 9:] = 0  # the longest real sequence is now 9 of 12
    x[0, 0, 9:] = 0
    for name in ("hidden", "tinybert", "minilm"):
        method = create_method(name)
        s, t = outputs(teacher, student, x)
        method.build(s, t, 3, 10)
        full = method(s, t, None, None, 0)
        s_cut, _ = outputs(teacher, student, x[..., :9])
        cut = method(s_cut, t, None, None, 0)  # the teacher's features stay padded to 12 (as in a step)
        for term in full:
            assert cut[term].item() == pytest.approx(full[term].item(), rel=1e-4, abs=1e-6), (name, term)


def test_transformer_methods_refuse_other_pairs():
    cnn = create_model("text_cnn", num_classes=3, vocab_size=VOCAB, max_length=LENGTH)
    teacher = bert(2, 32)
    for name in ("hidden", "tinybert", "minilm"):
        with pytest.raises(IncompatiblePairError, match="transformer"):
            create_method(name).build(cnn.feature_shapes((3, LENGTH)), teacher.feature_shapes((3, LENGTH)), 3, 10)
    with pytest.raises(IncompatiblePairError, match="equal head counts"):
        create_method("tinybert").build(bert(1, 32, heads=4).feature_shapes((3, LENGTH)),
                                        teacher.feature_shapes((3, LENGTH)), 3, 10)


def test_gradients_reach_the_student_and_the_projection_never_the_teacher():
    teacher, student, x = bert(2, 48), bert(1, 32, seed=1), batch()
    student.train()
    with torch.no_grad():
        t = teacher.forward_intermediates(x)
    for name in ("hidden", "tinybert", "minilm"):
        method = create_method(name, **({"loss": "mse"} if name == "hidden" else {}))
        student.zero_grad(set_to_none=True)
        s = student.forward_intermediates(x)
        method.build(student.feature_shapes((3, LENGTH)), t, 3, 10)  # as the pipeline: eval-mode examples
        sum(method(s, t, None, None, 0).values()).backward()
        grads = [p.grad for n, p in student.named_parameters() if "encoder" in n and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
        assert all(p.grad is None for p in teacher.parameters())
        assert all(p.grad is not None for p in method.parameters()), name
