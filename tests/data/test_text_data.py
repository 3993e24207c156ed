"""data=text: files in three formats and save_to_disk folders read alike, labels, splits, truncation, the tokenized
cache, dynamic padding, bad input, and text libraries imported only by text runs."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch

import kdexp
from kdexp.config.errors import ConfigError
from kdexp.data import create_datamodule
from kdexp.data.text import trim_padding
from tests.text_helpers import corpus, tiny_bert_folder, write_files, write_split

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")


def text_dm(files, tmp_path, **kw):
    kw = {"tokenizer": "train", "vocab_size": 100, "max_length": 24, "cache_dir": str(tmp_path / "tok"), **kw}
    dm = create_datamodule("text", files=files, **kw)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("csv"))


def test_csv_jsonl_parquet_and_save_to_disk_give_the_same_tensors(tmp_path, csv_files):
    from datasets import Dataset, DatasetDict

    ref = text_dm(csv_files, tmp_path)
    assert ref.num_classes == 2 and ref.input_shape == (3, 24)
    x, y = ref.split_tensors("train")
    assert x.dtype == torch.int64 and x.shape[1:] == (3, 24) and len(x) == 180  # 200 less a 10% validation
    for suffix in (".jsonl", ".parquet"):
        other = text_dm(write_files(tmp_path / suffix[1:], suffix), tmp_path)
        assert torch.equal(other.split_tensors("test")[0], ref.split_tensors("test")[0])
        assert torch.equal(other.split_tensors("train")[1], y)
    folder = tmp_path / "disk"
    DatasetDict({"train": Dataset.from_dict(corpus(200, 0)), "test": Dataset.from_dict(corpus(60, 1))}).save_to_disk(
        str(folder))
    disk = create_datamodule("text", root=str(folder), tokenizer="train", vocab_size=100, max_length=24)
    assert torch.equal(disk.split_tensors("test")[0], ref.split_tensors("test")[0])


def test_a_validation_file_is_the_validation_split(tmp_path, csv_files):
    files = {**csv_files, "validation": str(write_split(corpus(30, 7), tmp_path / "val.csv"))}
    dm = text_dm(files, tmp_path)
    assert [len(dm.split_tensors(s)[1]) for s in ("train", "val", "test")] == [200, 30, 60]
    carved = text_dm(csv_files, tmp_path)
    assert [len(carved.split_tensors(s)[1]) for s in ("train", "val", "test")] == [180, 20, 60]


def test_label_names_are_numbered_in_sorted_order(tmp_path):
    rows = corpus(40)
    names = {0: "neg", 1: "pos"}
    train = {**rows, "label": [names[v] for v in rows["label"]]}
    files = {s: str(write_split(train, tmp_path / f"{s}.csv")) for s in ("train", "test")}
    dm = text_dm(files, tmp_path)
    assert dm.class_names == ("neg", "pos")
    assert dm.split_tensors("test")[1].tolist() == rows["label"]
    bad = {**train, "label": ["neg"] * 39 + ["meh"]}
    files["test"] = str(write_split(bad, tmp_path / "bad.csv"))
    with pytest.raises(ConfigError, match="'meh' is not in the train split"):
        text_dm(files, tmp_path / "other")


def test_truncation_is_counted_and_logged(tmp_path, csv_files, caplog):
    with caplog.at_level(logging.INFO, logger="kdexp"):
        dm = text_dm(csv_files, tmp_path, max_length=8)
    rows = corpus(200, 0)["text"] + corpus(60, 1)["text"]
    expected = sum(len(dm.tokenizer(t)["input_ids"]) > 8 for t in rows)
    assert 0 < dm.truncated == expected
    assert f"{expected} of 260 sequences truncated to data.max_length=8" in caplog.text
    x, _ = dm.split_tensors("train")
    assert int(x[:, 1].sum(1).max()) == 8


def test_tokenized_splits_are_cached_under_their_fingerprint(tmp_path, csv_files, monkeypatch):
    first = text_dm(csv_files, tmp_path)
    assert len(list((tmp_path / "tok").glob("*.pt"))) == 1
    from kdexp.data.text import TextDataModule

    monkeypatch.setattr(TextDataModule, "encode", lambda *a: pytest.fail("tokenized again"))
    monkeypatch.setattr("kdexp.data.base._RAW_MEMO", {})
    again = text_dm(csv_files, tmp_path)
    assert torch.equal(again.split_tensors("train")[0], first.split_tensors("train")[0])
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.undo()
    longer = text_dm(csv_files, tmp_path, max_length=30)  # another fingerprint: another entry
    assert longer.fingerprint() != first.fingerprint() and len(list((tmp_path / "tok").glob("*.pt"))) == 2


def test_batches_are_cut_to_their_longest_sequence(tmp_path, csv_files):
    dm = text_dm(csv_files, tmp_path, max_length=40, batch_size=16)
    x_all, _ = dm.split_tensors("train")
    for x, _, index in dm.train_dataloader():
        full = x_all[index]
        width = int(full[:, 1].sum(1).max())
        assert x.shape == (len(index), 3, width) < full.shape
        assert torch.equal(x, full[..., :width]) and not full[..., width:].any()
    assert trim_padding(torch.zeros(0, 3, 5, dtype=torch.long)).shape == (0, 3, 1)


def test_sentence_pairs_get_token_types(tmp_path):
    rows = corpus(40)
    pairs = {"a": rows["text"], "b": rows["text"][::-1], "label": rows["label"]}
    files = {s: str(write_split(pairs, tmp_path / f"{s}.jsonl")) for s in ("train", "test")}
    dm = text_dm(files, tmp_path, text_field="a", text_pair_field="b")
    x, _ = dm.split_tensors("test")
    assert (x[:, 2] == 1).any(1).all()  # every second segment is type 1
    assert ((x[:, 2] == 1) <= (x[:, 1] == 1)).all()  # only on real tokens


def test_a_tokenizer_folder_is_used_as_saved(tmp_path, csv_files):
    from transformers import AutoTokenizer

    folder = tiny_bert_folder(tmp_path / "bert")
    dm = text_dm(csv_files, tmp_path, tokenizer=f"hf:{folder}")
    expected = AutoTokenizer.from_pretrained(folder)("the movie was good")["input_ids"]
    got = text_dm({"train": csv_files["train"], "test": str(write_split(
        {"text": ["the movie was good"], "label": [1]}, tmp_path / "one.csv"))}, tmp_path,
        tokenizer=f"hf:{folder}").split_tensors("test")[0][0, 0]
    assert got[: len(expected)].tolist() == expected and dm.model_kwargs()["vocab_size"] == len(dm.tokenizer)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text_field": "sentence"}, "data.text_field='sentence' is not a column of the train split; its columns: "
                                 "text, label"),
    ({"label_field": "y"}, "data.label_field='y' is not a column"),
    ({"tokenizer": "hf:no-such-org/no-such-model"}, "pass a local folder saved with save_pretrained"),
])
def test_bad_text_input_is_one_config_error(tmp_path, csv_files, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        text_dm(csv_files, tmp_path, **kwargs)


def test_an_unreachable_hub_data_set_says_how_to_pass_local_files(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"data.hf_name='glue'.*data.files.train=train.csv"):
        create_datamodule("text", hf_name="glue", hf_config="sst2", test_split="validation").setup()


def test_synthetic_text_is_seeded_and_three_way():
    a = create_datamodule("text_synthetic", num_samples=300, num_test=100, tokenizer="train", vocab_size=300)
    b = create_datamodule("text_synthetic", num_samples=300, num_test=100, tokenizer="train", vocab_size=300)
    c = create_datamodule("text_synthetic", num_samples=300, num_test=100, tokenizer="train", vocab_size=300,
                          data_seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.num_classes == 3 and (torch.bincount(a.split_tensors("test")[1]) > 15).all()


def test_kdexp_imports_text_libraries_only_inside_functions():
    """A vision run must not pay for transformers/datasets/tokenizers: kdexp imports them lazily, in functions.
    (torchmetrics, under Lightning, imports transformers itself whenever it is installed: benchmarks/startup.py.)"""
    lazy = ("transformers", "datasets", "tokenizers", "pandas")
    top_level = []
    for path in Path(kdexp.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only, including if-blocks at that level
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
                names = ([a.name for a in sub.names] if isinstance(sub, ast.Import) else
                         [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
                top_level += [(path.name, n) for n in names if n.split(".")[0] in lazy]
    assert top_level == []
