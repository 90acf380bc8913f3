"""Evaluation CLI: FID-tiny / accuracy sanity on real images, agreement with a reference, SSIM against hand sums."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sdvar_core import evaluate, metrics, sample
from sdvar_core.checkpoints import save_classifier
from sdvar_core.classifier import HELDOUT_SEED, Classifier, ClassifierConfig
from sdvar_core.data import make_batch


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A randomly initialised small classifier: its features are a fixed function of the pixels."""
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(widths=(8, 16, 32), depth=1)).eval()
    stem = tmp_path_factory.mktemp("clf") / "classifier"
    save_classifier(model, stem)
    return model, stem


@pytest.fixture(scope="module")
def quick(classifier):
    """CLI options for fast classifier metrics that do not depend on the repo's assets/classifier."""
    return ["--classifier", classifier[1], "--real", 20, "--boot", 3]


def write_folder(folder, images, labels, tokens=None):
    """A sample folder by hand: samples.npz (+ tokens.npz)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "samples.npz", arr_0=images, labels=np.asarray(labels, dtype=np.int64))
    if tokens is not None:
        np.savez(folder / "tokens.npz", tokens=tokens, labels=labels,
                 patch_nums=np.array([1, 2, 3, 4, 5, 6, 8, 10, 13, 16]))
    return folder


def run_cli(*argv):
    """python -m sdvar_core.evaluate *argv → the eval.json it wrote."""
    evaluate.main([str(a) for a in argv])
    return json.loads((Path(argv[0]) / "eval.json").read_text())


def test_fid_of_real_images_is_near_zero_and_far_below_noise(classifier, tmp_path, capsys):
    _, stem = classifier
    images, labels = make_batch(300, seed=123)
    args = ["--classifier", stem, "--real", 300, "--boot", 5]
    real = run_cli(write_folder(tmp_path / "real", images, labels), *args)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    fake = run_cli(write_folder(tmp_path / "noise", noise, labels), *args)
    assert real["fid_tiny"] < 0.05 * fake["fid_tiny"]
    assert real["real_images"] == 300 and real["real_seed"] == HELDOUT_SEED
    for r in (real, fake):
        lo, hi = r["fid_tiny_ci95"]
        assert 0 <= lo <= hi
    assert fake["fid_tiny_ci95"][0] > real["fid_tiny_ci95"][1]   # the intervals do not overlap
    assert "FID-tiny vs 300 real" in capsys.readouterr().out


def test_accuracy_against_the_labels(classifier, quick, tmp_path):
    images, _ = make_batch(60, seed=5)
    pred = metrics.predict(classifier[0], images)
    assert run_cli(write_folder(tmp_path / "a", images, pred), *quick)["class_accuracy"] == 1.0
    other = pred.copy()
    other[::4] = (pred[::4] + 1) % 10   # every 4th label wrong
    acc = run_cli(write_folder(tmp_path / "b", images, other), *quick)["class_accuracy"]
    assert acc == 0.75


def test_a_folder_against_itself_agrees_fully(quick, tmp_path, capsys):
    images, labels = make_batch(12, seed=9)
    tokens = np.random.default_rng(0).integers(0, 512, (12, 680)).astype(np.int16)
    folder = write_folder(tmp_path / "f", images, labels, tokens)
    out = run_cli(folder, "--reference", folder, *quick)["reference"]
    assert out["token_agreement"] == {"per_scale": [1.0] * 10, "all": 1.0}
    assert out["psnr_db"] == "inf" and out["ssim"] == 1.0 and out["identical_images"] == 1.0
    assert re.search(r"^PSNR \(dB\) +inf$", capsys.readouterr().out, re.M)


def test_agreement_with_a_sampled_reference(pair_dir, quick, tmp_path, capsys):
    def sample_folder(name, mode, seed):
        sample.main([str(a) for a in ["--pair", pair_dir, "--mode", mode, "--per-class", 2, "--classes", "1,4",
                                      "--batch-size", 4, "--seed", seed, "--threads", 1, "--device", "cpu",
                                      "--out", tmp_path / name]])

    sample_folder("target", "target", 3)
    sample_folder("draft", "draft", 3)
    out = run_cli(tmp_path / "draft", "--reference", tmp_path / "target", *quick)["reference"]
    with np.load(tmp_path / "draft" / "tokens.npz") as a, np.load(tmp_path / "target" / "tokens.npz") as b:
        same = a["tokens"] == b["tokens"]
    with np.load(tmp_path / "draft" / "samples.npz") as a, np.load(tmp_path / "target" / "samples.npz") as b:
        x, y = a["arr_0"], b["arr_0"]
    assert out["token_agreement"]["per_scale"][-1] == pytest.approx(same[:, -256:].mean())
    assert out["token_agreement"]["all"] == pytest.approx(same.mean()) and same.mean() < 1
    assert out["psnr_db"] == pytest.approx(metrics.psnr(x, y))
    assert out["ssim"] == pytest.approx(metrics.ssim(x, y).mean()) and 0 < out["ssim"] < 1
    # a reference made with another seed is refused: its images are other draws
    sample_folder("seed4", "target", 4)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(tmp_path / "draft"), "--reference", str(tmp_path / "seed4")])
    assert e.value.code == 2 and "another seed" in capsys.readouterr().err


def test_ssim_matches_a_direct_sum_over_each_window():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 13, 12, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    g = metrics.gaussian_window(11, 1.5).numpy()
    w = np.outer(g, g)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = np.zeros(2)
    for n in range(2):
        vals = []
        for ch in range(3):
            for i in range(13 - 10):
                for j in range(12 - 10):
                    x, y = a[n, i:i + 11, j:j + 11, ch] / 255, b[n, i:i + 11, j:j + 11, ch] / 255
                    mx, my = (w * x).sum(), (w * y).sum()
                    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
                    cxy = (w * (x - mx) * (y - my)).sum()
                    vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
        expected[n] = np.mean(vals)
    got = metrics.ssim(a, b)
    assert got == pytest.approx(expected, abs=1e-10)
    assert np.allclose(metrics.ssim(b, a), got) and (got < 1).all()


def test_ssim_of_flat_images_is_the_luminance_term():
    a = np.full((1, 16, 16, 3), 51, np.uint8)
    b = np.full((1, 16, 16, 3), 204, np.uint8)
    ma, mb, c1 = 0.2, 0.8, 0.01 ** 2
    assert metrics.ssim(a, b)[0] == pytest.approx((2 * ma * mb + c1) / (ma * ma + mb * mb + c1))
    assert metrics.ssim(a, a)[0] == 1.0


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    images, labels = make_batch(4, seed=1)
    folder = write_folder(tmp_path / "f", images, labels)
    short = write_folder(tmp_path / "short", images[:3], labels[:3])
    # every case fails before any classifier work, so the repo's assets/classifier does not matter
    for argv, message in [([tmp_path / "missing"], "samples.npz not found"),
                          ([folder, "--real", 1], "--real must be >= 2"),
                          ([folder, "--classifier", tmp_path / "nope"], "classifier not found"),
                          ([folder, "--reference", short], "does not match image for image")]:
        with pytest.raises(SystemExit) as e:
            evaluate.main([str(a) for a in argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
