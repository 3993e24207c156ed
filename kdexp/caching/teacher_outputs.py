"""Teacher outputs computed once and looked up by sample index, instead of a teacher forward per step.

The frozen teacher's outputs on the train split are a pure function of its weights, the data (and
transform) and which outputs a method needs. They are computed once, stored atomically under
`<paths.cache>/teacher_outputs/<key>.pt` (under the model cache's file lock) and reused by every
student run, sweep trial and matrix cell; any change of weights, data or outputs changes the key.
With random augmentation the teacher runs online, unless `teacher_cache.views=K`: the student then
trains on K fixed augmented copies of the train set whose teacher outputs are cached (trade-off in
conf/train.yaml).
Text transformers' per-token features (hidden states, attention maps, value projections) are cached per sample
padded to data.max_length; a batch cut to its longest sequence reads their leading positions (the methods of
kdexp.distill.transformer slice the teacher's to the student's length, and count real tokens only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from kdexp.caching.fingerprint import fingerprint
from kdexp.caching.models import ModelCache
from kdexp.config.rules import check_fields
from kdexp.config.schema import TeacherCacheSchema
from kdexp.data.loader import TensorBatchLoader, epoch_generator
from kdexp.models.base import FeatureOutput

Levels = dict[str, tuple[int, ...]]  # a list ("stages", "attentions", ...) -> the levels kept; absent: all

log = logging.getLogger("kdexp")
FORMAT = 1  # bump when what is stored, or how views are generated, changes: invalidates every entry
FEATURES = ("stages", "preact", "embedding", "attentions", "values")
LISTS = ("stages", "preact", "attentions", "values")  # lists of levels (Distiller.teacher_levels picks from them)
FILL_BATCH = 256  # teacher batch while filling: fastest on CPU here (1024 falls out of cache); fixed
VIEW_CHUNK = 4096  # augmentation chunk while building views; fixed, it is part of what a view seed means
UNCACHED = frozenset({"queries", "keys"})  # TinyBERT's attention scores: the teacher runs online


@dataclass(frozen=True)
class TeacherCacheSettings:
    """The `teacher_cache:` config node."""

    mode: str = "auto"
    views: int = 0
    seed: int = 0
    max_gb: float = 4.0

    @classmethod
    def from_conf(cls, node: dict | None, augment: bool = False) -> TeacherCacheSettings:
        """Validated settings; `augment` (data.augment) also checks that mode=on can apply."""
        node = dict(node or {})
        check_fields(node, TeacherCacheSchema, "teacher_cache", strict=True)
        s = cls(**node)
        if s.mode == "on" and augment and not s.views:
            raise ValueError("teacher_cache.mode=on needs deterministic inputs, but data.augment=true draws new ones "
                             "every epoch; set teacher_cache.views=K (K cached augmented copies) or mode=auto|off")
        return s


def weights_digest(model: nn.Module) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TeacherOutputs:
    """The teacher's outputs for every training row: row = view * num_samples + sample (views=0: row = sample).
    A level of a list that the method does not read is None (never computed, stored or looked up). Text
    transformers' attentions / values are per sample padded to data.max_length (empty lists for images)."""

    logits: Tensor
    stages: list[Tensor | None]
    preact: list[Tensor | None]
    embedding: Tensor | None
    num_samples: int
    views: int = 0
    attentions: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)

    def tensors(self) -> list[Tensor]:
        every = [self.logits, *self.stages, *self.preact, self.embedding, *self.attentions, *self.values]
        return [t for t in every if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to(self, device: torch.device) -> TeacherOutputs:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherOutputs(move(self.logits), [move(t) for t in self.stages], [move(t) for t in self.preact],
                              move(self.embedding), self.num_samples, self.views,
                              [move(t) for t in self.attentions], [move(t) for t in self.values])

    def sample_index(self, rows: Tensor) -> Tensor:
        """The sample positions of batch rows (what methods with a per-sample memory see as `index`)."""
        return rows if not self.views else rows.remainder(self.num_samples)

    def lookup(self, rows: Tensor) -> FeatureOutput:
        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        return FeatureOutput(pick(self.logits), [pick(t) for t in self.stages], [pick(t) for t in self.preact],
                             pick(self.embedding), [pick(t) for t in self.attentions], [pick(t) for t in self.values])

    def state(self) -> dict:
        per_token = {"attentions": self.attentions, "values": self.values} if self.attentions or self.values else {}
        return {"format": FORMAT, "logits": self.logits, "stages": self.stages, "preact": self.preact,
                "embedding": self.embedding, "num_samples": self.num_samples, "views": self.views, **per_token}

    @classmethod
    def from_state(cls, state: dict) -> TeacherOutputs:
        if state.get("format") != FORMAT:
            raise ValueError(f"format {state.get('format')!r}, expected {FORMAT}")
        return cls(state["logits"], list(state["stages"]), list(state["preact"]), state["embedding"],
                   int(state["num_samples"]), int(state["views"]), list(state.get("attentions", [])),
                   list(state.get("values", [])))


@torch.no_grad()
def compute_outputs(teacher: nn.Module, x: Tensor, outputs: tuple[str, ...], num_samples: int, views: int = 0,
                    device: torch.device | None = None, levels: Levels | None = None) -> TeacherOutputs:
    """Run the frozen teacher over every row of `x` once (in eval mode), keeping only `outputs` (and of
    its lists only the `levels` named)."""
    home = next(teacher.parameters()).device
    device = torch.device(device) if device is not None else x.device
    was_training = teacher.training
    teacher.eval().to(device)
    keep = set(outputs)
    features = keep & set(FEATURES)
    parts: dict[str, list] = {"logits": [], "embedding": [], **{name: [] for name in LISTS}}
    try:
        for i in range(0, len(x), FILL_BATCH):
            xb = x[i : i + FILL_BATCH].to(device)
            out = teacher.forward_intermediates(xb) if features else FeatureOutput(teacher(xb), [], [], None)
            parts["logits"].append(out.logits.float().cpu())
            for name in LISTS:
                if name in keep:
                    maps = getattr(out, name)
                    kept = kept_levels(levels, name, len(maps))
                    parts[name].append([t.float().cpu() if i in kept else None for i, t in enumerate(maps)])
            if "embedding" in keep:
                parts["embedding"].append(out.embedding.float().cpu())
    finally:
        teacher.to(home).train(was_training)
    cat_lists = lambda chunks: [None if c[0] is None else torch.cat(c) for c in zip(*chunks)]  # noqa: E731
    lists = {name: cat_lists(parts[name]) if parts[name] else [] for name in LISTS}
    return TeacherOutputs(
        torch.cat(parts["logits"]), lists["stages"], lists["preact"],
        torch.cat(parts["embedding"]) if parts["embedding"] else None, num_samples, views,
        lists["attentions"], lists["values"],
    )


def kept_levels(levels: Levels | None, name: str, count: int) -> set[int]:
    """The levels of a `count`-long list (stages, attentions, ...) that `levels` keeps (all where it names none)."""
    chosen = (levels or {}).get(name)
    if chosen is None:
        return set(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ValueError(f"teacher levels {name}={bad} out of range: the teacher has {count} (0..{count - 1})")
    return set(chosen)


def augmented_views(dm, views: int, seed: int) -> Tensor:
    """`views` augmented copies of the train split, stacked (row = view * N + sample); same seed, same pixels."""
    x, _ = dm.split_tensors("train")
    n = len(x)
    out = torch.empty((views * n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for v in range(views):
        gen = epoch_generator(seed, v)
        for i in range(0, n, VIEW_CHUNK):
            chunk = x[i : i + VIEW_CHUNK]
            out[v * n + i : v * n + i + len(chunk)] = dm.augment_batch(chunk, gen)
    return out


class TeacherOutputCache:
    """`<root>/<key>.pt` files: written to a temp file and renamed, filled under ModelCache's lock."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.locks = ModelCache(self.root)  # one locking scheme for every cache

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> TeacherOutputs | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:  # memory-mapped: large feature files are paged in as batches touch them
            return TeacherOutputs.from_state(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # unreadable or of an old format: refill it
            log.warning("teacher output cache %s is unreadable (%s); recomputing", path, exc)
            return None

    def store(self, key: str, outputs: TeacherOutputs, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            torch.save({**outputs.state(), "meta": json.dumps(meta, sort_keys=True, default=str)}, tmp)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(key)

    def get_or_compute(self, key: str, compute: Callable[[], TeacherOutputs],
                       meta: dict) -> tuple[TeacherOutputs, bool]:
        """(outputs, filled): computed once under the lock if missing; concurrent runs wait and share it."""
        found = self.load(key)
        if found is not None:
            return found, False
        with self.locks.lock(key):
            found = self.load(key)
            if found is not None:
                return found, False
            outputs = compute()
            self.store(key, outputs, meta)
            return outputs, True


def wanted_outputs(needs: frozenset[str], needs_features: bool, levels: Levels | None = None) -> tuple[str, ...]:
    """The teacher outputs to cache: logits, and the features the method needs, less lists it reads no level of."""
    levels = levels or {}
    return ("logits", *(f for f in FEATURES if needs_features and f in needs and levels.get(f) != ()))


def estimated_bytes(teacher: nn.Module, dm, outputs: tuple[str, ...], rows: int, levels: Levels | None = None) -> int:
    if len(outputs) == 1:
        return rows * dm.num_classes * 4
    probe = teacher.feature_shapes(tuple(dm.input_shape))  # batch of 2
    per_sample = probe.logits[0].numel()
    for name in LISTS:
        if name in outputs:
            maps = getattr(probe, name)
            per_sample += sum(maps[i][0].numel() for i in kept_levels(levels, name, len(maps)))
    per_sample += probe.embedding[0].numel() if "embedding" in outputs else 0
    return rows * per_sample * 4


def cache_spec(teacher: nn.Module, dm, outputs: tuple[str, ...], views: int, seed: int,
               levels: Levels | None = None) -> dict:
    """Everything the cached outputs depend on: the key is its fingerprint (whole lists keep their old keys)."""
    spec = {
        "kind": "teacher-outputs", "format": FORMAT, "teacher": type(teacher).__name__,
        "teacher_weights": weights_digest(teacher), "data": dm.fingerprint("teacher"), "split": "train",
        "transform": {"views": views, "seed": seed, "chunk": VIEW_CHUNK} if views else "none",
        "outputs": list(outputs),
    }
    chosen = {name: sorted(set(lv)) for name, lv in (levels or {}).items() if name in outputs}
    return spec | ({"levels": chosen} if chosen else {})


@dataclass
class CachedTeacher:
    outputs: TeacherOutputs
    train_loader: TensorBatchLoader | None  # None: the data module's own train loader
    key: str


def prepare_cached_teacher(node: dict | None, dm, teacher: nn.Module, needs: frozenset[str], needs_features: bool,
                           root: str | os.PathLike, memo: dict | None = None,
                           levels: Levels | None = None) -> CachedTeacher | None:
    """Teacher outputs from (or filled into) the cache, or None where the teacher must run online.
    `levels`: the levels of each list the method reads (Distiller.teacher_levels); the rest is not kept."""
    settings = TeacherCacheSettings.from_conf(node, dm.augment)
    memo = {} if memo is None else memo
    if settings.mode == "off":
        return None
    if needs_features and needs & UNCACHED:
        log.info("teacher runs online: the cache keeps no %s", ", ".join(sorted(needs & UNCACHED)))
        return None
    views = settings.views if dm.augment else 0
    if dm.augment and not views:
        log.info("teacher runs online: random augmentation (data.augment=true, teacher_cache.views=0)")
        return None
    outputs = wanted_outputs(needs, needs_features, levels)
    n = dm.num_train
    size = estimated_bytes(teacher, dm, outputs, n * max(views, 1), levels)
    if size > settings.max_gb * 2**30:
        if settings.mode == "auto":
            log.info("teacher runs online: its outputs %s would take %.1f GB > teacher_cache.max_gb=%s",
                     outputs, size / 2**30, settings.max_gb)
            return None
        log.warning("teacher_cache.mode=on: caching %.1f GB of teacher outputs (max_gb=%s)", size / 2**30,
                    settings.max_gb)
    spec = cache_spec(teacher, dm, outputs, views, settings.seed, levels)
    key = fingerprint(spec)
    x_views = None
    if views:
        view_key = ("views", key)
        if view_key not in memo:
            memo[view_key] = augmented_views(dm, views, settings.seed)
        x_views = memo[view_key]
    if key not in memo:
        def fill() -> TeacherOutputs:
            start = time.perf_counter()
            x = x_views if views else dm.split_tensors("train")[0]
            device = x.device if x.is_cuda or not torch.cuda.is_available() else torch.device("cuda")
            filled = compute_outputs(teacher, x, outputs, n, views, device, levels)
            log.info("filled teacher outputs %s%s (%d rows, %.1f MB) in %.1fs", outputs,
                     f", levels {spec['levels']}" if "levels" in spec else "", len(x), filled.nbytes / 2**20,
                     time.perf_counter() - start)
            return filled

        cache = TeacherOutputCache(root)
        memo[key], filled = cache.get_or_compute(key, fill, spec)
        if not filled:
            log.info("reusing cached teacher outputs %s (key %s)", outputs, key)
    loader = dm.view_loader(x_views, views) if views else None
    return CachedTeacher(memo[key], loader, key)
