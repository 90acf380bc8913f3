import time

import numpy as np
import pytest
import torch

from sdvar_core.data import (CLASS_NAMES, ProceduralDataset, make_batch, make_images, make_labels,
                             to_tensor)


def test_shapes_and_dtypes():
    images, labels = make_batch(23, seed=1, size=32)
    assert images.shape == (23, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (23,) and labels.dtype == np.int64
    x = to_tensor(images)
    assert x.shape == (23, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[4, :, 5, 7], torch.from_numpy(images[4, 5, 7]).float() / 255)
    assert make_images([], seed=0).shape == (0, 64, 64, 3)


def test_same_seed_same_images_other_seed_different():
    a, la = make_batch(30, seed=5)
    b, lb = make_batch(30, seed=5)
    c, lc = make_batch(30, seed=6)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(la, lc)
    same_ids = make_images(la, seed=6)
    assert all(not np.array_equal(a[i], same_ids[i]) for i in range(30))


def test_shards_match_the_full_set():
    ids = np.arange(20) % 10
    full = make_images(ids, seed=3)
    assert np.array_equal(make_images(ids[5:10], seed=3, start=5), full[5:10])
    assert np.array_equal(make_images(ids[17:], seed=3, start=17), full[17:])
    # image i does not depend on the other class ids in the call
    other = make_images(np.r_[ids[:5], (ids[5:] + 3) % 10], seed=3)
    assert np.array_equal(other[:5], full[:5])


def test_labels_are_balanced_and_shuffled():
    labels = make_labels(1000, seed=0)
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 100))
    assert not np.array_equal(labels, np.arange(1000) % 10)
    assert np.bincount(make_labels(25, seed=0, num_classes=5)).tolist() == [5] * 5


@pytest.mark.parametrize("cls", range(len(CLASS_NAMES)))
def test_every_class_shows_two_colours(cls):
    images = make_images(np.full(20, cls), seed=11)
    for img in images:
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        order = np.argsort(counts)[::-1]
        frac = counts[order[:2]] / counts.sum()
        assert 0.02 < frac[1] <= frac[0] < 0.98, (CLASS_NAMES[cls], frac)
        a, b = colours[order[0]].astype(float), colours[order[1]].astype(float)
        assert np.linalg.norm(a - b) / 255 >= 0.45  # foreground/background contrast


def test_classes_differ_in_shape_not_just_colour():
    # mean foreground coverage per class differs: textures cover about half, stars far less than squares
    def coverage(cls):
        imgs = make_images(np.full(40, cls), seed=2).reshape(40, -1, 3).astype(int)
        bg = imgs[:, :1]  # corner pixel is background for shapes
        return float((np.abs(imgs - bg).sum(-1) > 30).mean())
    star, square, circle = coverage(3), coverage(1), coverage(0)
    assert star < 0.7 * square and star < 0.7 * circle


def test_dataset_matches_make_batch():
    ds = ProceduralDataset(12, seed=4, size=32)
    images, labels = make_batch(12, seed=4, size=32)
    assert len(ds) == 12
    for i in (0, 7, 11, -1):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y == labels[i]
        assert torch.equal(x, to_tensor(images[i][None])[0])
    with pytest.raises(IndexError):
        ds[12]
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=12)))
    assert xb.shape == (12, 3, 32, 32) and torch.equal(yb, torch.from_numpy(labels))


def test_fast_enough():
    t = time.perf_counter()
    make_batch(200, seed=0)
    assert time.perf_counter() - t < 2.0  # 1000 take about 1 s on one free core


@pytest.mark.parametrize("call, match", [
    (lambda: make_images([0, 10], seed=0), "class_ids"),
    (lambda: make_images([-1], seed=0), "class_ids"),
    (lambda: make_images([0.5], seed=0), "class_ids"),
    (lambda: make_images([0], seed=0, size=8), "size"),
    (lambda: make_images([0], seed=-1), "seed"),
    (lambda: make_images([0], seed=0, start=-2), "start"),
    (lambda: make_batch(-1, seed=0), "n must"),
    (lambda: make_batch(5, seed=0, num_classes=11), "num_classes"),
    (lambda: ProceduralDataset(4, seed=0, size=10), "size"),
    (lambda: to_tensor(np.zeros((2, 8, 8, 3), np.float32)), "uint8"),
    (lambda: to_tensor(np.zeros((8, 8, 3), np.uint8)), "shape"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
