"""Text classifiers over (B, 3, L) int64 batches (token ids, attention mask, token type ids; kdexp.data.text).

  hf          a Hugging Face sequence classifier: `arch=hf:<hub id or folder>` loads a pretrained one (the
              label count from the data); `hf_config` overrides build one from scratch from that model's config
              (or, for plain `arch=hf`, from a BERT config): num_hidden_layers, hidden_size, num_attention_heads,
              intermediate_size, ...
  bert_l6, bert_l4   `hf` with 6 / 4 layers of kwargs.source's config (the GLUE matrices' students: a pair axis
              names architectures)
  text_cnn    a CNN over word embeddings (Kim 2014; the small non-transformer student of Tang et al. 2019),
              max-pooled over the real tokens only, so its output does not depend on the padding

transformers is imported only when an `hf` model is built.
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.config.errors import ConfigError
from kdexp.config.schema import HF_FAMILIES
from kdexp.models import register_model
from kdexp.models.base import FeatureOutput, ZooModel

TEXT_MODELS = (*HF_FAMILIES, "text_cnn")
TOKEN_ROWS = 3  # token ids, attention mask, token type ids (kdexp.data.text.ROWS)
BERT_DEFAULTS = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
# Each layer's self-attention projections, by module name (BERT, DistilBERT, others): MiniLM reads the values,
# TinyBERT the queries and keys (its pre-softmax scores)
PROJECTIONS = {"queries": (".self.query", ".q_lin", ".self_attn.q_proj", ".attention.q_proj"),
               "keys": (".self.key", ".k_lin", ".self_attn.k_proj", ".attention.k_proj"),
               "values": (".self.value", ".v_lin", ".self_attn.v_proj", ".attention.v_proj")}


class TextModel(ZooModel):
    """Base of text models: inputs are token ids, so probes and latency batches are int64 (see example_input).

    A batch of two tokenizations (B, 6, L; a student with its own tokenizer, kdexp.data.text) holds the teacher's
    3 rows, then the student's: a model reads those of its `tokenization` (0 the teacher's, 1 the student's own).
    Alone (exports, latency) a model takes its own (B, 3, L).
    """

    input_dtype = torch.long
    tokenization = 0

    def own_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """One sample's shape as this model takes it alone: (3, L)."""
        return (TOKEN_ROWS, input_shape[-1])

    def own_rows(self, x: Tensor) -> Tensor:
        """This model's (B, 3, L) rows of a batch (of one or two tokenizations)."""
        if x.shape[1] == TOKEN_ROWS:
            return x
        start = TOKEN_ROWS * self.tokenization
        return x[:, start : start + TOKEN_ROWS]

    def own_input(self, x: Tensor) -> Tensor:
        """own_rows cut to its own longest sequence (the batch was cut to the longest of both tokenizations)."""
        if x.shape[1] == TOKEN_ROWS:
            return x
        x = self.own_rows(x)
        return x[..., : max(int(x[:, 1].sum(1).max()), 1)]


class HFClassifier(TextModel):
    """An AutoModelForSequenceClassification behind kdexp's interface. forward_intermediates gives every hidden
    state (stages, embeddings output first), the attention maps, the query, key and value projections of each
    layer and the mask."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, *, source: str | None = None,
                 hf_config: dict | None = None, vocab_size: int | None = None, pad_token_id: int = 0,
                 max_length: int = 128, tokenization: int = 0):
        super().__init__()
        self.source, self.hf_config, self.tokenization = source, dict(hf_config or {}), tokenization
        self.model = build_hf_model(source, self.hf_config, num_classes, vocab_size, pad_token_id, max_length)
        self.model.config.output_hidden_states = False
        names = set(inspect.signature(self.model.forward).parameters)
        self.uses_token_types = "token_type_ids" in names and getattr(self.model.config, "type_vocab_size", 1) > 1

    @property
    def config(self):
        return self.model.config

    def inputs(self, x: Tensor) -> dict[str, Tensor]:
        ids, mask, types = self.own_input(x).unbind(1)
        return {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if self.uses_token_types
                                                              else {})}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(**self.inputs(x)).logits

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        caught: dict[str, list[Tensor]] = {kind: [] for kind in PROJECTIONS}  # per layer, for this call only
        hooks = [m.register_forward_hook(lambda _m, _i, out, got=caught[kind]: got.append(out))
                 for n, m in self.model.named_modules() for kind, suffixes in PROJECTIONS.items()
                 if n.endswith(suffixes)]
        try:
            out = self.model(**self.inputs(x), output_hidden_states=True, output_attentions=True)
        finally:
            for hook in hooks:
                hook.remove()
        hidden = list(out.hidden_states)
        return FeatureOutput(out.logits, hidden, hidden, hidden[-1][:, 0], attentions=list(out.attentions),
                             mask=self.own_input(x)[:, 1], **caught)


def build_hf_model(source: str | None, overrides: dict, num_classes: int, vocab_size: int | None, pad_token_id: int,
                   max_length: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    if source is None:
        config = BertConfig(**{**BERT_DEFAULTS, "vocab_size": vocab_size or 30522, "pad_token_id": pad_token_id,
                               "max_position_embeddings": max_length})
    else:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=hub_offline())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"arch=hf:{source}: not a reachable hub id or a local model folder "
                              f"({str(exc).splitlines()[0][:120]}); offline, pass a folder saved with "
                              "save_pretrained: teacher.arch=hf:/path/to/model") from None
        head = getattr(config, "num_labels", None)
        trained_head = any("ForSequenceClassification" in a for a in (config.architectures or []))
        if trained_head and head != num_classes and not overrides:
            raise ConfigError(f"arch=hf:{source}: its classification head has {head} classes, the data has "
                              f"{num_classes}; use a model with a head of {num_classes} or its base model")
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"hf_config.{key}={value!r}: {type(config).__name__} has no such setting")
        setattr(config, key, value)
    config.num_labels = num_classes
    config._attn_implementation = "eager"  # attention maps for TinyBERT/MiniLM; also what exports cleanly
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model's embedding has {config.vocab_size}:"
                          " this tokenizer does not fit the model (data.tokenizer or data.student_tokenizer="
                          "hf:<the model's folder>)")
    if max_length > getattr(config, "max_position_embeddings", max_length):
        raise ConfigError(f"data.max_length={max_length} exceeds the model's {config.max_position_embeddings} "
                          "positions; lower data.max_length")
    if source is None or overrides:
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(source, config=config, local_files_only=hub_offline())


def hub_offline() -> bool:
    """KDEXP_OFFLINE=1 (or HF_HUB_OFFLINE=1): look in local folders and the local cache only, no retries."""
    return os.environ.get("KDEXP_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


@register_model()
def hf(num_classes: int = 2, in_channels: int = 3, **kwargs) -> HFClassifier:
    return HFClassifier(num_classes, in_channels, **kwargs)


def with_layers(layers: int, kwargs: dict) -> dict:
    return {**kwargs, "hf_config": {"num_hidden_layers": layers, **(kwargs.get("hf_config") or {})}}


@register_model()
def bert_l6(num_classes: int = 2, in_channels: int = 3, **kwargs) -> HFClassifier:
    """`hf` with 6 layers (DistilBERT's depth): its `source`'s config (kwargs.source) with 6 layers, from scratch."""
    return HFClassifier(num_classes, in_channels, **with_layers(6, kwargs))


@register_model()
def bert_l4(num_classes: int = 2, in_channels: int = 3, **kwargs) -> HFClassifier:
    """`hf` with 4 layers (TinyBERT-4's depth; its width stays the source's)."""
    return HFClassifier(num_classes, in_channels, **with_layers(4, kwargs))


class TextCNN(TextModel):
    """Embedding -> parallel 1-D convolutions (widths `kernels`) -> ReLU -> max over real tokens -> linear."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, *, vocab_size: int = 1000, pad_token_id: int = 0,
                 max_length: int = 128, embed_dim: int = 64, channels: int = 64, kernels: tuple = (2, 3, 4),
                 dropout: float = 0.1, tokenization: int = 0):
        super().__init__()
        self.tokenization = tokenization
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_token_id)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in kernels)
        self.kernels = tuple(kernels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * len(kernels), num_classes)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        x = self.own_input(x)
        ids, mask = x[:, 0], x[:, 1]
        e = self.embed(ids).transpose(1, 2) * mask[:, None, :]  # (B, E, L); padding contributes zeros
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            h = F.relu(conv(F.pad(e, (0, k - 1))))  # window i covers tokens i..i+k-1 (zeros past the end)
            pooled.append(h.masked_fill(mask[:, None, :] == 0, 0.0).amax(2))  # ReLU >= 0: masked 0 never wins
        embedding = torch.cat(pooled, 1)
        return FeatureOutput(self.classifier(self.dropout(embedding)), [], [], embedding)


@register_model()
def text_cnn(num_classes: int = 2, in_channels: int = 3, **kwargs) -> TextCNN:
    return TextCNN(num_classes, in_channels, **kwargs)


def init_from_teacher(student: HFClassifier, teacher: HFClassifier) -> list[tuple[int, int]]:
    """DistilBERT's initialisation: the student's embeddings, and its layer i from teacher layer i*k, k = the
    layer ratio (every k-th layer: 0, 2, 4, ... for half the depth). Returns the (student, teacher) pairs copied."""
    s_layers, t_layers = encoder_layers(student.model), encoder_layers(teacher.model)
    if not s_layers or len(t_layers) < len(s_layers):
        raise ConfigError(f"student.init_from_teacher: the student has {len(s_layers)} layers, the teacher "
                          f"{len(t_layers)}; it needs a teacher at least as deep")
    if student.config.hidden_size != teacher.config.hidden_size:
        raise ConfigError(f"student.init_from_teacher: hidden sizes differ (student {student.config.hidden_size}, "
                          f"teacher {teacher.config.hidden_size}); it copies weights, so they must agree")
    k = len(t_layers) // len(s_layers)
    pairs = [(i, i * k) for i in range(len(s_layers))]
    with torch.no_grad():
        student.model.base_model.embeddings.load_state_dict(teacher.model.base_model.embeddings.state_dict())
        for i, j in pairs:
            s_layers[i].load_state_dict(t_layers[j].state_dict())
    return pairs


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList):
            return node
    return nn.ModuleList()
