"""kdexp's in-memory batched data path versus a torchvision-style per-sample pipeline.

The per-sample baseline is what `torchvision.datasets.FashionMNIST` + `transforms.Compose([RandomCrop(28,
padding=2), ToTensor(), Normalize()])` + `DataLoader(batch_size=128, shuffle=True)` does, minus PIL:
uint8 images, a `__getitem__` per sample that converts, normalizes and crops, and default collate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import interleaved


class PerSampleFashion(Dataset):
    """One sample at a time, as torchvision does."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, mean: float, std: float, crop: int = 0):
        self.images, self.labels, self.mean, self.std, self.crop = images_uint8, labels, mean, std, crop

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i].float().div(255)  # ToTensor
        if self.crop:  # RandomCrop(size, padding): pad with 0 before normalizing, then take a random window
            h, w = img.shape[-2:]
            padded = F.pad(img, (self.crop,) * 4)
            dy, dx = torch.randint(0, 2 * self.crop + 1, (2,)).tolist()
            img = padded[:, dy : dy + h, dx : dx + w]
        img = (img - self.mean) / self.std  # Normalize
        return img, int(self.labels[i])


def per_sample_loader(dm, augment: bool, workers: int = 0) -> DataLoader:
    x, y = dm.split_tensors("train")
    mean, std = dm.mean[0], dm.std[0]
    raw = (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)  # back to the files' uint8 pixels
    dataset = PerSampleFashion(raw, y, mean, std, dm.crop_padding if augment else 0)
    return DataLoader(dataset, batch_size=dm.batch_size, shuffle=True, num_workers=workers)


def drain(loader) -> int:
    n = 0
    for batch in loader:
        n += len(batch[1])
    return n


def train_epoch(loader, student) -> int:
    """One student epoch on the loader's batches (CE, Adam): how much the data path costs in training."""
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    n = 0
    for batch in loader:
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n


def measure_data_path(dm, dm_aug, student_factory, repeats: int, workers: tuple[int, ...] = (0, 2)) -> dict:
    """Samples/s of one pass over the train split (no model), and of one student epoch, per pipeline."""
    n = dm.num_train
    loaders = {
        "kdexp in-memory batched": lambda: dm.train_dataloader(),
        "kdexp in-memory batched + crop": lambda: dm_aug.train_dataloader(),
    }
    for w in workers:
        loaders[f"per-sample Dataset, workers={w}"] = lambda w=w: per_sample_loader(dm, False, w)
        loaders[f"per-sample Dataset + crop, workers={w}"] = lambda w=w: per_sample_loader(dm, True, w)
    iterate = interleaved({name: (lambda make=make: drain(make())) for name, make in loaders.items()}, repeats)
    train_names = ["kdexp in-memory batched", "per-sample Dataset, workers=0"]
    train = interleaved({name: (lambda make=loaders[name]: train_epoch(make(), student_factory()))
                         for name in train_names}, repeats)
    rows = {}
    for name in loaders:
        rows[name] = {"iterate_samples_per_s": n / iterate[name]["wall_median_s"],
                      "loader_type": type(loaders[name]()).__name__}
        if name in train:
            rows[name]["train_epoch_samples_per_s"] = n / train[name]["wall_median_s"]
    return {"num_train": n, "pipelines": rows, "raw": {"iterate": iterate, "train": train}}
