"""The matrix keys of a run's config, applied once while it is parsed: the `pair` axis sets both
architectures, `method` labels the row, `distill_overrides` merges per-pair method settings, `student_lr`
gives a student architecture its own lr. Pure config work: no MLflow, no benchmark machinery
(kdexp.bench.matrix builds cell keys and leases on top of these)."""

from __future__ import annotations

import copy

from kdexp.config.errors import ConfigError
from kdexp.config.rules import check_number

PAIR_SEP = "->"


def pair_name(teacher: str, student: str) -> str:
    return f"{teacher}{PAIR_SEP}{student}"


def parse_pair(pair: str) -> tuple[str, str]:
    parts = [p.strip() for p in str(pair).split(PAIR_SEP)]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"pair={pair!r} is invalid: write it as 'teacher->student', e.g. \"pair='cnn_medium->cnn_tiny'\" "
            "(quoted: Hydra's override grammar does not accept '>' unquoted)"
        )
    return parts[0], parts[1]


def apply_matrix_keys(conf: dict) -> None:
    """`method` defaults to the distill config chosen (crd_kd, not its `name` crd); `pair: "T->S"` sets
    teacher.arch and student.arch; `distill_overrides` ("*" for every pair, then the pair itself ->
    method -> distill keys, e.g. DKD's per-pair beta) is merged into `distill`."""
    conf["method"] = conf.get("method") or distill_choice() or conf["distill"]["name"]
    if conf.get("pair"):
        conf["teacher"]["arch"], conf["student"]["arch"] = parse_pair(conf["pair"])
    overrides = conf.pop("distill_overrides", None) or {}  # merged below; '*', '->' are no MLflow param names
    for pair in ("*", pair_name(conf["teacher"]["arch"], conf["student"]["arch"])):
        extra = (overrides.get(pair) or {}).get(conf["method"])
        if extra:
            merge(conf["distill"], extra)
    for arch, lr in conf["student_lr"].items():
        check_number(f"student_lr.{arch}", lr, gt=0)


def distill_choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # run_experiment called outside the kdexp-train app (tests)
        return None
    return HydraConfig.get().runtime.choices.get("distill")


def merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def student_lr(conf: dict, arch: str) -> float | None:
    """`student_lr[arch]`: the lr of a student of that architecture (kdexp.config.parse.recipe_for applies it)."""
    lr = conf["student_lr"].get(arch)
    return None if lr is None else float(lr)
