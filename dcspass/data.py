"""Offline datasets: CIFAR-10/100, ImageNet and Fashion-MNIST, never downloaded.

Every loader returns pixels in [0, 1] (attack budgets such as eps = 8/255 are on that scale);
normalisation, if a model wants it, is a layer inside the model. A missing or malformed folder raises
``DataError`` naming the layout that was expected, before any training starts.

Layouts under ``data_dir``:
- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the python
  pickle release); ``data_dir`` may be that folder itself or its parent.
- ``cifar100``: ``cifar-100-python/{train, test, meta}``, likewise.
- ``imagenet``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (torchvision ImageFolder).
- ``fashion_mnist``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; defaults to
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from .errors import DataError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "DatasetInfo",
    "FashionMNISTIdx",
    "dataset_info",
    "default_transform",
    "fashion_mnist_tensors",
    "load_dataset",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, channels, image side; and its folder layout."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    layout: str


DATASETS = {
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, "DATA_DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"
    ),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, "DATA_DIR/cifar-100-python/{train,test,meta}"),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, "DATA_DIR/{train,val}/<wnid>/<image>.JPEG"),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        10,
        1,
        28,
        "DATA_DIR/{train,t10k}-images-idx3-ubyte.gz and {train,t10k}-labels-idx1-ubyte.gz "
        f"(Debian's dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Classes, channels and image side of a named dataset; ``DataError`` for an unknown name."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzipped idx file (big-endian header: magic, dims; then uint8 data)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; expected a gzipped idx file") from exc
    header = np.frombuffer(raw[:4], dtype=">u4")
    if header.size != 1 or int(header[0]) != magic:
        raise DataError(f"{path} is not an idx file with magic {magic:#x}; re-install the data set")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(np.int64)
    data = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {tuple(dims)}, found {data.size} bytes of data")
    return data.reshape(tuple(dims))


class FashionMNISTIdx(Dataset):
    """Fashion-MNIST from the idx .gz files (Debian layout): ``(x [1, 28, 28] in [0, 1], label)``.

    The whole split is decoded once into a uint8 tensor; ``transform`` (optional) maps the float image.
    """

    def __init__(self, root: str | Path | None = None, train: bool = True, transform: Callable | None = None):
        root = Path(root) if root is not None else FASHION_MNIST_DIR
        prefix = "train" if train else "t10k"
        images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
        missing = [p.name for p in (images, labels) if not p.is_file()]
        if missing:
            raise DataError(
                f"Fashion-MNIST: {missing} not found in {root}; expected {DATASETS['fashion_mnist'].layout}. "
                "Install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"
            )
        self.data = torch.from_numpy(_read_idx(images, 0x803).copy())
        self.targets = torch.from_numpy(_read_idx(labels, 0x801).astype(np.int64))
        if self.data.shape[0] != self.targets.shape[0]:
            raise DataError(
                f"Fashion-MNIST in {root}: {self.data.shape[0]} images but {self.targets.shape[0]} labels"
            )
        self.transform = transform

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.data[index].unsqueeze(0).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])


def default_transform(name: str, train: bool) -> Callable | None:
    """The paper's augmentation: random crop (pad 4) + flip on CIFAR; random-resized crop on ImageNet."""
    if name in ("cifar10", "cifar100"):
        if train:
            return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
        return T.ToTensor()
    if name == "imagenet":
        if train:
            return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    return None


def _cifar_root(data_dir: Path, folder: str) -> Path:
    """Accept either the parent of ``folder`` or ``folder`` itself."""
    return data_dir.parent if data_dir.name == folder else data_dir


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    train: bool = True,
    transform: Callable | str | None = "default",
) -> Dataset:
    """A torchvision-style dataset of ``(image [C, H, W] in [0, 1], label)``, read offline only.

    Args:
        name: ``cifar10``, ``cifar100``, ``imagenet`` or ``fashion_mnist``.
        data_dir: the data folder (see the module docstring for each layout); required except for
            Fashion-MNIST, which defaults to Debian's folder.
        train: the training split (else the test / validation split).
        transform: ``"default"`` for the paper's augmentation (``default_transform``), None for plain
            tensors, or any callable on the image.

    Raises:
        DataError: unknown name, missing ``data_dir``, or a folder without the expected layout.
    """
    info = dataset_info(name)
    if transform == "default":
        transform = default_transform(name, train)
    if name == "fashion_mnist":
        return FashionMNISTIdx(data_dir, train=train, transform=transform)
    if data_dir is None:
        raise DataError(f"{name} needs --data-dir (nothing is downloaded); expected layout: {info.layout}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"{name}: data folder {data_dir} does not exist; expected layout: {info.layout}")
    if name in ("cifar10", "cifar100"):
        cls, folder = (
            (datasets.CIFAR10, "cifar-10-batches-py")
            if name == "cifar10"
            else (datasets.CIFAR100, "cifar-100-python")
        )
        try:
            return cls(str(_cifar_root(data_dir, folder)), train=train, transform=transform, download=False)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            # torchvision's own message suggests download=True; we never download, so name the layout.
            raise DataError(
                f"{name}: {data_dir} does not hold the python-pickle release (missing or corrupt files); "
                f"expected layout: {info.layout}"
            ) from exc
    split = data_dir / ("train" if train else "val")
    if not split.is_dir():
        raise DataError(f"imagenet: {split} does not exist; expected layout: {info.layout}")
    try:
        return datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(
            f"imagenet: {split} has no class folders with images ({exc}); expected: {info.layout}"
        ) from exc


def fashion_mnist_tensors(
    train: bool = True, limit: int | None = None, data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as tensors for small fast runs: ``(x float32 [N, 1, 28, 28] in [0, 1], y int64 [N])``.

    ``limit`` keeps the first N examples (the files are not sorted by class, so a prefix is balanced
    enough for smoke runs).
    """
    ds = FashionMNISTIdx(data_dir, train=train)
    data, targets = ds.data, ds.targets
    if limit is not None:
        data, targets = data[:limit], targets[:limit]
    return data.unsqueeze(1).float().div_(255.0), targets.clone()
