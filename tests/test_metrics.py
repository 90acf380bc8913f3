import json
import math

import numpy as np
import pytest
import torch

from sdvar_core.checkpoints import load_classifier, save_classifier
from sdvar_core.classifier import Classifier, ClassifierConfig, class_accuracy, features, predict, train_classifier
from sdvar_core.data import make_batch
from sdvar_core.metrics import bootstrap_fid, fid_tiny, frechet_distance, main, psnr

SMALL = ClassifierConfig(image_size=32, widths=(16, 32, 64), depth=1)


@pytest.fixture(scope="module")
def untrained():
    """A randomly initialised small classifier for 32 px images: enough for the FID sanity checks."""
    torch.manual_seed(0)
    return Classifier(SMALL).eval()


@pytest.fixture(scope="module")
def real():
    return make_batch(1000, seed=7, size=32)[0]


def _random_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_spd(16, rng)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-6


def test_frechet_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-7)
    # only the means differ: the squared distance of the means
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v1)) == pytest.approx(np.sum((mu1 - mu2) ** 2))


def test_frechet_is_finite_for_singular_covariances():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1  # N < D: rank-deficient covariances
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    value = frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert math.isfinite(value) and value > 0
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == pytest.approx(3.0)
    assert frechet_distance(x.mean(0), s1, x.mean(0), s1) < 1e-4


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))


def test_psnr():
    rng = np.random.default_rng(0)
    a = rng.random((4, 16, 16, 3))
    assert psnr(a, a) == math.inf
    assert psnr(np.zeros((2, 2)), np.full((2, 2), 0.1)) == pytest.approx(20.0)
    small = psnr(a, np.clip(a + rng.normal(0, 0.01, a.shape), 0, 1))
    large = psnr(a, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1))
    assert small > large + 15
    u8 = (a * 255).round().astype(np.uint8)
    assert psnr(u8, u8.astype(np.float32) / 255) > 100  # uint8 is scaled to [0, 1]
    assert psnr(u8, 255 - u8) < 10
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match="uint8 or float"):
        psnr(u8.astype(np.int32), u8)


def test_default_classifier_shapes_and_size():
    model = Classifier().eval()
    x = torch.rand(3, 3, 64, 64)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, model.config.widths[-1])
    assert 64 <= model.config.widths[-1] <= 128
    assert sum(p.numel() for p in model.parameters()) < 300_000


def test_features_do_not_depend_on_batch_size(untrained, real):
    f_all = features(untrained, real[:20])
    f_small = features(untrained, real[:20], batch_size=7)
    assert f_all.shape == (20, 64) and f_all.dtype == np.float64
    np.testing.assert_allclose(f_small, f_all, rtol=1e-5, atol=1e-6)
    assert not untrained.training


def test_fid_tiny_same_set_is_far_below_noise(untrained, real):
    a, b = real[:500], real[500:]
    noise = np.random.default_rng(0).integers(0, 256, size=a.shape, dtype=np.uint8)
    same, against_noise = fid_tiny(untrained, a, b), fid_tiny(untrained, a, noise)
    assert fid_tiny(untrained, a, a) < 1e-6
    assert against_noise > 10 * same


def test_bootstrap_fid_interval(untrained, real):
    a, b = real[:400], real[400:800]
    noise = np.random.default_rng(1).integers(0, 256, size=a.shape, dtype=np.uint8)
    mean, lo, hi = bootstrap_fid(untrained, a, b, n_boot=8, seed=0)
    assert lo <= mean <= hi and lo < hi
    assert bootstrap_fid(untrained, a, b, n_boot=8, seed=0) == (mean, lo, hi)
    n_mean, n_lo, n_hi = bootstrap_fid(untrained, a, noise, n_boot=8, seed=0)
    assert n_lo > hi


def test_brief_training_beats_chance():
    model = train_classifier(150, batch_size=32, seed=0, lr=1e-2, progress=False, config=SMALL)
    images, labels = make_batch(500, seed=99, size=32)
    acc = class_accuracy(model, images, labels)
    assert acc > 0.2  # chance is 0.1; 500 images put chance above 0.15 with p < 1e-4
    assert np.array_equal(predict(model, images[:50]), predict(model, images[:50], batch_size=8))


def test_training_is_deterministic_by_seed():
    a = train_classifier(3, batch_size=8, seed=1, progress=False, config=SMALL)
    b = train_classifier(3, batch_size=8, seed=1, progress=False, config=SMALL)
    c = train_classifier(3, batch_size=8, seed=2, progress=False, config=SMALL)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = Classifier(SMALL)
    model(torch.rand(8, 3, 32, 32))  # train-mode pass: BatchNorm running stats move off their defaults
    model.eval()
    save_classifier(model, tmp_path / "sub" / "clf", meta={"steps": 0})
    loaded = load_classifier(tmp_path / "sub" / "clf")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    info = json.loads((tmp_path / "sub" / "clf.json").read_text())
    assert info["steps"] == 0 and info["config"]["widths"] == [16, 32, 64]
    info["config"]["widths"] = [16, 32, 48]  # weights no longer fit: strict loading must refuse
    (tmp_path / "sub" / "clf.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="misshaped"):
        load_classifier(tmp_path / "sub" / "clf")


def test_cli_train_writes_both_files(tmp_path):
    main(["train", "--out", str(tmp_path / "c"), "--steps", "2", "--batch-size", "4", "--heldout", "20",
          "--threads", "1"])
    info = json.loads((tmp_path / "c.json").read_text())
    assert info["steps"] == 2 and info["heldout_images"] == 20 and 0 <= info["heldout_accuracy"] <= 1
    assert info["train_seconds"] >= 0 and "CPU" in info["machine"]
    assert load_classifier(tmp_path / "c").config == ClassifierConfig()


@pytest.mark.parametrize("call, match", [
    (lambda m, im: class_accuracy(m, im[:10], np.zeros(9, np.int64)), "length"),
    (lambda m, im: features(m, im[:4].transpose(0, 3, 1, 2)), "shape"),
    (lambda m, im: features(m, im[:4, :16, :16]), "shape"),
    (lambda m, im: features(m, im[:4].astype(np.float32)), "uint8"),
    (lambda m, im: features(m, im[:0]), "non-empty"),
    (lambda m, im: fid_tiny(m, im[:1], im[:5]), "N >= 2"),
    (lambda m, im: bootstrap_fid(m, im[:5], im[5:10], n_boot=0), "n_boot"),
    (lambda m, im: train_classifier(0, 8, 0), "steps"),
    (lambda m, im: train_classifier(5, 1, 0), "batch_size"),
    (lambda m, im: ClassifierConfig(image_size=60), "image_size"),
    (lambda m, im: ClassifierConfig(depth=0), "depth"),
])
def test_bad_input(untrained, real, call, match):
    with pytest.raises(ValueError, match=match):
        call(untrained, real)
