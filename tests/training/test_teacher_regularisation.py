"""`teacher.augment` and `teacher.label_smoothing`: the teacher's own regularisation (the memorisation
experiment of docs/fashion_full_benchmark.md). They reach the teacher's training only, change its cache key
only when set, and leave the keys of cells run before they existed unchanged."""

from __future__ import annotations

from omegaconf import OmegaConf

from kdexp.bench.matrix import cell_key, settings_key
from kdexp.config.parse import parse_config, recipe_for, thaw
from kdexp.training import alone
from tests.conftest import compose_train


def cell(*overrides: str) -> dict:
    return thaw(parse_config(OmegaConf.to_container(compose_train(list(overrides)), resolve=True)))


def test_label_smoothing_is_in_the_teachers_recipe_only_and_absent_at_zero():
    plain, smoothed = cell(), cell("teacher.label_smoothing=0.2")
    assert "label_smoothing" not in recipe_for(plain, "teacher")
    assert recipe_for(smoothed, "teacher")["label_smoothing"] == 0.2
    assert recipe_for(smoothed, "student") == recipe_for(plain, "student")  # the students' loss is untouched


def test_the_new_keys_at_their_defaults_keep_the_cell_and_settings_keys_of_earlier_cells():
    plain = cell("distill=kd")
    before = {**plain, "teacher": {k: v for k, v in plain["teacher"].items()
                                   if k not in ("augment", "label_smoothing")}}  # a config of before the keys
    assert cell_key(plain) == cell_key(before) and settings_key(plain) == settings_key(before)
    for key in ("teacher.augment=true", "teacher.label_smoothing=0.1"):
        other = cell("distill=kd", key)
        assert cell_key(other) != cell_key(plain) and settings_key(other) != settings_key(plain)


def test_the_teacher_trains_augmented_and_smoothed_while_the_baseline_student_does_not(tiny_overrides, tmp_path,
                                                                                       monkeypatch):
    from kdexp.variants import run_experiment

    seen = {}
    real_fit = alone.fit

    def spy(ctx, module, max_epochs, **kwargs):
        seen[kwargs["stage"].split()[0]] = (ctx.dm.augment, ctx.dm.fingerprint()["augment"], dict(module.recipe))
        return real_fit(ctx, module, max_epochs, **kwargs)

    monkeypatch.setattr(alone, "fit", spy)
    run_experiment(compose_train([*tiny_overrides, "distill=kd", "teacher.augment=true",
                                  "teacher.label_smoothing=0.2", "tracking.log_model=false",
                                  "tracking.export_student=false"]), tmp_path / "run")
    augment, described, recipe = seen["teacher"]
    assert augment is True and described and recipe["label_smoothing"] == 0.2
    augment, described, recipe = seen["baseline"]
    assert augment is False and described is False and "label_smoothing" not in recipe
