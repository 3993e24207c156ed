"""The real `kdexp-train` CLI with a student that has its own tokenizer: KD from a saved BERT teacher (tokenizer A)
into a BERT student of tokenizer B trains, exports with B's input, and the teacher's cache is shared with a run
whose student reads A; a method matching tokens position by position is refused with one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.test_cli import kdexp_train, runs
from tests.text_helpers import byte_bpe_tokenizer_folder, tiny_bert_folder, write_files

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUICK = ["trainer.max_epochs=1", "teacher.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8",
         "data.max_length=24", "baseline=false"]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("own_tokenizer_cli")
    files = write_files(cwd / "data")
    teacher, student_tok = tiny_bert_folder(cwd / "A"), byte_bpe_tokenizer_folder(cwd / "B", vocab_size=300)
    common = ["data=text", f"data.files.train={files['train']}", f"data.files.test={files['test']}", "teacher=hf",
              f"teacher.arch=hf:{teacher}", "student=hf", "student.hf_config.num_hidden_layers=1",
              "student.hf_config.hidden_size=32", "teacher.seed=0", *QUICK]
    first = kdexp_train(*common, f"data.student_tokenizer={student_tok}", "distill=kd", cwd=cwd)
    second = kdexp_train(*common, "distill=kd", "seed=1", cwd=cwd)  # another seed, the teacher's tokenizer
    return cwd, common, first, second


def test_kd_into_a_student_with_its_own_tokenizer(own_run):
    from transformers import AutoTokenizer

    cwd, _, first, _ = own_run
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    assert "filled teacher outputs ('logits',)" in log
    assert "with the teacher's tokenizer" in log and "with the student's" in log  # truncation counts of both
    assert "Failed to validate serving input example" not in log  # the MLflow Models take their own rows
    client, all_runs = runs(cwd)
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    assert student.info.status == "FINISHED" and student.data.metrics["student/onnx_parity_ok"] == 1.0
    weights = torch.load(client.download_artifacts(student.info.run_id, "student.pt", str(cwd)), map_location="cpu")
    embedding = next(v for k, v in weights.items() if k.endswith("word_embeddings.weight"))
    assert embedding.shape[0] == len(AutoTokenizer.from_pretrained(cwd / "B")) != 66  # B's vocabulary, not A's
    for role, folder in (("student", "B"), ("teacher", "A")):  # each run logs the tokenizer its model reads
        run = next(r for r in all_runs if r.data.tags["kdexp.role"] == role)
        logged = client.download_artifacts(run.info.run_id, "tokenizer", str(cwd / f"logged_{role}"))
        vocab = AutoTokenizer.from_pretrained(logged).get_vocab()
        assert vocab == AutoTokenizer.from_pretrained(cwd / folder).get_vocab()
    dataset = client.get_run(student.info.run_id).inputs.dataset_inputs[0].dataset
    features = json.loads(json.loads(dataset.schema)["mlflow_tensorspec"]["features"])[0]["tensor-spec"]
    assert features["shape"] == [-1, 6, 24]  # the data set: both tokenizations
    import onnx

    onnx_path = client.download_artifacts(student.info.run_id, "exports/student.onnx", str(cwd))
    dims = onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3  # the exported student takes its own tokenization alone


def test_another_seed_and_the_teachers_tokenizer_reuse_the_cached_teacher(own_run):
    _, _, _, second = own_run
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "reusing cached teacher outputs ('logits',)" in log and "filled teacher outputs" not in log
    assert "training teacher" not in log  # the teacher model itself came from the model cache


def test_a_token_by_token_method_with_two_tokenizers_is_one_line_and_exit_2(own_run):
    cwd, common, first, second = own_run
    before = len(runs(cwd)[1])
    out = kdexp_train(*common, f"data.student_tokenizer={cwd / 'B'}", "distill=hidden", cwd=cwd)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["kdexp-train: error: distill.name='hidden' matches teacher and student token by token, but "
                      f"with data.student_tokenizer='{cwd / 'B'}' their token positions do not correspond; choose one "
                      "of: cc, crd, dist, dkd, kd, kd_std, none, pkt, rkd"], out.stderr[-2000:]
    assert len(runs(cwd)[1]) == before  # refused before any run was recorded
