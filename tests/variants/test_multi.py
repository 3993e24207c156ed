"""Multi-model variants, in-process: ensemble outputs, the mutual-learning loss and module, link fingerprints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from kdexp.caching.models import ModelCache
from kdexp.config.errors import ConfigError
from kdexp.config.parse import parse_config
from kdexp.models.ensemble import EnsembleTeacher
from kdexp.training import distilled as links
from kdexp.training.context import Context
from kdexp.training.run import RunIdentity
from kdexp.variants import experiment_kind
from kdexp.variants.ensemble import check_logit_method, parse_members
from kdexp.variants.mutual import MutualModule, mutual_loss
from tests.conftest import compose_train


class FixedLogits(nn.Module):
    """A 'model' whose logits are a fixed function of nothing but the batch size."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[: len(x)]


@pytest.fixture
def member_logits():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 4, generator=g) * 3 for _ in range(3)]


# -- ensemble teacher -----------------------------------------------------------------------------------------

def test_ensemble_mean_logits_is_the_weighted_mean(member_logits):
    ens = EnsembleTeacher([FixedLogits(z) for z in member_logits], weights=[2.0, 1.0, 1.0], combine="mean_logits")
    expected = (2 * member_logits[0] + member_logits[1] + member_logits[2]) / 4
    torch.testing.assert_close(ens(torch.zeros(5, 1)), expected, rtol=0, atol=1e-6)
    equal = EnsembleTeacher([FixedLogits(z) for z in member_logits])
    torch.testing.assert_close(equal(torch.zeros(5, 1)), sum(member_logits) / 3, rtol=0, atol=1e-6)


def test_ensemble_mean_probs_softmax_recovers_the_weighted_mean_of_probabilities(member_logits):
    ens = EnsembleTeacher([FixedLogits(z) for z in member_logits], weights=[1.0, 0.0, 3.0], combine="mean_probs")
    probs = (member_logits[0].softmax(1) + 3 * member_logits[2].softmax(1)) / 4
    out = ens(torch.zeros(5, 1))
    torch.testing.assert_close(out, probs.log(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.softmax(1), probs, rtol=0, atol=1e-6)
    assert ens.forward_intermediates(torch.zeros(5, 1)).stages == []


def test_ensemble_weights_and_mode_key_cached_teacher_outputs(member_logits):
    from kdexp.caching.teacher_outputs import weights_digest

    members = [FixedLogits(z) for z in member_logits]
    digests = {weights_digest(EnsembleTeacher(members, w, c))
               for w in ([1.0, 1.0, 1.0], [2.0, 1.0, 1.0]) for c in ("mean_logits", "mean_probs")}
    assert len(digests) == 4


def test_members_config_forms_and_default_seeds():
    node = {"seed": 5, "members": ["cnn_tiny", {"arch": "cnn_small", "weight": 3}, "cnn_tiny"], "combine": "mean_probs"}
    members = parse_members(node)
    assert [(m["arch"], m["seed"], m["weight"]) for m in members] == [
        ("cnn_tiny", 5, 1.0), ("cnn_small", 5, 3.0), ("cnn_tiny", 6, 1.0)]  # a repeated arch gets a new seed
    explicit = parse_members({"seed": 0, "members": ["cnn_tiny", "cnn_tiny"], "seeds": [3, 4], "weights": [1, 0]})
    assert [(m["seed"], m["weight"]) for m in explicit] == [(3, 1.0), (4, 0.0)]
    for bad in ({"members": []}, {"members": ["cnn_tiny"], "weights": [1, 2]},
                {"members": ["cnn_tiny"], "weights": [0]}, {"members": [{"arch": "cnn_tiny", "weight": -1}]},
                {"members": ["cnn_tiny"], "ckpt": "t.pt"}):
        with pytest.raises(ConfigError):  # settings that do not fit together
            parse_members({"seed": 0, **bad})


@pytest.mark.parametrize("override, message", [
    ("teacher.members=[nope]", r"teacher.members\[0\]='nope' is invalid: an architecture name or \{arch, seed"),
    ("teacher.members=[{arch:cnn_tiny,colour:1}]", r"teacher.members\[0\]=.*colour.* is invalid"),
    ("teacher.combine=median", r"teacher.combine='median' is invalid: choose one of: mean_logits, mean_probs"),
    ("teacher.weights=[1,-1]", r"teacher.weights\[1\]=-1.0 is invalid: must be a number >= 0"),
    ("teacher.seeds=[0,-1]", r"teacher.seeds\[1\]=-1 is invalid: must be an integer >= 0"),
])
def test_bad_ensemble_settings_are_named_when_the_config_is_parsed(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(compose_train(["variant=ensemble", override]))


def test_feature_methods_are_refused_for_an_ensemble():
    check_logit_method({"distill": {"name": "dkd"}}, "an ensemble")
    with pytest.raises(ConfigError, match="features"):
        check_logit_method({"distill": {"name": "fitnet"}}, "an ensemble")


# -- mutual learning ------------------------------------------------------------------------------------------

def test_mutual_loss_equals_the_formula(member_logits):
    y = torch.tensor([0, 1, 2, 3, 0])
    t, w = 2.0, {"ce": 0.5, "kl": 2.0}
    total, terms = mutual_loss(member_logits, y, w, t)

    def kl(p_logits, q_logits):  # KL(p || q) at T, batch mean, times T^2
        p, q = F.softmax(p_logits / t, 1), F.softmax(q_logits / t, 1)
        return (p * (p.log() - q.log())).sum(1).mean() * t * t

    expected = 0
    for k, z in enumerate(member_logits):
        peers = [kl(o, z) for j, o in enumerate(member_logits) if j != k]
        torch.testing.assert_close(terms[f"kl_{k}"], sum(peers) / 2, rtol=1e-5, atol=1e-6)
        expected = expected + 0.5 * F.cross_entropy(z, y) + 2.0 * sum(peers) / 2
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)


def tiny_students(k: int = 3):
    torch.manual_seed(0)
    return [nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)) for _ in range(k)]


def test_mutual_step_updates_every_student_from_its_own_term_only():
    students = tiny_students()
    module = MutualModule(students, recipe={"optimizer": "sgd", "lr": 0.1, "momentum": 0.0}, max_epochs=1)
    before = [[p.detach().clone() for p in s.parameters()] for s in students]
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    opt = module.configure_optimizers()
    module.training_step((x, y, torch.arange(6)), 0).backward()
    grads = [[p.grad.clone() for p in s.parameters()] for s in students]
    # peers are detached: student 0's gradient is that of its own CE + KL term
    module.zero_grad()
    _, terms = mutual_loss([s(x) for s in students], y, module.weights, module.temperature)
    (terms["ce_0"] + terms["kl_0"]).backward()
    for g, p in zip(grads[0], students[0].parameters()):
        torch.testing.assert_close(g, p.grad)
    for s, g in zip(students, grads):
        for p, gp in zip(s.parameters(), g):
            p.grad = gp
    opt.step()
    for b, s in zip(before, students):
        assert all(not torch.equal(p0, p) for p0, p in zip(b, s.parameters()))


def test_mutual_module_fits_and_reports_per_student_epochs():
    import lightning as L

    students = tiny_students(2)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(24, 3, 2, 2, generator=g),
                                          torch.randint(0, 4, (24,), generator=g),
                                          torch.arange(24))
    batches = torch.utils.data.DataLoader(data, batch_size=8)
    seen = []
    module = MutualModule(students, max_epochs=2, metric_sink=lambda m, epoch: seen.append((epoch, m)))
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(module, batches, batches)
    assert [e for e, _ in seen] == [0, 1]
    metrics = seen[-1][1]
    for key in ("train/loss", "train/acc_0", "train/acc_1", "train/kl_1", "val/acc_0", "val/acc_1", "val/acc", "lr"):
        assert key in metrics
    assert metrics["val/acc"] == max(metrics["val/acc_0"], metrics["val/acc_1"])
    assert all(state is not None for state in module.best_state) and len(module.last_val_acc) == 2



def test_the_skeleton_checkpoints_each_peers_best_state_and_restores_it():
    from kdexp.modules.base import CHECKPOINT_KEY

    module = MutualModule(tiny_students(2), max_epochs=1)
    for k, (acc, epoch) in enumerate([(0.5, 0), (0.75, 1)]):
        best = module.best[k]
        best.best_val_acc, best.best_epoch, best.last_val_acc = acc, epoch, acc - 0.25
        best.best_state = {n: v + k for n, v in module.students[k].state_dict().items()}
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[CHECKPOINT_KEY]["best_epoch"] == [0, 1]  # one entry per peer
    resumed = MutualModule(tiny_students(2), max_epochs=1)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.best_val_acc == [0.5, 0.75] and resumed.best_epoch == [0, 1] and resumed.last_val_acc == [0.25, 0.5]
    for k in range(2):
        copy = resumed.best_copy(k)
        assert copy is not resumed.students[k]
        assert all(torch.equal(v, module.best[k].best_state[n]) for n, v in copy.state_dict().items())


# -- cached links: fingerprints follow the teacher -------------------------------------------------------------

class NoTracker:
    """Stands in for MLflow: run ids in order, nothing written."""

    experiment_id, uri, client = "0", "sqlite:///nowhere.db", None

    def __init__(self):
        self.started = []

    def start(self, name, tags, params=None):
        self.started.append(tags)
        return f"run{len(self.started)}"

    def sink(self, run_id, prefix=""):
        return lambda metrics, epoch: None

    def log_metrics(self, *a, **k): ...
    def log_artifact(self, *a, **k): ...
    def finish(self, *a, **k): ...
    def fail(self, *a, **k): ...


@pytest.fixture
def link_ctx(tmp_path, tiny_overrides, monkeypatch):
    from kdexp.data import create_datamodule

    cfg = compose_train([*tiny_overrides, "data.num_samples=120", "data.num_test=40", "data.image_size=8",
                         "variant=chain"])
    conf = OmegaConf.to_container(cfg, resolve=True)
    dm = create_datamodule(**conf["data"], seed=conf["seed"])
    dm.setup()
    monkeypatch.setattr(links, "train_distilled", lambda *a, **k: {"val_acc": 0.5})  # keys, not training, under test
    return Context(RunIdentity(conf, NoTracker(), ModelCache(tmp_path / "models"), tmp_path), dm)


def chain_keys(ctx, root_key: str, archs: list[str]) -> list[tuple[str, bool]]:
    teacher, meta, out = ctx.build("teacher"), {"key": root_key, "run_id": "root"}, []
    for i, arch in enumerate(archs):
        model, meta = links.distilled_link(ctx, teacher, meta, {"arch": arch, "kwargs": {}}, f"link{i}", {})
        teacher = model
        out.append((meta["key"], meta["cached"]))
    return out


def test_link_keys_follow_every_upstream_change(link_ctx):
    first = chain_keys(link_ctx, "teacher-a", ["cnn_small", "cnn_tiny"])
    assert [cached for _, cached in first] == [False, False]
    assert [t["kdexp.teacher_run_id"] for t in link_ctx.run.tracker.started] == ["root", "run1"]  # lineage
    again = chain_keys(link_ctx, "teacher-a", ["cnn_small", "cnn_tiny"])
    assert again == [(key, True) for key, _ in first] and len(link_ctx.run.tracker.started) == 2  # nothing retrained
    other_root = chain_keys(link_ctx, "teacher-b", ["cnn_small", "cnn_tiny"])
    other_assistant = chain_keys(link_ctx, "teacher-a", ["cnn_tiny", "cnn_tiny"])
    assert len({k for k, _ in first + other_root}) == 4  # a new teacher: every link below it is new
    assert other_assistant[1][0] != first[1][0]  # a new assistant: the student below it is new
    born_again = chain_keys(link_ctx, "gen0-a", ["cnn_tiny"] * 3)
    born_again_new_gen0 = chain_keys(link_ctx, "gen0-b", ["cnn_tiny"] * 3)
    assert len({k for k, _ in born_again + born_again_new_gen0}) == 6


def test_link_key_depends_on_the_method(link_ctx):
    (key, _), = chain_keys(link_ctx, "t", ["cnn_tiny"])
    link_ctx.conf["distill"]["temperature"] = 2.0
    (other, _), = chain_keys(link_ctx, "t", ["cnn_tiny"])
    assert key != other


# -- configuration ---------------------------------------------------------------------------------------------

def test_variant_configs_compose_with_their_cli_forms():
    chain = compose_train(["variant=chain", "variant.assistants=[cnn_small,cnn_tiny]"])
    assert chain.variant.name == "chain" and list(chain.variant.assistants) == ["cnn_small", "cnn_tiny"]
    ens = compose_train(["variant=ensemble", "teacher.members=[cnn_medium,{arch:cnn_small,seed:3}]",
                         "teacher.combine=mean_probs", "teacher.weights=[2,1]"])
    assert ens.variant.name == "ensemble" and ens.teacher.members[1].seed == 3 and ens.teacher.arch == "cnn_medium"
    assert compose_train(["variant=born_again", "variant.generations=2"]).variant.generations == 2
    assert list(compose_train(["variant=mutual", "variant.students=[cnn_tiny,cnn_small]"]).variant.students) == [
        "cnn_tiny", "cnn_small"]
    assert compose_train([]).variant is None and "variant" not in parse_config(compose_train([]))


def test_unknown_variant_and_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="variant.name"):
        experiment_kind({"variant": {"name": "nope"}})
    from kdexp.variants import mutual

    base = OmegaConf.to_container(compose_train(["variant=mutual"]), resolve=True)
    with pytest.raises(ConfigError, match="not among"):
        mutual.peers({**base, "variant": {**base["variant"], "students": ["cnn_small", "cnn_small"]}})
    with pytest.raises(ConfigError, match="two or more"):
        mutual.peers({**base, "variant": {**base["variant"], "students": ["cnn_tiny"]}})
    with pytest.raises(ConfigError, match="one seed per student"):
        mutual.peers({**base, "variant": {**base["variant"], "seeds": [1, 2, 3]}})
    assert mutual.peers(base) == ([{"arch": "cnn_tiny", "kwargs": {}}] * 2, [0, 1])  # null: two copies, seed+k
    for override, message in (("variant=born_again", "variant.generations=0 is invalid"),
                              ("variant=chain", r"variant.assistants\[0\]='nope' is invalid")):
        conf = OmegaConf.to_container(compose_train([override]), resolve=True)
        key = "generations" if "born" in override else "assistants"
        conf["variant"][key] = 0 if key == "generations" else ["nope"]
        with pytest.raises(ConfigError, match=message):  # a plain dict (no Hydra) is checked the same way
            parse_config(conf)
    conf = OmegaConf.to_container(compose_train(["variant=chain"]), resolve=True)
    conf["variant"]["colour"] = "red"
    with pytest.raises(ConfigError, match=r"variant: unknown keys \['colour'\]"):
        parse_config(conf)
