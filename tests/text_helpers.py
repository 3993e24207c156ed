"""Offline text fixtures: a small labelled corpus written as files, and a tiny BERT + tokenizer saved to a folder."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

POSITIVE, NEGATIVE = ("good", "great", "fine"), ("bad", "awful", "poor")
FILLER = ("the", "movie", "plot", "was", "actor", "scene", "story", "and", "a", "very", "quite", "it")


def corpus(n: int, seed: int = 0) -> dict[str, list]:
    """n sentences; label 1 when a positive word is present, else 0 (negative word)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}


def write_split(columns: dict[str, list], path: Path) -> Path:
    frame = pd.DataFrame(columns)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def write_files(folder: Path, suffix: str = ".csv", n_train: int = 200, n_test: int = 60) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"train": str(write_split(corpus(n_train, 0), folder / f"train{suffix}")),
            "test": str(write_split(corpus(n_test, 1), folder / f"test{suffix}"))}


def tiny_bert_folder(folder: Path, num_labels: int = 2, vocab_size: int | None = None, layers: int = 2,
                     with_head: bool = True) -> Path:
    """A 2-layer hidden-32 BERT and a WordPiece tokenizer trained on the corpus, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from kdexp.data.text import train_tokenizer

    tokenizer = train_tokenizer(corpus(200)["text"], 100)
    config = BertConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if with_head else BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def byte_bpe_tokenizer_folder(folder: Path, vocab_size: int = 300) -> Path:
    """A RoBERTa-like tokenizer (byte-level BPE, case kept, <s> </s> <pad>) trained on the corpus with `tokenizers`
    and saved like a hub tokenizer: another vocabulary and normalisation than tiny_bert_folder's WordPiece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(200)["text"], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(folder)
    return folder
