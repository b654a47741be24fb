"""Datasets: synthetic determinism and design, stratified subsets, npz validation (CIFAR: test_cifar.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnablate.data import DataError, make_synthetic, prepare_dataset, read_npz, stratified_subset


def test_synthetic_is_deterministic_and_cifar_shaped() -> None:
    a = make_synthetic(200, 50, seed=3)
    b = make_synthetic(200, 50, seed=3)
    c = make_synthetic(200, 50, seed=4)
    assert a.x_train.shape == (200, 32, 32, 3)
    assert a.x_train.dtype == np.uint8
    assert a.x_test.shape == (50, 32, 32, 3)
    assert a.num_classes == 10
    assert np.array_equal(a.x_train, b.x_train)
    assert np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_class_is_not_in_global_colour() -> None:
    """Nearest class-mean classification on per-image mean colour stays near chance."""
    dataset = make_synthetic(3000, 1000, seed=0)
    features = dataset.x_train.reshape(len(dataset.x_train), -1, 3).mean(axis=1)
    centroids = np.stack([features[dataset.y_train == k].mean(axis=0) for k in range(10)])
    test = dataset.x_test.reshape(len(dataset.x_test), -1, 3).mean(axis=1)
    predicted = np.argmin(((test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == dataset.y_test).mean() < 0.16


def test_synthetic_pattern_is_local_and_moves() -> None:
    """The same class appears at different positions: the pixel-wise class mean is nearly flat."""
    dataset = make_synthetic(2000, 10, contrast=0.6, seed=0)
    images = dataset.x_train.astype(float).mean(axis=3)
    class_mean = images[dataset.y_train == 0].mean(axis=0)
    assert class_mean.std() < 0.15 * images.std()


def test_stratified_subset_keeps_proportions() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    chosen = stratified_subset(labels, 50, seed=0)
    assert len(chosen) == 50
    assert len(set(chosen)) == 50
    assert (
        np.bincount(labels[chosen]).tolist() == [25, 12, 8, 5]
        or np.abs(np.bincount(labels[chosen]) - np.array([25, 12.5, 7.5, 5])).max() <= 1
    )
    assert np.array_equal(chosen, stratified_subset(labels, 50, seed=0))
    assert np.array_equal(stratified_subset(labels, None, 0), np.arange(200))


def test_prepare_applies_train_and_test_size_then_holds_out_a_stratified_validation_split() -> None:
    config = {
        "dataset": "synthetic",
        "seed": 0,
        "validation": 0.2,
        "train_size": 100,
        "test_size": 40,
        "synthetic": {
            "train_size": 300,
            "test_size": 80,
            "num_classes": 10,
            "pattern_size": 5,
            "contrast": 0.5,
            "pattern_copies": 1,
        },
    }
    dataset = prepare_dataset(config)
    assert len(dataset.y_train) == 80
    assert len(dataset.y_val) == 20
    assert len(dataset.y_test) == 40
    assert set(np.bincount(dataset.y_train)) == {8}
    assert set(np.bincount(dataset.y_val)) == {2}
    assert set(np.bincount(dataset.y_test)) == {4}
    train_rows = {row.tobytes() for row in dataset.x_train}
    assert not any(row.tobytes() in train_rows for row in dataset.x_val), "validation images left the training set"
    again = prepare_dataset({**config, "validation": 20})
    assert again.validation_digest == dataset.validation_digest, "a count and the equal fraction give one split"


def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused() -> None:
    from cnnablate.data import validation_count

    assert validation_count(0.1, 1800) == 180
    assert validation_count(50, 1800) == 50
    with pytest.raises(DataError, match=r"data\.validation"):
        validation_count(1800, 1800)


def _write_npz(path, **arrays) -> None:
    np.savez(path, **arrays)


def test_npz_roundtrip_and_validation(tmp_path) -> None:
    x = np.zeros((20, 8, 8, 1), np.uint8)
    y = np.arange(20) % 2
    good = tmp_path / "good.npz"
    _write_npz(good, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    dataset = read_npz(good)
    assert dataset.num_classes == 2
    assert dataset.x_train.shape == (20, 8, 8, 1)

    _write_npz(tmp_path / "missing.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        read_npz(tmp_path / "missing.npz")
    _write_npz(tmp_path / "float.npz", x_train=x.astype(float), y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match="x_train must be uint8"):
        read_npz(tmp_path / "float.npz")
    _write_npz(tmp_path / "labels.npz", x_train=x, y_train=y[:5], x_test=x, y_test=y)
    with pytest.raises(DataError, match="y_train must be integer labels of length 20"):
        read_npz(tmp_path / "labels.npz")
    _write_npz(
        tmp_path / "wide.npz",
        x_train=np.zeros((20, 8, 12, 1), np.uint8),
        y_train=y,
        x_test=np.zeros((10, 8, 12, 1), np.uint8),
        y_test=y[:10],
    )
    with pytest.raises(DataError, match="must be square"):
        read_npz(tmp_path / "wide.npz")
    with pytest.raises(DataError, match="does not exist"):
        read_npz(tmp_path / "nothing.npz")


DIGITS = {
    "canvas": 24,
    "scale": [10, 16],
    "clutter": 4,
    "fragment": 5,
    "noise": 0.1,
    "test_fraction": 0.35,
    "val_fraction": 0.1,
    "train_copies": 3,
    "val_copies": 3,
    "test_copies": 4,
}


def test_cluttered_digits_are_deterministic_balanced_and_hold_a_test_set_of_2000_images() -> None:
    from cnnablate.data import make_cluttered_digits

    a = make_cluttered_digits(DIGITS, seed=0)
    b = make_cluttered_digits(DIGITS, seed=0)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert a.x_train.dtype == np.uint8 and a.x_train.shape[1:] == (24, 24, 3)
    assert len(a.y_test) >= 2000, "one test image must weigh at most 0.05 points"
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (3 * 988, 3 * 180, 4 * 629)  # 1,797 sources
    for labels in (a.y_train, a.y_val, a.y_test):
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= 0.9 * counts.max(), counts  # stratified by class before compositing
    assert a.x_train.mean() < 80, "a dark canvas with one bright digit, not a bright blur"


def test_cluttered_digits_split_by_source_digit_before_compositing(monkeypatch) -> None:
    """Every source digit belongs to one split, and every image's clutter comes from its own split: paint each
    split's sources one grey level and no image holds another split's level."""
    import cnnablate.data as data

    labels = np.arange(300) % 10
    splits = data.source_splits(labels, DIGITS, seed=0)
    together = np.concatenate(list(splits.values()))
    assert len(together) == len(set(together)) == 300, "splits must be disjoint and cover every source"
    level = {"train": 0.2, "val": 0.6, "test": 1.0}
    sources = np.zeros((300, 8, 8), dtype=np.float32)
    for name, index in splits.items():
        sources[index, 2:6, 2:6] = level[name]
    monkeypatch.setattr(data, "_digit_sources", lambda: (sources, labels))
    dataset = data.make_cluttered_digits({**DIGITS, "noise": 0.0, "clutter": 8}, seed=0)
    for name, images in (("train", dataset.x_train), ("val", dataset.x_val), ("test", dataset.x_test)):
        allowed = {0, round(255 * level[name])}
        bright = images.max(axis=(1, 2, 3))
        assert set(np.unique(bright)) == {round(255 * level[name])}, f"{name} images show their own digit"
        # resizing blends a level with the black border only: nothing brighter than the split's own level
        assert images.max() in allowed, f"{name} images hold another split's digits"


def test_prepare_keeps_the_digits_validation_split_from_its_own_source_digits() -> None:
    config = {"dataset": "digits", "seed": 0, "validation": 0.1, "train_size": None, "test_size": None}
    dataset = prepare_dataset({**config, "digits": DIGITS})
    assert len(dataset.y_val) == 3 * 180  # the sources' split, not a fraction of the training composites
    assert len(dataset.y_train) == 3 * 988
