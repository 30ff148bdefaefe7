"""Offline datasets: Fashion-MNIST from Debian's idx files, and clear errors for missing/malformed folders."""

from __future__ import annotations

import gzip

import pytest
import torch

from dcspass import DataError
from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors, load_dataset

needs_fmnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)


@needs_fmnist
def test_fashion_mnist_tensors_range_shape_and_labels():
    x, y = fashion_mnist_tensors(train=False, limit=500)
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert set(y.tolist()) == set(range(10))


@needs_fmnist
def test_load_dataset_fashion_mnist_splits_match_tensors():
    train, test = load_dataset("fashion_mnist", train=True), load_dataset("fashion_mnist", train=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    x, y = fashion_mnist_tensors(train=False, limit=3)
    img, label = test[2]
    assert torch.equal(img, x[2]) and label == int(y[2])


def test_cifar_without_data_dir_names_the_layout():
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10")


def test_cifar_folder_without_the_pickles_names_the_layout(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataError, match="cifar-100-python/") as info:
        load_dataset("cifar100", tmp_path)
    assert "download" not in str(info.value)


def test_missing_folder_and_imagenet_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DataError, match=r"\{train,val\}/<wnid>"):
        load_dataset("imagenet", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="fashion_mnist"):
        load_dataset("mnist")


def test_fashion_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion_mnist", tmp_path, train=False)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 1568)
    assert len(load_dataset("fashion_mnist", tmp_path, train=False)) == 2
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="labels-idx1"):
        load_dataset("fashion_mnist", tmp_path, train=False)
