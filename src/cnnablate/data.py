"""Datasets: CIFAR download and integrity check, the built-in cluttered digits (the demo's) and synthetic dataset,
bring-your-own npz.

Every dataset is prepared once (by one workflow rule) into one canonical ``.npz`` file: ``x_train``, ``x_val``
and ``x_test`` uint8 N x H x W x C, ``y_train``, ``y_val`` and ``y_test`` int64, ``classes``. The validation
split is carved from the training set there, once, so every variant and seed of a study sees the same one;
anything tuned (learning rates, early stopping) reads it, and the test split only gives final numbers.
Training jobs read that file only, so they never import torchvision and never race on a download.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CIFAR_ARCHIVES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
    },
}


class DataError(RuntimeError):
    """A dataset that cannot be fetched or read; the message says what to do."""


@dataclass
class ArrayDataset:
    """Images as uint8 N x H x W x C arrays with integer labels, as stored in the canonical npz."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def validation_digest(self) -> str | None:
        """A short hash of the validation split: equal digests mean every run was tuned on the same images."""
        if self.x_val is None or self.y_val is None:
            return None
        digest = hashlib.sha256(np.ascontiguousarray(self.x_val).tobytes())
        digest.update(np.ascontiguousarray(self.y_val).tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write atomically, so an interrupted job never leaves a half-written dataset behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        splits = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }
        arrays = {
            f"{axis}_{split}": values
            for split, pair in splits.items()
            if pair[0] is not None
            for axis, values in zip("xy", pair, strict=True)
        }
        np.savez(tmp, **arrays, classes=np.array(self.classes))
        tmp.replace(path)


def archive_path(dataset: str, root: str | Path) -> Path:
    """Where the downloaded archive of a CIFAR dataset lives."""
    return Path(root) / CIFAR_ARCHIVES[dataset]["filename"]


def download_cifar(dataset: str, root: str | Path) -> Path:
    """Download the CIFAR archive once and verify its MD5; offline, say where to put it by hand.

    The download lands under a temporary name and takes the archive's name only once its MD5 matches, so a
    corrupt or truncated download is deleted and never read.
    """
    from torchvision.datasets.utils import calculate_md5, check_integrity, download_url

    info = CIFAR_ARCHIVES[dataset]
    target = archive_path(dataset, root)
    if check_integrity(str(target), info["md5"]):
        log.info("%s present and verified (md5 %s)", target, info["md5"])
        return target
    if target.exists():
        raise DataError(f"{target} exists but its MD5 is not {info['md5']}: delete it and rerun.")
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)  # left by a killed download; download_url would keep it
    try:
        download_url(info["url"], str(target.parent), partial.name)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download {dataset} from {info['url']} ({exc}). Without internet, put the archive "
            f"{info['filename']} (md5 {info['md5']}) at {target} and rerun."
        ) from exc
    actual = calculate_md5(str(partial))
    if actual != info["md5"]:
        partial.unlink()
        raise DataError(
            f"the download of {dataset} from {info['url']} has MD5 {actual}, not {info['md5']}: it was deleted "
            f"unread. Rerun to download again, or put a verified {info['filename']} at {target}."
        )
    partial.replace(target)
    return target


def read_cifar(dataset: str, root: str | Path) -> ArrayDataset:
    """Read the pickled batches of a verified CIFAR archive straight from the ``tar.gz`` (nothing is extracted).

    Only an archive whose MD5 matches the published one is unpickled. The batches are Python 2 pickles: loaded
    with ``encoding="bytes"``, their keys and class names are bytes. Images are stored channel-planar (N x 3072:
    all red, then green, then blue) and returned N x H x W x C.
    """
    import pickle
    import tarfile

    from torchvision.datasets.utils import check_integrity

    info = CIFAR_ARCHIVES[dataset]
    target = archive_path(dataset, root)
    if not check_integrity(str(target), info["md5"]):
        raise DataError(
            f"{target} is missing or its MD5 is not {info['md5']}: run the download_data rule, or put the "
            f"verified archive {info['filename']} there."
        )
    if dataset == "cifar10":
        folder, train_parts, test_part = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
        meta_part, labels_key, names_key = "batches.meta", b"labels", b"label_names"
    else:
        folder, train_parts, test_part = "cifar-100-python", ["train"], "test"
        meta_part, labels_key, names_key = "meta", b"fine_labels", b"fine_label_names"
    wanted = {f"{folder}/{part}" for part in [*train_parts, test_part, meta_part]}
    parts: dict[str, dict[bytes, Any]] = {}
    try:
        with tarfile.open(target, "r:gz") as archive:
            for member in archive:
                if member.name in wanted:
                    with archive.extractfile(member) as handle:
                        parts[member.name.rsplit("/", 1)[1]] = pickle.load(handle, encoding="bytes")
    except (OSError, tarfile.TarError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"could not read {dataset} from {target}: {exc}") from exc
    missing = sorted(f"{folder}/{part}" for part in [*train_parts, test_part, meta_part] if part not in parts)
    if missing:
        raise DataError(f"{target} lacks {missing}: not a {dataset} archive")

    def images_and_labels(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.concatenate([np.asarray(parts[name][b"data"], dtype=np.uint8) for name in names])
        labels = np.concatenate([np.asarray(parts[name][labels_key], dtype=np.int64) for name in names])
        return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

    x_train, y_train = images_and_labels(train_parts)
    x_test, y_test = images_and_labels([test_part])
    classes = [name.decode() for name in parts[meta_part][names_key]]
    return ArrayDataset(x_train, y_train, x_test, y_test, classes)


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, read from the array headers only (nothing is loaded)."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as handle:
                    major, _ = np.lib.format.read_magic(handle)
                    header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = header(handle)
                shapes[member.removesuffix(".npy")] = (shape, dtype)
    return shapes


def check_npz_layout(path: str | Path) -> None:
    """Check a bring-your-own npz's arrays and image layout without loading it (the config check calls this
    before any job starts): the four arrays present, images uint8 N x H x W x C, square, labels per image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist (an npz with {', '.join(NPZ_ARRAYS)})")
    try:
        shapes = npz_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"data.path: {path} is not a readable npz ({error})") from error
    missing = sorted(set(NPZ_ARRAYS) - set(shapes))
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; need {', '.join(NPZ_ARRAYS)}")
    for split in ("train", "test"):
        (shape, dtype), (labels, label_dtype) = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if dtype != np.uint8 or len(shape) != 4:
            raise DataError(f"{path}: x_{split} must be uint8 N x H x W x C, got {dtype} with shape {shape}")
        if shape[1] in (1, 3, 4) and shape[2] == shape[3] and shape[3] not in (1, 3, 4):
            raise DataError(
                f"{path}: x_{split} is channels-first (N x C x H x W = {shape}); store N x H x W x C, "
                "e.g. x.transpose(0, 2, 3, 1)"
            )
        if shape[1] != shape[2]:
            raise DataError(f"{path}: x_{split} images must be square (H == W), got N x H x W x C = {shape}")
        if len(labels) != 1 or labels[0] != shape[0] or not np.issubdtype(label_dtype, np.integer):
            raise DataError(
                f"{path}: y_{split} must be integer labels of length {shape[0]}, got {label_dtype} {labels}"
            )
    if shapes["x_train"][0][1:] != shapes["x_test"][0][1:]:
        raise DataError(f"{path}: x_train and x_test image shapes differ")


def read_npz(path: str | Path) -> ArrayDataset:
    """Read a bring-your-own npz (layout checked by :func:`check_npz_layout`) and check its labels."""
    path = Path(path)
    check_npz_layout(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in NPZ_ARRAYS}
        classes = [str(c) for c in npz["classes"]] if "classes" in npz.files else None
    for split in ("train", "test"):
        if arrays[f"y_{split}"].min() < 0:
            raise DataError(f"{path}: y_{split} has negative labels")
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    classes = classes or [str(i) for i in range(num_classes)]
    if len(classes) < num_classes:
        raise DataError(f"{path}: classes lists {len(classes)} names but labels go up to {num_classes - 1}")
    return ArrayDataset(
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
        classes,
    )


def synthetic_patterns(num_classes: int, size: int, seed: int) -> np.ndarray:
    """Zero-mean +-1 class patterns: no class differs from another in mean brightness or colour."""
    rng = np.random.default_rng([seed, 0xC1A55])
    patterns = rng.choice([-1.0, 1.0], size=(num_classes, size, size))
    patterns -= patterns.mean(axis=(1, 2), keepdims=True)
    return patterns / np.abs(patterns).max(axis=(1, 2), keepdims=True)


def _synthetic_split(
    n: int, patterns: np.ndarray, contrast: float, rng: np.random.Generator, copies: int = 1, image_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Cluttered backgrounds with ``copies`` stamps of the class pattern at random positions and two random
    distractors."""
    import torch
    import torch.nn.functional as F

    num_classes, p, _ = patterns.shape
    labels = rng.permutation(np.arange(n) % num_classes)  # balanced, like CIFAR
    coarse = torch.from_numpy(rng.normal(0.0, 0.12, size=(n, 3, 6, 6)))
    background = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False).numpy()
    background += rng.uniform(0.25, 0.75, size=(n, 3, 1, 1))  # per-image colour: no global cue
    background += rng.normal(0.0, 0.04, size=background.shape)
    gains = rng.uniform(0.6, 1.0, size=(n, 3, 1, 1)) * contrast
    distractors = rng.choice([-1.0, 1.0], size=(n, 2, p, p))
    stamps = np.concatenate([np.repeat(patterns[labels][:, None], copies, axis=1), distractors], axis=1)
    positions = rng.integers(0, image_size - p + 1, size=(n, stamps.shape[1], 2))
    rows = np.arange(n)
    for k in range(stamps.shape[1]):
        for dy in range(p):
            for dx in range(p):
                ys, xs = positions[:, k, 0] + dy, positions[:, k, 1] + dx
                background[rows, :, ys, xs] += gains[:, :, 0, 0] * stamps[:, k, dy, dx][:, None]
    images = np.clip(np.rint(background * 255.0), 0, 255).astype(np.uint8)
    return images.transpose(0, 2, 3, 1).copy(), labels.astype(np.int64)


def make_synthetic(
    train_size: int,
    test_size: int,
    num_classes: int = 10,
    pattern_size: int = 5,
    contrast: float = 0.35,
    seed: int = 0,
    copies: int = 1,
) -> ArrayDataset:
    """CIFAR-shaped images (32x32 RGB) whose class is a small local pattern at a random position.

    Only a detector of local structure that works anywhere in the image solves it: locality and weight
    sharing pay off, and no global colour or brightness statistic gives the class away.
    """
    patterns = synthetic_patterns(num_classes, pattern_size, seed)
    x_train, y_train = _synthetic_split(train_size, patterns, contrast, np.random.default_rng([seed, 1]), copies)
    x_test, y_test = _synthetic_split(test_size, patterns, contrast, np.random.default_rng([seed, 2]), copies)
    return ArrayDataset(x_train, y_train, x_test, y_test, [f"pattern{i}" for i in range(num_classes)])


def _digit_sources() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled handwritten digits (8x8, grey levels 0-16) as float images in [0, 1]."""
    from sklearn.datasets import load_digits  # bundled in the wheel: nothing is downloaded

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _resized(sources: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Each source image bilinearly resized to its own side ``sizes[i]`` (one interpolation per distinct size)."""
    import torch
    import torch.nn.functional as F

    out: list[np.ndarray] = [np.empty(0)] * len(sources)
    for size in np.unique(sizes):
        index = np.flatnonzero(sizes == size)
        batch = torch.from_numpy(sources[index][:, None])
        large = F.interpolate(batch, size=(int(size), int(size)), mode="bilinear", align_corners=False)
        for i, image in zip(index, large[:, 0].numpy(), strict=True):
            out[i] = image
    return out


def _cluttered_split(
    sources: np.ndarray, labels: np.ndarray, copies: int, cfg: Mapping[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` composites of every source digit: the digit at a random scale and position on a noisy canvas,
    with ``cfg['clutter']`` fragments cut from other digits of the same split, combined by maximum."""
    canvas, (low, high), fragment = cfg["canvas"], cfg["scale"], cfg["fragment"]
    order = rng.permutation(np.repeat(np.arange(len(sources)), copies))
    n, clutter = len(order), cfg["clutter"]
    digits = _resized(sources[order], rng.integers(low, high + 1, size=n))
    pieces_from = rng.integers(0, len(sources), size=(n, clutter))
    pieces = _resized(sources[pieces_from.ravel()], rng.integers(low, high + 1, size=n * clutter))
    images = np.abs(rng.normal(0.0, cfg["noise"], size=(n, canvas, canvas))).astype(np.float32)
    for i in range(n):
        for k in range(clutter):
            piece = pieces[i * clutter + k]
            y0, x0 = rng.integers(0, piece.shape[0] - fragment + 1, size=2)
            y, x = rng.integers(0, canvas - fragment + 1, size=2)
            window = images[i, y : y + fragment, x : x + fragment]
            np.maximum(window, piece[y0 : y0 + fragment, x0 : x0 + fragment], out=window)
        digit = digits[i]
        y, x = rng.integers(0, canvas - digit.shape[0] + 1, size=2)
        window = images[i, y : y + digit.shape[0], x : x + digit.shape[1]]
        np.maximum(window, digit, out=window)
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=3), labels[order]


def source_splits(labels: np.ndarray, cfg: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices of the source digits that make the training, validation and test composites, each
    stratified by class (``test_fraction`` and ``val_fraction`` of all sources; training takes the rest)."""
    test = stratified_subset(labels, round(cfg["test_fraction"] * len(labels)), seed + 11)
    rest = np.setdiff1d(np.arange(len(labels)), test)
    val = rest[stratified_subset(labels[rest], round(cfg["val_fraction"] * len(labels)), seed + 12)]
    return {"train": np.setdiff1d(rest, val), "val": val, "test": test}


def make_cluttered_digits(cfg: Mapping[str, Any], seed: int = 0) -> ArrayDataset:
    """Cluttered translated digits from scikit-learn's bundled handwritten digits, split by source digit.

    The "cluttered translated MNIST" task of Mnih et al. 2014 and Jaderberg et al. 2015 on real handwriting:
    each image holds one digit at a random position and scale among fragments of other digits. The source
    digits are split (stratified by class) into training, validation and test sources *before* compositing, and
    every image's clutter is cut from its own split's digits, so no test digit appears in a training or
    validation image, not even as a fragment. Validation is therefore returned ready-made (``data.validation``
    is not read). Grey levels are copied into three channels, the CIFAR shape the models expect.
    """
    sources, labels = _digit_sources()
    splits = {}
    for offset, (name, index) in enumerate(source_splits(labels, cfg, seed).items()):
        rng = np.random.default_rng([seed, 0xD161, offset])
        splits[name] = _cluttered_split(sources[index], labels[index], cfg[f"{name}_copies"], cfg, rng)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    return ArrayDataset(x_train, y_train, x_test, y_test, [str(d) for d in range(10)], x_val, y_val)


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of ``size`` items whose class proportions match ``labels`` (largest remainders), sorted."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0x5B5E7])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: size - take.sum()]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def validation_count(validation: float | int, train_images: int) -> int:
    """The number of held-out images ``data.validation`` asks for: a fraction (0 < x < 1) or a count."""
    count = round(validation * train_images) if isinstance(validation, float) and validation < 1 else int(validation)
    if not 0 < count < train_images:
        raise DataError(
            f"data.validation: {validation!r} leaves {count} of {train_images} training images for validation; "
            "allowed: a fraction 0 < x < 1 or a count between 1 and the training set size"
        )
    return count


def split_validation(dataset: ArrayDataset, validation: float | int, seed: int) -> ArrayDataset:
    """Hold out a stratified, seeded part of the training set as the validation split."""
    val_idx = stratified_subset(dataset.y_train, validation_count(validation, len(dataset.y_train)), seed)
    train_mask = np.ones(len(dataset.y_train), dtype=bool)
    train_mask[val_idx] = False
    return ArrayDataset(
        dataset.x_train[train_mask],
        dataset.y_train[train_mask],
        dataset.x_test,
        dataset.y_test,
        dataset.classes,
        dataset.x_train[val_idx],
        dataset.y_train[val_idx],
    )


def prepare_dataset(data_cfg: dict[str, Any]) -> ArrayDataset:
    """Build the dataset a study config asks for: stratified subsets, then the validation split."""
    kind = data_cfg["dataset"]
    if kind == "synthetic":
        syn = data_cfg["synthetic"]
        full = make_synthetic(
            syn["train_size"],
            syn["test_size"],
            syn["num_classes"],
            syn["pattern_size"],
            syn["contrast"],
            data_cfg["seed"],
            syn["pattern_copies"],
        )
    elif kind == "digits":
        full = make_cluttered_digits(data_cfg["digits"], data_cfg["seed"])
    elif kind == "npz":
        full = read_npz(data_cfg["path"])
    else:
        full = read_cifar(kind, data_cfg["root"])
    train_idx = stratified_subset(full.y_train, data_cfg.get("train_size"), data_cfg["seed"])
    test_idx = stratified_subset(full.y_test, data_cfg.get("test_size"), data_cfg["seed"] + 1)
    subset = ArrayDataset(
        full.x_train[train_idx],
        full.y_train[train_idx],
        full.x_test[test_idx],
        full.y_test[test_idx],
        full.classes,
        full.x_val,
        full.y_val,
    )
    if subset.x_val is not None:  # split by source before compositing (digits): already held out
        return subset
    return split_validation(subset, data_cfg["validation"], data_cfg["seed"] + 2)


def load_prepared(path: str | Path, test: bool = True) -> ArrayDataset:
    """Read a dataset written by ``ArrayDataset.save``; ``test=False`` never reads the test split (tuning)."""
    with np.load(path, allow_pickle=False) as npz:
        if "x_val" not in npz.files:
            raise DataError(f"{path} has no validation split (prepared by an older version): delete it and rerun")
        return ArrayDataset(
            npz["x_train"],
            npz["y_train"],
            npz["x_test"] if test else None,
            npz["y_test"] if test else None,
            [str(c) for c in npz["classes"]],
            npz["x_val"],
            npz["y_val"],
        )
