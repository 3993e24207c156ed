"""Per-epoch checkpoints so that a killed training resumes where it stopped, bitwise.

A resumed fit must see what an uninterrupted one would have: weights, optimizer and scheduler state and
the loops' counters (Lightning's checkpoint), DistillModule's best-epoch bookkeeping and the global RNG
(DistillModule.on_save_checkpoint: CRD draws its negatives from it; Lightning saves no RNG), and the train
loader's data order (TensorBatchLoader is Stateful: Lightning's fit loop saves and restores it).

    trainer = L.Trainer(..., callbacks=[checkpoint_callback(folder)], enable_checkpointing=True)
    trainer.fit(module, train_loader, val_loader, ckpt_path=last_checkpoint(folder))
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last.ckpt"


def checkpoint_callback(folder: str | Path) -> ModelCheckpoint:
    """Writes `folder/last.ckpt` at the end of every training epoch, replacing the previous one.

    Not `save_last=True, save_top_k=0`: Lightning 2.6 writes last.ckpt only in a step where a top-k
    checkpoint was saved, so that saves nothing until the fit ends. Here the one "top-k" checkpoint of
    no monitor, named last, is the newest epoch's. It is saved after the module's on_train_epoch_end
    (Lightning runs checkpoint callbacks last), so an epoch's metrics are reported before its checkpoint
    exists; Lightning writes it through a temporary file, so a kill never leaves a truncated last.ckpt.
    """
    return ModelCheckpoint(
        dirpath=str(folder), filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1, save_last=False,
        every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False, auto_insert_metric_name=False,
    )


def last_checkpoint(folder: str | Path) -> Path | None:
    """`folder/last.ckpt` if a previous run of the same training left one (pass it as `ckpt_path`), else None."""
    path = Path(folder) / LAST
    return path if path.is_file() else None


def rng_state() -> dict[str, Any]:
    """This process's global random number generators (Python, NumPy, torch CPU and, if in use, CUDA), as
    tensors and plain values only: the checkpoint stays loadable with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
