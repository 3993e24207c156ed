"""The typed config: Hydra rejects wrong types, the parsed config is read-only, and matrix cell keys are
the ones existing MLflow stores were tagged with (so `skip_finished` still finds their cells)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from hydra.errors import ConfigCompositionException

from kdexp.bench.matrix import cell_key, settings_key
from kdexp.caching.fingerprint import fingerprint
from kdexp.config.errors import ConfigError
from kdexp.config.parse import FrozenDict, parse_config, recipe_for, thaw
from tests.conftest import compose_train


@pytest.mark.parametrize("override, key", [
    ("seed=abc", "seed"), ("recipe.lr=fast", "recipe.lr"), ("distill.temperature=hot", "distill.temperature"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs"), ("data.batch_size=[1]", "data.batch_size"),
    ("baseline=maybe", "baseline"),
])
def test_hydra_rejects_a_wrong_type_while_composing(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([override])
    assert key in str(err.value.__cause__) or key in str(err.value)


def test_a_method_setting_that_the_method_does_not_take_is_a_clear_error():
    conf = thaw(parse_config(compose_train(["distill=dkd"])))
    conf["distill"]["betta"] = 2.0
    with pytest.raises(ConfigError, match=r"distill.betta=2.0 is invalid: not a key of distill=dkd; "
                                          r"did you mean beta\? valid keys: .*beta"):
        parse_config(conf)
    assert parse_config(compose_train(["distill=dkd", "distill.beta=2"]))["distill"]["beta"] == 2


@pytest.mark.parametrize("method", ["none", "kd"])
def test_a_misspelled_setting_of_a_method_without_settings_is_caught_too(method):
    """Methods that define no __init__ inherit nn.Module's **kwargs: validation still knows what they take."""
    conf = thaw(parse_config(compose_train([f"distill={method}"])))
    conf["distill"]["temprature"] = 3
    with pytest.raises(ConfigError, match=rf"distill.temprature=3 is invalid: not a key of distill={method}; "
                                          r"did you mean temperature\? valid keys: name, temperature, weights"):
        parse_config(conf)


def test_the_parsed_config_is_read_only_and_behaves_like_plain_containers():
    conf = parse_config(compose_train(["+student_lr.cnn_tiny=0.01"]))
    with pytest.raises(TypeError, match="read-only"):
        conf["recipe"]["lr"] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        conf["recipe"]["milestones"].append(3)
    assert isinstance(conf, dict) and isinstance(conf["recipe"]["milestones"], list)
    assert json.dumps(conf, sort_keys=True) == json.dumps(thaw(conf), sort_keys=True)  # same fingerprints
    assert fingerprint(conf) == fingerprint(thaw(conf))
    for clone in (copy.deepcopy(conf), pickle.loads(pickle.dumps(conf))):
        assert clone == conf and isinstance(clone, FrozenDict)
    # a role's recipe is asked for, never written back
    assert recipe_for(conf, "student")["lr"] == 0.01 and recipe_for(conf, "teacher")["lr"] == conf["recipe"]["lr"]
    assert {**conf["recipe"], "lr": 2.0}["lr"] == 2.0 and conf["recipe"]["lr"] == 0.003


# (matrix, pair, method) -> (kdexp.cell, kdexp.settings) at seed 1, as computed by kdexp at commit cd09f92,
# before the typed config: stores written then must still find these cells.
PINNED = {
    ("fashion_cpu", "cnn_small->cnn_tiny", "kd"): ("1ee04f4e0c6a42bb68d6", "0c47d92c3a265d312cd8"),
    ("fashion_cpu", "cnn_small->mlp_small", "crd"): ("9dded7c8a324c143b947", "0c47d92c3a265d312cd8"),
    ("fashion_zoo", "cnn_small->cnn_tiny", "dkd"): ("3383d4e6545a374f6230", "0c47d92c3a265d312cd8"),
    ("cifar100_crd_cross", "resnet32x4->shufflenetv1", "crd_kd"): ("932055e569d3753808bd", "d462bbfd9be68a70f9a0"),
    ("smoke", "cnn_small->cnn_tiny", "kd"): ("1eec5f678bd9be3caa3f", "18fb7b7b0406ac9808ec"),
}


@pytest.mark.parametrize("matrix, pair, method", sorted(PINNED))
def test_matrix_cell_and_settings_keys_are_unchanged(matrix, pair, method):
    conf = parse_config(compose_train([f"matrix={matrix}", f"pair='{pair}'", f"distill={method}",
                                       f"method={method}", "seed=1"]))
    assert (cell_key(conf), settings_key(conf)) == PINNED[(matrix, pair, method)]


def test_default_run_keys_are_unchanged():
    conf = parse_config(compose_train([]))
    assert "variant" not in conf  # the schema's empty slot does not enter the keys
    assert (cell_key(conf), settings_key(conf)) == ("0946ecd1c5efc046d2ea", "5ac1c54fa7b8f8c18947")


# variant -> (kdexp.cell, kdexp.settings) of its default config at 131c61a, before each kind was typed: the schema
# adds no key and changes no value. (policy is not here: its ppo node now lists every PPO setting.)
PINNED_KINDS = {
    "chain": ("a27b92c901b56ab3beeb", "8b6f41e807f3f692daed"),
    "born_again": ("7f2b692158e4353b32ae", "2fa24aca6688d65ae774"),
    "mutual": ("86e468f09b711f00461e", "9ec5ed3bf7f4c61a4ff1"),
    "augmented": ("2838d6c0a8aa6277f62a", "5f73c070d1bfc61c8f37"),
    "quantized": ("ba55159cdfa877d14403", "f433dd5dc1f8c5da49ba"),
    "ensemble": ("e7d634e37349ec03aae9", "7328da91b597988860bd"),
}


@pytest.mark.parametrize("kind", sorted(PINNED_KINDS))
def test_typed_kinds_keep_their_cell_and_settings_keys(kind):
    extra = ["student=cnn_tiny"] if kind == "mutual" else []
    conf = parse_config(compose_train([f"variant={kind}", *extra]))
    assert (cell_key(conf), settings_key(conf)) == PINNED_KINDS[kind]
