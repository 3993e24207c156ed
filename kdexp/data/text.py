"""Text classification: rows of (text[, text pair], label) from CSV / JSONL / Parquet files, a folder saved with
`datasets.save_to_disk`, or a hub data set, tokenized once and kept as whole-split tensors like the images.

A sample is an int64 tensor of shape (3, max_length): token ids, attention mask and token type ids, padded to
`max_length`; every batch is cut to its longest sequence (dynamic padding), so a batch of short sentences costs
what they cost. A student with a tokenizer of its own (`student_tokenizer`) gets a second tokenization: a sample
is then (6, max_length), the teacher's 3 rows then the student's, and each model reads its own
(kdexp.models.text.TextModel.own_rows). transformers/datasets/tokenizers are imported only here, when a text data
set is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdexp.caching.fingerprint import fingerprint
from kdexp.config.errors import ConfigError

from .base import DATASETS, DataFormatError, TensorDataModule, check_int, raw_digest

log = logging.getLogger("kdexp")
ROWS = ("input_ids", "attention_mask", "token_type_ids")  # the 3 rows of a sample
READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZED_FORMAT = 1  # bump when tokenization changes what a model sees


def trim_padding(x: Tensor) -> Tensor:
    """Cut a (B, 3, L) batch (or (B, 6, L): two tokenizations) to its longest sequence of any tokenization: the
    padding columns every sample has are dropped."""
    length = int(x[:, 1 :: len(ROWS)].sum(-1).max()) if len(x) else 0
    return x[..., : max(length, 1)]


def tokenizer_source(value: str | None) -> str | None:
    """The folder or hub id of `data.tokenizer` ('hf:<id or folder>' or a folder); None: train one on the data."""
    if value is None or value in ("", "train"):
        return None
    if value.startswith("hf:"):
        return value[3:] or None
    return value if Path(value).is_dir() else None  # a zoo model name (e.g. text_cnn): a trained tokenizer


def load_tokenizer(source: str, key: str = "data.tokenizer"):
    """AutoTokenizer from a local folder, or a hub id when the hub is reachable; ConfigError (naming `key`)
    otherwise."""
    from transformers import AutoTokenizer

    offline = os.environ.get("KDEXP_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{key}={source!r}: no tokenizer could be loaded ({str(exc).splitlines()[0][:160]}); without "
            "the hub, pass a local folder saved with save_pretrained: teacher.arch=hf:/path/to/model") from None


def train_tokenizer(texts: list[str], vocab_size: int):
    """A lower-cased WordPiece tokenizer for `texts`, as a transformers fast tokenizer. Deterministic (tokenizers'
    own WordPiece trainer is not: equal texts gave other vocabularies): the special tokens, every character seen
    (alone and as a ##continuation, so no word is unknown), then the most frequent words, ties by spelling."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += ranked[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def read_table(path: str) -> dict[str, list]:
    """Columns of a CSV/TSV, JSON lines or Parquet file, by its suffix."""
    import pandas as pd

    p = Path(path).expanduser()
    kind = READERS.get(p.suffix.lower())
    if kind is None:
        raise ConfigError(f"data.files: {path!r} has an unknown suffix; use one of: {', '.join(READERS)}")
    if not p.is_file():
        raise ConfigError(f"data.files: no such file {str(p)!r}")
    if kind == "csv":
        frame = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", keep_default_na=False)
    elif kind == "json":
        frame = pd.read_json(p, lines=p.suffix.lower() == ".jsonl")
    else:
        frame = pd.read_parquet(p)
    return {str(c): frame[c].tolist() for c in frame.columns}


def read_datasets_split(dataset: Any) -> dict[str, list]:
    return {c: list(dataset[c]) for c in dataset.column_names}


@DATASETS.register("text")
class TextDataModule(TensorDataModule):
    """Text classification from files, a `save_to_disk` folder (`root`) or the hub (`hf_name`, `hf_config`).

    Kwargs beyond the shared ones (TensorDataModule):
      files          {train, test[, validation]}: CSV/TSV, JSONL/JSON or Parquet paths
      hf_name, hf_config   a hub data set (needs the network), e.g. glue / sst2
      test_split     the split used as test for a `root` folder or a hub set (GLUE hides test labels: validation)
      text_field, text_pair_field, label_field   column names (text_pair_field: sentence pairs)
      max_length     tokens per sequence; longer ones are truncated (the count is logged)
      tokenizer      'hf:<id or folder>' or a folder: that tokenizer; anything else (a zoo model name): a
                     WordPiece tokenizer of `vocab_size` trained on the train texts
      student_tokenizer   None: the student reads the teacher's tokens; 'hf:<id or folder>' or a folder: the
                     student's own (kdexp.config.parse resolves `student` to the student's hf:<id or folder>).
                     When it differs from `tokenizer` (tokenizer_digest), each sample carries both tokenizations
      cache_dir      where tokenized splits are kept under their fingerprint (None: not kept)
    """

    name = "text"
    in_channels = len(ROWS)
    image_size = 0
    mean, std = (0.0,), (1.0,)
    flip = False
    input_dtype = torch.long

    def __init__(self, *, files: dict | None = None, hf_name: str | None = None, hf_config: str | None = None,
                 test_split: str = "test", text_field: str = "text", text_pair_field: str | None = None,
                 label_field: str = "label", max_length: int = 128, tokenizer: str | None = None,
                 student_tokenizer: str | None = None, vocab_size: int = 1000, cache_dir: str | None = None,
                 **common):
        super().__init__(**common)
        check_int("max_length", max_length, 4)
        check_int("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
        if common.get("augment"):
            raise ConfigError("data.augment=true is not defined for text (no augmentation of token ids)")
        self.files = dict(files or {})
        unknown = sorted(set(self.files) - {"train", "test", "validation"})
        if unknown:
            raise ConfigError(f"data.files.{unknown[0]} is not a split; use train, test and optionally validation")
        self.hf_name, self.hf_config, self.test_split = hf_name, hf_config, test_split
        self.text_field, self.text_pair_field, self.label_field = text_field, text_pair_field, label_field
        self.max_length, self.tokenizer_name, self.vocab_size = max_length, tokenizer, vocab_size
        self.cache_dir = cache_dir
        self.num_classes = 0  # known once the labels are read
        self.class_names: tuple[str, ...] | None = None
        self.student_tokenizer_name = student_tokenizer
        self.tokenizer = None
        self.student_tokenizer = None  # set only where it differs from the teacher's: a second tokenization
        self.truncated = 0
        self.student_truncated = 0
        self._teacher_hash: str | None = None

    # --- identity of what is read --------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:
        return (len(ROWS) * len(self.tokenizers()), self.max_length)

    def tokenizers(self) -> list:
        """The tokenizations a sample carries: the teacher's, then the student's own where it differs."""
        return [self.tokenizer, *([self.student_tokenizer] if self.student_tokenizer is not None else [])]

    def source_description(self) -> dict:
        """What rows are read (files with size and mtime, or the hub / disk set's name)."""
        if self.files:
            return {k: [str(Path(v).expanduser().resolve()), *file_stamp(v)] for k, v in sorted(self.files.items())}
        if self.root:
            return {"disk": str(Path(self.root).expanduser().resolve()), "test_split": self.test_split}
        return {"hub": [self.hf_name, self.hf_config], "test_split": self.test_split}

    # --- reading rows --------------------------------------------------------------------------
    def read_splits(self) -> dict[str, dict[str, list]]:
        """Columns of each split: train, test and, if given, validation."""
        if self.files:
            missing = [s for s in ("train", "test") if s not in self.files]
            if missing:
                raise ConfigError(f"data.files.{missing[0]} is required (data.files takes train, test, validation)")
            return {split: read_table(path) for split, path in self.files.items()}
        if self.root:
            from datasets import load_from_disk

            folder = Path(self.root).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"data.root={self.root!r}: no such folder (a data set saved with save_to_disk)")
            return self.datasets_splits(load_from_disk(str(folder)))
        if self.hf_name:
            return self.datasets_splits(load_hub_dataset(self.hf_name, self.hf_config))
        raise ConfigError("data=text needs data.files.train and data.files.test (CSV, JSONL or Parquet), "
                          "data.root (a save_to_disk folder) or data.hf_name (a hub data set)")

    def datasets_splits(self, ddict) -> dict[str, dict[str, list]]:
        names = list(ddict.keys()) if hasattr(ddict, "keys") else []
        if "train" not in names or self.test_split not in names:
            raise ConfigError(f"data.test_split={self.test_split!r}: the data set has splits {names}; "
                              "it needs train and the test split")
        splits = {"train": read_datasets_split(ddict["train"]), "test": read_datasets_split(ddict[self.test_split])}
        if "validation" in names and self.test_split != "validation":
            splits["validation"] = read_datasets_split(ddict["validation"])
        return splits

    def check_columns(self, splits: dict[str, dict[str, list]]) -> None:
        for split, columns in splits.items():
            for key in ("text_field", "text_pair_field", "label_field"):
                field = getattr(self, key)
                if field is not None and field not in columns:
                    raise ConfigError(f"data.{key}={field!r} is not a column of the {split} split; "
                                      f"its columns: {', '.join(columns)}")

    def label_ids(self, splits: dict[str, dict[str, list]]) -> dict[str, Tensor]:
        """Integer labels 0..K-1 (kept as they are) or names (numbered in sorted order of the train split's)."""
        labels = {s: c[self.label_field] for s, c in splits.items()}
        if all(isinstance(v, int) or (hasattr(v, "is_integer") and float(v).is_integer())
               for vs in labels.values() for v in vs):
            ids = {s: torch.tensor([int(v) for v in vs], dtype=torch.long) for s, vs in labels.items()}
            bad = [(s, int(t.min())) for s, t in ids.items() if len(t) and int(t.min()) < 0]
            if bad:
                raise ConfigError(f"data.label_field={self.label_field!r}: the {bad[0][0]} split has label "
                                  f"{bad[0][1]}; labels must be 0..K-1 (hidden test labels? set data.test_split)")
            self.num_classes = max(int(t.max()) for t in ids.values() if len(t)) + 1
            return ids
        names = sorted({str(v) for v in labels["train"]})
        index = {n: i for i, n in enumerate(names)}
        unseen = sorted({str(v) for vs in labels.values() for v in vs} - set(names))
        if unseen:
            raise ConfigError(f"data.label_field={self.label_field!r}: label {unseen[0]!r} is not in the train split")
        self.num_classes, self.class_names = len(names), tuple(names)
        return {s: torch.tensor([index[str(v)] for v in vs], dtype=torch.long) for s, vs in labels.items()}

    # --- tokenizing ----------------------------------------------------------------------------
    def get_tokenizer(self, train_texts: list[str]):
        source = tokenizer_source(self.tokenizer_name)
        return load_tokenizer(source) if source else train_tokenizer(train_texts, self.vocab_size)

    def get_student_tokenizer(self):
        """The student's own tokenizer, or None where it reads the teacher's (not set, or the same digest)."""
        if self.student_tokenizer_name is None:
            return None
        source = tokenizer_source(self.student_tokenizer_name)
        if source is None:  # kdexp.config.parse checks the value first; this is for direct use
            raise ConfigError(f"data.student_tokenizer={self.student_tokenizer_name!r} is invalid: choose null (the "
                              "teacher's), student (the student's own hf model), hf:<hub id or folder> or a folder")
        tokenizer = load_tokenizer(source, "data.student_tokenizer")
        if tokenizer.pad_token is None:  # e.g. GPT-2's: batches are padded to max_length with it
            raise ConfigError(f"data.student_tokenizer={self.student_tokenizer_name!r}: the tokenizer has no padding "
                              "token; save it with one (tokenizer.pad_token = ...; save_pretrained)")
        return None if tokenizer_digest(tokenizer) == tokenizer_digest(self.tokenizer) else tokenizer

    def encode(self, columns: dict[str, list], tokenizer) -> tuple[Tensor, int]:
        """(N, 3, max_length) int64 and how many sequences were truncated to max_length."""
        texts = [str(t) for t in columns[self.text_field]]
        pairs = [str(t) for t in columns[self.text_pair_field]] if self.text_pair_field else None
        full = tokenizer(texts, pairs, truncation=False)["input_ids"]
        enc = tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding="max_length",
                        return_token_type_ids=True, return_attention_mask=True)
        x = torch.stack([torch.tensor(enc[k], dtype=torch.long) for k in ROWS], dim=1)
        return x, sum(len(ids) > self.max_length for ids in full)

    def load_raw(self) -> tuple[Tensor, ...]:
        splits = self.read_splits()
        self.check_columns(splits)
        labels = self.label_ids(splits)
        self.tokenizer = self.get_tokenizer([str(t) for t in splits["train"][self.text_field]])
        self.student_tokenizer = self.get_student_tokenizer()
        order = ["train", "test", *(["validation"] if "validation" in splits else [])]
        spec = {"what": "tokenized-text", "format": TOKENIZED_FORMAT, "source": self.source_description(),
                "content": content_digest(splits, order), "tokenizer": tokenizer_digest(self.tokenizer),
                "fields": [self.text_field, self.text_pair_field, self.label_field], "max_length": self.max_length,
                **self.student_digest()}
        path = Path(self.cache_dir).expanduser() / f"{fingerprint(spec)}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            stored = torch.load(path, weights_only=True)
            xs, self.truncated = stored["x"], int(stored["truncated"])
            self.student_truncated = int(stored.get("student_truncated", 0))
        else:
            counts = [0] * len(self.tokenizers())
            xs = []
            for split in order:  # per tokenization its 3 rows, the teacher's first
                parts = [self.encode(splits[split], tokenizer) for tokenizer in self.tokenizers()]
                xs.append(torch.cat([x for x, _ in parts], dim=1))
                counts = [c + n for c, (_, n) in zip(counts, parts)]
            self.truncated, self.student_truncated = counts[0], sum(counts[1:])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{id(self)}")
                torch.save({"x": xs, "truncated": self.truncated, "student_truncated": self.student_truncated}, tmp)
                tmp.replace(path)
        rows = sum(len(x) for x in xs)
        if self.student_tokenizer is not None:  # both counts, also when 0: the student's vocabulary may be coarser
            log.info("data: %d of %d sequences truncated to data.max_length=%d with the teacher's tokenizer, %d with "
                     "the student's", self.truncated, rows, self.max_length, self.student_truncated)
        elif self.truncated:
            log.info("data: %d of %d sequences truncated to data.max_length=%d", self.truncated, rows, self.max_length)
        raw: list[Tensor] = []
        for split, x in zip(order, xs):
            raw += [x, labels[split]]
        return tuple(raw)

    def raw_source(self) -> tuple | None:
        return ("text", json.dumps(self.source_description(), sort_keys=True), self.tokenizer_name, self.vocab_size,
                self.max_length, self.text_field, self.text_pair_field, self.label_field, self.cache_dir,
                self.student_tokenizer_name)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            raw, self._content_hash = self._raw_and_hash()
            if self.tokenizer is None:  # memoized raw tensors: the tokenizers and labels of that read
                (self.tokenizer, self.student_tokenizer, self.num_classes, self.class_names, self.truncated,
                 self.student_truncated) = _TOKENIZERS[self.raw_source()]
            else:
                _TOKENIZERS[self.raw_source()] = (self.tokenizer, self.student_tokenizer, self.num_classes,
                                                  self.class_names, self.truncated, self.student_truncated)
            self._splits = self._build_splits(*raw)
            if self.student_tokenizer is not None:  # the teacher's view alone hashes as if the tokenizer were shared
                self._teacher_hash = raw_digest([t[:, : len(ROWS)] if t.dim() == 3 else t for t in raw])

    def _build_splits(self, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor,
                      x_va: Tensor | None = None, y_va: Tensor | None = None) -> dict:
        if self.num_classes < 2:
            raise DataFormatError(f"text: the labels hold {self.num_classes} class; classification needs 2 or more")
        if x_va is None:  # carved from train with split_seed, as every data set does
            return super()._build_splits(x_tr, y_tr, x_te, y_te)
        gen = torch.Generator().manual_seed(self.split_seed)
        splits = {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te)}
        if self.limit is not None:
            splits = {k: (x[i], y[i]) for k, (x, y) in splits.items()
                      for i in [torch.randperm(len(y), generator=gen)[: self.limit].sort().values]}
        return splits

    def normalize(self, x: Tensor) -> Tensor:
        return x  # token ids stay integers

    def finish_batch(self, x: Tensor) -> Tensor:
        return trim_padding(x)

    # --- what models need ----------------------------------------------------------------------
    def model_kwargs(self, role: str = "teacher") -> dict:
        """Constructor arguments every text model takes from the data: vocabulary and sequence length; a student
        with a tokenizer of its own gets its vocabulary and reads the second tokenization (`tokenization=1`).

        Args:
            role: "teacher" or "student".

        Returns:
            vocab_size, pad_token_id, max_length (and tokenization for such a student).
        """
        self.setup()
        own = role == "student" and self.student_tokenizer is not None
        tokenizer = self.student_tokenizer if own else self.tokenizer
        return {"vocab_size": len(tokenizer), "pad_token_id": int(tokenizer.pad_token_id or 0),
                "max_length": self.max_length, **({"tokenization": 1} if own else {})}

    def student_digest(self) -> dict:
        """{"student_tokenizer": digest} where the student has its own tokenizer; {} (keys unchanged) otherwise."""
        if self.student_tokenizer is None:
            return {}
        return {"student_tokenizer": tokenizer_digest(self.student_tokenizer)}

    def fingerprint(self, role: str = "") -> dict:
        """The base fingerprint with the tokenizers' digests. role="teacher": what the teacher reads, so that the
        teacher (its training, cached outputs) is keyed alike whatever tokenizer the student has."""
        out = super().fingerprint()
        out.update({"max_length": self.max_length, "tokenizer": tokenizer_digest(self.tokenizer),
                    "validation_given": "validation" in self.files})
        if role == "teacher" and self.student_tokenizer is not None:
            return out | {"content_blake2b": self._teacher_hash, "input_shape": [len(ROWS), self.max_length]}
        return out | self.student_digest()


_TOKENIZERS: dict[tuple, tuple] = {}


def file_stamp(path: str) -> list:
    p = Path(path).expanduser()
    return [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [None, None]


def content_digest(splits: dict[str, dict[str, list]], order: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for split in order:
        digest.update(json.dumps(splits[split], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str | None:
    """Hash of the tokenizer's full definition (vocabulary, normalizer, templates)."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "backend_tokenizer"):  # less the padding/truncation state a call leaves behind
        spec = {k: v for k, v in json.loads(tokenizer.backend_tokenizer.to_str()).items()
                if k not in ("padding", "truncation")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = repr(tokenizer)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load_hub_dataset(name: str, config: str | None):
    """A hub data set via datasets.load_dataset; one ConfigError saying how to pass local files when unreachable."""
    from datasets import load_dataset

    try:
        if os.environ.get("KDEXP_OFFLINE") == "1":
            raise ConnectionError("KDEXP_OFFLINE=1")
        return load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, ...: all mean "not here"
        raise ConfigError(
            f"data.hf_name={name!r} (hf_config={config!r}) could not be loaded ({type(exc).__name__}); without the "
            "hub pass local files: data.files.train=train.csv data.files.test=test.csv (CSV, JSONL or Parquet), "
            "or data.root=<folder saved with save_to_disk>") from None
