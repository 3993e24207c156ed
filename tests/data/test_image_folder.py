"""data=image_folder: one sub-folder per class, PNG/JPEG through Pillow, resized, split like every data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdexp.data import DataFormatError, DataNotFoundError, create_datamodule
from tests.conftest import compose_train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def write_images(folder, per_class: int, size=(20, 14), suffix=".png", seed=0):
    """Per class: noisy images of the class colour, alternately PNG and JPEG when suffix is None."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            ext = suffix or (".png", ".jpg", ".JPEG")[i % 3]
            Image.fromarray(pixels).save(folder / name / f"img{i}{ext}")


def test_class_folders_resized_split_and_normalized(tmp_path):
    write_images(tmp_path, per_class=10, suffix=None)
    (tmp_path / "red" / "notes.txt").write_text("not an image, ignored")
    dm = create_datamodule("image_folder", root=str(tmp_path), image_size=8, in_channels=3, val_fraction=0.25)
    assert dm.class_names == ("blue", "green", "red") and dm.num_classes == 3  # known before any decoding
    sizes = {s: len(dm.split_tensors(s)[1]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 30 and sizes["test"] == 6  # 20% of each class of 10
    assert sizes["val"] == 6  # 25% of the 24 train images
    x, y = dm.split_tensors("test")
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=3).tolist() == [2, 2, 2]  # stratified
    x_train, _ = dm.split_tensors("train")  # normalized with the train images' own per-channel statistics
    assert x_train.mean((0, 2, 3)).abs().max() < 0.35
    red, blue = x[y == 2][:, 0].mean(), x[y == 0][:, 0].mean()
    assert red > blue + 1  # the red channel separates the classes after resizing and normalizing
    again = create_datamodule("image_folder", root=str(tmp_path), image_size=8, in_channels=3, val_fraction=0.25)
    assert again.fingerprint() == dm.fingerprint()
    assert torch.equal(again.split_tensors("test")[0], x)


def test_train_and_test_folders_and_grey(tmp_path):
    write_images(tmp_path / "train", per_class=4)
    write_images(tmp_path / "test", per_class=2, suffix=".jpg", seed=1)
    dm = create_datamodule("image_folder", root=str(tmp_path), image_size=6, in_channels=1)
    assert dm.input_shape == (1, 6, 6)
    assert len(dm.split_tensors("test")[1]) == 6
    assert len(dm.split_tensors("train")[1]) + len(dm.split_tensors("val")[1]) == 12


def test_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ValueError, match="data.root is required for data=image_folder"):
        create_datamodule("image_folder")
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        create_datamodule("image_folder", root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"found 0 class folder\(s\).*at least 2"):
        create_datamodule("image_folder", root=str(tmp_path / "empty")).setup()
    write_images(tmp_path / "data", per_class=2)
    (tmp_path / "data" / "yellow").mkdir()
    with pytest.raises(DataNotFoundError, match=r"class folder '.*yellow' has no images \(.png, .jpg, .jpeg\)"):
        create_datamodule("image_folder", root=str(tmp_path / "data")).setup()
    (tmp_path / "data" / "yellow" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match=r"cannot read image .*yellow/broken.png"):
        create_datamodule("image_folder", root=str(tmp_path / "data")).setup()
    with pytest.raises(ValueError, match="data.in_channels must be 1 .grey. or 3 .RGB., got 2"):
        create_datamodule("image_folder", root=str(tmp_path / "data"), in_channels=2)


def test_config_group_composes():
    cfg = compose_train(["data=image_folder", "data.root=/somewhere"])
    assert cfg.data.name == "image_folder" and cfg.data.image_size == 32 and cfg.data.root == "/somewhere"
