"""CIFAR-10 and CIFAR-100 through the project's loader, from archives built in the official layout.

The published archives hold Python 2 pickles (dicts whose keys and class names are byte strings, images
N x 3072 uint8 stored channel-planar). The archives here are written the same way, small, and the checksum the
loader expects is pointed at them; downloads are replaced by a function that writes a file where torchvision's
``download_url`` would.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnnablate import data
from cnnablate.data import ArrayDataset, DataError, download_cifar, prepare_dataset, read_cifar, split_validation

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [f"class{i:02d}" for i in range(100)]
IMAGES_PER_CIFAR10_BATCH = 4


class Python2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 byte string (BINSTRING), as the published CIFAR batches are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_byte_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_byte_string
    dispatch[bytes] = save_byte_string


def python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def planar(images: np.ndarray) -> np.ndarray:
    """N x H x W x C images as CIFAR stores them: N x 3072, the red plane, then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)


class BuiltArchive:
    """A small CIFAR archive in the official layout and the arrays it holds (images N x H x W x C)."""

    def __init__(self, dataset: str, directory: Path, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.classes = CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_CLASSES
        parts = 5 if dataset == "cifar10" else 1
        per_part = IMAGES_PER_CIFAR10_BATCH if dataset == "cifar10" else 30
        self.x_train = rng.integers(0, 256, size=(parts * per_part, 32, 32, 3), dtype=np.uint8)
        self.y_train = rng.integers(0, len(self.classes), size=parts * per_part).astype(np.int64)
        self.x_test = rng.integers(0, 256, size=(per_part + 2, 32, 32, 3), dtype=np.uint8)
        self.y_test = rng.integers(0, len(self.classes), size=per_part + 2).astype(np.int64)
        names = [name.encode() for name in self.classes]
        if dataset == "cifar10":
            folder, labels = "cifar-10-batches-py", "labels"
            members = {
                **{
                    f"data_batch_{i + 1}": self._batch(slice(i * per_part, (i + 1) * per_part), labels)
                    for i in range(parts)
                },
                "test_batch": {"data": planar(self.x_test), labels: self.y_test.tolist()},
                "batches.meta": {"label_names": names, "num_cases_per_batch": per_part, "num_vis": 3072},
            }
        else:
            folder, labels = "cifar-100-python", "fine_labels"
            members = {
                "train": {**self._batch(slice(None), labels), "coarse_labels": (self.y_train // 5).tolist()},
                "test": {
                    "data": planar(self.x_test),
                    labels: self.y_test.tolist(),
                    "coarse_labels": (self.y_test // 5).tolist(),
                },
                "meta": {"fine_label_names": names, "coarse_label_names": [b"coarse"] * 20},
            }
        self.path = directory / data.CIFAR_ARCHIVES[dataset]["filename"]
        directory.mkdir(parents=True, exist_ok=True)
        with tarfile.open(self.path, "w:gz") as archive:
            for name, content in members.items():
                raw = python2_pickle(content)
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(raw)
                archive.addfile(info, io.BytesIO(raw))
        self.md5 = hashlib.md5(self.path.read_bytes()).hexdigest()

    def _batch(self, rows: slice, labels_key: str) -> dict:
        return {
            "batch_label": "training batch",
            "data": planar(self.x_train[rows]),
            labels_key: self.y_train[rows].tolist(),
            "filenames": [f"image_{i}.png" for i in range(len(self.y_train[rows]))],
        }


def fake_download(source: bytes | None):
    """Stands in for torchvision's download_url: creates the folder, keeps a file already there (as it does without
    an md5), else writes ``source``; ``None`` fails like a machine without internet."""

    def download_url(url: str, root: str, filename: str | None = None, md5: str | None = None) -> None:
        path = Path(root) / (filename or os.path.basename(url))
        if md5 is not None:
            raise AssertionError("the download must be verified by cnnablate, after it lands under a temporary name")
        if source is None:
            raise OSError("Temporary failure in name resolution")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(source)

    return download_url


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_an_official_layout_archive_reads_exact_pixels_labels_and_classes(tmp_path, monkeypatch, dataset) -> None:
    built = BuiltArchive(dataset, tmp_path / "built")
    root = tmp_path / "data"
    monkeypatch.setitem(data.CIFAR_ARCHIVES[dataset], "md5", built.md5)
    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download(built.path.read_bytes()))
    root.mkdir()
    stale = root / (built.path.name + ".part")
    stale.write_bytes(b"left by a killed download")

    assert download_cifar(dataset, root) == root / built.path.name
    assert sorted(p.name for p in root.iterdir()) == [built.path.name]
    loaded = read_cifar(dataset, root)

    assert loaded.x_train.shape == (len(built.y_train), 32, 32, 3)
    assert loaded.x_train.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x_train, built.x_train)
    np.testing.assert_array_equal(loaded.x_test, built.x_test)
    np.testing.assert_array_equal(loaded.y_train, built.y_train)
    np.testing.assert_array_equal(loaded.y_test, built.y_test)
    assert loaded.y_train.dtype == np.int64
    assert loaded.classes == built.classes
    # channel-planar to H x W x C, spelled out: pixel (row 1, column 2)'s green value sits at 1024 + 32 + 2
    stored = planar(built.x_train)[0]
    assert loaded.x_train[0, 1, 2].tolist() == [stored[32 + 2], stored[1024 + 32 + 2], stored[2048 + 32 + 2]]

    prepared = prepare_dataset({"dataset": dataset, "root": str(root), "seed": 0, "validation": 0.1})
    expected = split_validation(
        ArrayDataset(built.x_train, built.y_train, built.x_test, built.y_test, built.classes), 0.1, seed=2
    )
    np.testing.assert_array_equal(prepared.x_train, expected.x_train)
    np.testing.assert_array_equal(prepared.x_val, expected.x_val)
    np.testing.assert_array_equal(prepared.y_val, expected.y_val)
    assert len(prepared.y_val) == round(0.1 * len(built.y_train))
    np.testing.assert_array_equal(prepared.y_test, built.y_test)
    assert prepared.classes == built.classes


def test_a_download_with_the_wrong_checksum_is_refused_and_deleted_unread(tmp_path, monkeypatch) -> None:
    expected = BuiltArchive("cifar10", tmp_path / "expected", seed=0)
    served = BuiltArchive("cifar10", tmp_path / "served", seed=1)  # a readable archive, just not the published one
    root = tmp_path / "data"
    monkeypatch.setitem(data.CIFAR_ARCHIVES["cifar10"], "md5", expected.md5)
    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download(served.path.read_bytes()))

    with pytest.raises(DataError) as error:
        download_cifar("cifar10", root)
    message = str(error.value)
    assert f"has MD5 {served.md5}, not {expected.md5}" in message
    assert "deleted" in message
    assert "cifar-10-python.tar.gz" in message
    assert str(root) in message
    assert list(root.iterdir()) == []

    def never(*args, **kwargs):
        raise AssertionError("an unverified archive was opened")

    monkeypatch.setattr(tarfile, "open", never)
    with pytest.raises(DataError, match="missing or its MD5 is not"):
        prepare_dataset({"dataset": "cifar10", "root": str(root), "seed": 0, "validation": 0.1})


def test_an_archive_that_does_not_match_the_checksum_is_never_opened(tmp_path, monkeypatch) -> None:
    built = BuiltArchive("cifar100", tmp_path)  # the published MD5 stays in place: this archive does not match it

    def never(*args, **kwargs):
        raise AssertionError("an unverified archive was opened")

    monkeypatch.setattr(tarfile, "open", never)
    with pytest.raises(DataError, match=f"{built.path} is missing or its MD5 is not eb9058c3a382ffc7106e4002c42a8d85"):
        read_cifar("cifar100", tmp_path)
    with pytest.raises(DataError, match="exists but its MD5 is not eb9058c3a382ffc7106e4002c42a8d85: delete it"):
        download_cifar("cifar100", tmp_path)
    assert built.path.read_bytes()  # a file the user put there is reported, not deleted


def test_cifar_offline_says_where_to_put_the_archive(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download(None))
    with pytest.raises(DataError) as error:
        download_cifar("cifar10", tmp_path)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message
    assert str(tmp_path) in message
    assert "c58f30108f718f92721af3b95e74349a" in message
    assert list(tmp_path.iterdir()) == []


def test_an_archive_without_a_batch_is_named(tmp_path, monkeypatch) -> None:
    built = BuiltArchive("cifar10", tmp_path / "built")
    with tarfile.open(built.path) as full, tarfile.open(tmp_path / built.path.name, "w:gz") as partial:
        for member in full:
            if not member.name.endswith("data_batch_3"):
                partial.addfile(member, full.extractfile(member))
    monkeypatch.setitem(
        data.CIFAR_ARCHIVES["cifar10"], "md5", hashlib.md5((tmp_path / built.path.name).read_bytes()).hexdigest()
    )
    with pytest.raises(DataError, match=r"lacks \['cifar-10-batches-py/data_batch_3'\]"):
        read_cifar("cifar10", tmp_path)
