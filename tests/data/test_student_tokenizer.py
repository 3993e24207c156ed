"""A student with its own tokenizer (data.student_tokenizer): a second tokenization per sample, each model reading
its own rows, the teacher's keys unchanged, the same tokenizer twice = one tokenization, and what is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kdexp.config.errors import ConfigError
from kdexp.config.parse import resolve_student_tokenizer
from kdexp.data import create_datamodule
from kdexp.training.context import check_own_tokenizer
from tests.text_helpers import byte_bpe_tokenizer_folder, tiny_bert_folder, write_files

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_tokenizer")
    return {"files": write_files(root / "data"), "A": tiny_bert_folder(root / "A"),
            "B": byte_bpe_tokenizer_folder(root / "B"), "cache": root / "tok"}


def text_dm(folders, cache: bool = True, **kw):
    dm = create_datamodule("text", files=folders["files"], max_length=MAX_LENGTH, tokenizer=f"hf:{folders['A']}",
                           cache_dir=str(folders["cache"]) if cache else None, batch_size=16, seed=0, **kw)
    dm.setup()
    return dm


def test_teacher_and_student_ids_of_a_batch_decode_to_the_same_text(folders):
    dm = text_dm(folders, student_tokenizer=str(folders["B"]))
    assert dm.input_shape == (6, MAX_LENGTH) and len(dm.student_tokenizer) != len(dm.tokenizer)
    x = next(iter(dm.train_dataloader()))[0]
    assert x.shape[:2] == (16, 6) and x.shape[2] == int(x[:, 1::3].sum(-1).max())  # cut to the longer of the two
    differ = 0
    for teacher, student in zip(x[:, :3], x[:, 3:]):
        t_ids, s_ids = teacher[0][teacher[1] == 1], student[0][student[1] == 1]
        t_text = dm.tokenizer.decode(t_ids, skip_special_tokens=True)
        s_text = dm.student_tokenizer.decode(s_ids, skip_special_tokens=True).strip()
        if (t_ids != 1).any() and len(t_ids) < MAX_LENGTH and len(s_ids) < MAX_LENGTH:  # neither truncated
            assert t_text == s_text and len(t_text) > 10
        differ += t_ids.tolist() != s_ids.tolist()
        assert (student[0][student[1] == 0] == dm.student_tokenizer.pad_token_id).all()  # padded with its own id
    assert differ == len(x)
    # the student's vocabulary and padding id come from its tokenizer; the teacher's stay its own
    assert dm.model_kwargs("student") == {"vocab_size": len(dm.student_tokenizer), "max_length": MAX_LENGTH,
                                          "pad_token_id": dm.student_tokenizer.pad_token_id, "tokenization": 1}
    assert dm.model_kwargs("teacher")["vocab_size"] == len(dm.tokenizer)


def test_truncation_is_counted_for_both_tokenizers(folders, caplog):
    import logging

    from tests.text_helpers import corpus

    rows = corpus(200, 0)["text"] + corpus(60, 1)["text"]
    caplog.set_level(logging.INFO, logger="kdexp")
    dm = text_dm(folders, cache=False, student_tokenizer=str(folders["B"]))
    expected = [sum(len(tok(t)["input_ids"]) > MAX_LENGTH for t in rows)
                for tok in (dm.tokenizer, dm.student_tokenizer)]
    assert (dm.truncated, dm.student_truncated) == tuple(expected) and expected[0] != expected[1]
    assert (f"{expected[0]} of 260 sequences truncated to data.max_length={MAX_LENGTH} with the teacher's tokenizer, "
            f"{expected[1]} with the student's") in caplog.text


def test_the_teacher_keys_ignore_the_student_tokenizer_and_the_data_keys_do_not(folders):
    own, shared = text_dm(folders, student_tokenizer=str(folders["B"])), text_dm(folders)
    assert own.fingerprint("teacher") == shared.fingerprint() == shared.fingerprint("teacher")
    assert own.fingerprint() != shared.fingerprint() and own.fingerprint("student") == own.fingerprint()
    assert torch.equal(own.split_tensors("train")[0][:, :3], shared.split_tensors("train")[0])
    # the tokenized cache holds both tokenizations under its own key: read again, the same tensors
    again = create_datamodule("text", files=folders["files"], max_length=MAX_LENGTH, tokenizer=f"hf:{folders['A']}",
                              student_tokenizer=str(folders["B"]), cache_dir=str(folders["cache"]), seed=0)
    again.load_raw()
    assert len(list(folders["cache"].glob("*.pt"))) == 2 and again.student_truncated == own.student_truncated


def test_the_same_tokenizer_for_both_is_one_tokenization(folders):
    same = text_dm(folders, student_tokenizer=f"hf:{folders['A']}")
    shared = text_dm(folders)
    assert same.student_tokenizer is None and same.input_shape == (3, MAX_LENGTH)
    assert same.fingerprint() == shared.fingerprint() and "tokenization" not in same.model_kwargs("student")
    assert torch.equal(same.split_tensors("train")[0], shared.split_tensors("train")[0])


@pytest.mark.parametrize("arch", ["text_cnn", "hf"])
def test_a_student_reads_its_own_rows_and_alone_takes_its_own_input(folders, arch):
    from kdexp.models import create_model
    from kdexp.models.base import example_input, own_rows

    dm = text_dm(folders, student_tokenizer=str(folders["B"]))
    kwargs = dm.model_kwargs("student") | ({"hf_config": {"num_hidden_layers": 1}} if arch == "hf" else {})
    torch.manual_seed(0)
    student = create_model(arch, num_classes=2, in_channels=3, **kwargs).eval()
    x = next(iter(dm.loader("test", batch_size=8)))[0]
    own = own_rows(student, x)
    assert torch.equal(own, x[:, 3:]) and own.is_contiguous() and torch.equal(own_rows(student, own), own)
    with torch.no_grad():
        assert torch.allclose(student(x), student(own), atol=1e-5)  # padding beyond its longest changes nothing
        other = x.clone()
        other[:, :3] = torch.randint_like(x[:, :3], 2)  # another teacher tokenization changes nothing of the student's
        assert torch.equal(student(other), student(x))
    assert example_input(student, dm.input_shape, 2).shape == (2, 3, MAX_LENGTH)  # exports, latency, FLOPs


def test_student_resolves_to_the_students_own_hf_model_and_bad_values_are_refused(tmp_path):
    conf = {"data": {"student_tokenizer": "student"}, "student": {"arch": f"hf:{tmp_path}", "kwargs": {}}}
    resolve_student_tokenizer(conf)
    assert conf["data"]["student_tokenizer"] == f"hf:{tmp_path}"
    conf = {"data": {"student_tokenizer": "student"}, "student": {"arch": "bert_l4", "kwargs": {"source": "x/y"}}}
    resolve_student_tokenizer(conf)
    assert conf["data"]["student_tokenizer"] == "hf:x/y"
    with pytest.raises(ConfigError, match=r"data.student_tokenizer='student' is invalid: student.arch='text_cnn' "
                                          r"has no tokenizer of its own"):
        resolve_student_tokenizer({"data": {"student_tokenizer": "student"}, "student": {"arch": "text_cnn"}})
    with pytest.raises(ConfigError, match=r"data.student_tokenizer='/no/such' is invalid: not a folder; choose null "
                                          r"\(the teacher's\), student"):
        resolve_student_tokenizer({"data": {"student_tokenizer": "/no/such"}, "student": {"arch": "text_cnn"}})


def test_an_unloadable_student_tokenizer_is_one_config_error(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^data.student_tokenizer='.*empty': no tokenizer could be loaded"):
        text_dm(folders, cache=False, student_tokenizer=str(tmp_path / "empty"))


def test_a_student_tokenizer_without_a_padding_token_is_one_config_error(folders, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["B"])
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    with pytest.raises(ConfigError, match=r"^data.student_tokenizer='.*nopad': the tokenizer has no padding token"):
        text_dm(folders, cache=False, student_tokenizer=str(tmp_path / "nopad"))


def test_position_matching_methods_and_init_from_teacher_are_refused_with_two_tokenizations():
    dm = SimpleNamespace(student_tokenizer=object())
    conf = {"distill": {"name": "hidden"}, "data": {"student_tokenizer": "hf:B"}, "student": {}}
    with pytest.raises(ConfigError, match=r"^distill.name='hidden' matches teacher and student token by token, "
                                          r"but with data.student_tokenizer='hf:B' their token positions do not "
                                          r"correspond; choose one of: .*\bkd\b.*"):
        check_own_tokenizer(conf, dm)
    for name in ("tinybert", "minilm", "fitnet", "at"):
        with pytest.raises(ConfigError, match=f"distill.name='{name}' matches"):
            check_own_tokenizer({**conf, "distill": {"name": name}}, dm)
    for name in ("none", "kd", "dkd", "dist", "kd_std"):
        check_own_tokenizer({**conf, "distill": {"name": name}}, dm)
    with pytest.raises(ConfigError, match="student.init_from_teacher=true copies the teacher's embeddings"):
        check_own_tokenizer({**conf, "distill": {"name": "kd"}, "student": {"init_from_teacher": True}}, dm)
    check_own_tokenizer(conf, SimpleNamespace(student_tokenizer=None))  # one tokenization: everything as before


def test_a_misspelled_student_tokenizer_key_names_the_right_one():
    from kdexp.config.keys import check_data_keys

    check_data_keys({"name": "text_synthetic", "student_tokenizer": None})
    with pytest.raises(ConfigError, match=r"data.student_tokeniser='student' is invalid: unknown key; did you mean "
                                          r"student_tokenizer"):
        check_data_keys({"name": "text", "student_tokeniser": "student"})
