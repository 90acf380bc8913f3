"""Quality of a sample folder (from `python -m sdvar_core.sample`): a table and FOLDER/eval.json.

    python -m sdvar_core.evaluate runs/spec --reference runs/target

- Class accuracy and FID-tiny (with a bootstrap 95% interval) from the procedural-data classifier,
  when the images fit it (the embedded pair's 64-px, 10-class pictures). Real images: --real
  procedural images of the folder's classes, rendered from a held-out seed the classifier and
  the pairs never trained on. For ImageNet samples use the OpenAI guided-diffusion evaluator on
  FOLDER/samples.npz instead.
- With --reference (a folder made with the same seeds, classes and batch size, e.g. target-only):
  token agreement per scale (from tokens.npz), PSNR and SSIM of the images, identical images.

In eval.json an infinite PSNR (identical images) is written as the string "inf".
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from . import metrics
from .checkpoints import load_classifier
from .classifier import HELDOUT_SEED, class_accuracy, features
from .config import CLASSIFIER_STEM
from .data import NUM_CLASSES, make_images

# Job fields two folders must share for their images to be compared one by one.
SAME_SEEDS = ("seed", "classes", "per_class", "batch_size", "image_size")


# ---- folders -------------------------------------------------------------------------------------


def load_folder(folder: Path) -> dict:
    """images (N, H, W, 3) uint8 and labels (N,) from samples.npz; tokens (N, L) and patch_nums from
    tokens.npz when present (else None); the job of run.json when present (else None)."""
    path = folder / "samples.npz"
    if not path.is_file():
        raise ValueError(f"{path} not found: finish the sampling run first (rerun sample to resume)")
    with np.load(path) as z:
        if "arr_0" not in z.files or "labels" not in z.files:
            raise ValueError(f"{path} must hold arr_0 (N, H, W, 3) uint8 and labels (N,), has {z.files}")
        images, labels = z["arr_0"], z["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3) with N labels, got {images.dtype} "
                         f"{images.shape} and {len(labels)} labels")
    tokens = patch_nums = job = None
    if (folder / "tokens.npz").is_file():
        with np.load(folder / "tokens.npz") as z:
            tokens, patch_nums = z["tokens"], z["patch_nums"].tolist()
    if (folder / "run.json").is_file():
        job = json.loads((folder / "run.json").read_text())["job"]
    return dict(images=images, labels=labels, tokens=tokens, patch_nums=patch_nums, job=job)


def image_agreement(a: np.ndarray, b: np.ndarray, batch_size: int = 256) -> dict:
    """PSNR over all pixels (dB, inf when equal), mean per-image SSIM and the fraction of identical
    images, for two uint8 sets (N, H, W, 3); batched so that 50k 256-px images fit in memory."""
    identical = sum(int((a[i:i + batch_size] == b[i:i + batch_size]).all(axis=(1, 2, 3)).sum())
                    for i in range(0, len(a), batch_size))
    return dict(psnr_db=metrics.psnr(a, b, batch_size), ssim=float(metrics.ssim(a, b).mean()),
                identical_images=identical / len(a))


def compare(run: dict, ref: dict, notes: list[str]) -> dict:
    """Agreement of a folder with a reference made with the same seeds: tokens, PSNR, SSIM."""
    if run["images"].shape != ref["images"].shape or not np.array_equal(run["labels"], ref["labels"]):
        raise ValueError(f"the reference does not match image for image: {ref['images'].shape} images vs "
                         f"{run['images'].shape}, or different labels")
    if run["job"] is not None and ref["job"] is not None:
        differ = [k for k in SAME_SEEDS if run["job"].get(k) != ref["job"].get(k)]
        if differ:
            raise ValueError(f"the reference was made with another {', '.join(differ)}: its images are not "
                             f"the same draws, so agreement would mean nothing")
    out = {}
    if run["tokens"] is not None and ref["tokens"] is not None:
        out["token_agreement"] = metrics.token_agreement(run["tokens"], ref["tokens"], run["patch_nums"])
    else:
        notes.append("token agreement skipped: tokens.npz missing in the folder or the reference")
    out.update(image_agreement(run["images"], ref["images"]))
    return out


def real_features(classifier, classes, n_real: int, real_seed: int, size: int) -> np.ndarray:
    """Classifier features (n_real, D) of n_real procedural images balanced over `classes` (class
    classes[i % len(classes)] for image i), rendered from `real_seed` at `size` px: FID-tiny's real set."""
    classes = np.asarray(classes)
    return features(classifier, make_images(classes[np.arange(n_real) % len(classes)], real_seed, size))


def classifier_metrics(run: dict, classifier, n_real: int, real_seed: int, n_boot: int) -> dict:
    """Class accuracy against the labels; FID-tiny against n_real procedural images of the folder's classes.

    The 95% interval is the 2.5 / 97.5 percentiles of FID over n_boot resamples of the generated set
    (with replacement, real set fixed). Resamples repeat images, so the interval leans above the point value.
    """
    images, labels = run["images"], run["labels"]
    f_real = real_features(classifier, np.unique(labels), n_real, real_seed, images.shape[1])
    f_fake = features(classifier, images)
    _, lo, hi = metrics.bootstrap_interval(f_real, f_fake, n_boot)
    return dict(class_accuracy=class_accuracy(classifier, images, labels),
                fid_tiny=metrics.fid_from_features(f_real, f_fake),
                fid_tiny_ci95=[lo, hi],
                fid_boot=n_boot, real_images=n_real, real_seed=real_seed)


def jsonable(value):
    """Non-finite floats as strings ('inf'), so eval.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def table(result: dict) -> str:
    """The printed summary: one metric per row."""
    rows = [("images", f"{result['images']} ({result['image_size']} px, {len(result['classes'])} classes)")]
    if "class_accuracy" in result:
        lo, hi = result["fid_tiny_ci95"]
        rows += [("class accuracy", f"{result['class_accuracy']:.4f}"),
                 (f"FID-tiny vs {result['real_images']} real",
                  f"{result['fid_tiny']:.4f}  (95% CI {lo:.4f} … {hi:.4f})")]
    ref = result.get("reference")
    if ref:
        rows.append(("reference", ref["folder"]))
        if "token_agreement" in ref:
            ta = ref["token_agreement"]
            rows.append(("token agreement, all", f"{ta['all']:.4f}"))
            rows += [(f"  scale {k}", f"{v:.4f}") for k, v in enumerate(ta["per_scale"])]
        rows += [("PSNR (dB)", f"{ref['psnr_db']:.2f}"), ("SSIM", f"{ref['ssim']:.4f}"),
                 ("identical images", f"{ref['identical_images']:.4f}")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])


def evaluate(folder, reference=None, classifier_path=None, n_real: int = 2000,
             real_seed: int = HELDOUT_SEED, n_boot: int = 20) -> dict:
    """Every metric that applies to `folder` (see the module doc); writes FOLDER/eval.json and returns it.

    classifier_path None: assets/classifier if it exists (skipped with a note otherwise).
    """
    folder = Path(folder)
    run = load_folder(folder)
    images, labels = run["images"], run["labels"]
    notes: list[str] = []
    result = dict(folder=str(folder), images=len(images), image_size=int(images.shape[1]),
                  classes=np.unique(labels).tolist(), notes=notes)
    if reference is not None:   # first: a mismatched reference fails before the slower metrics
        result["reference"] = dict(folder=str(reference), **compare(run, load_folder(Path(reference)), notes))
    explicit = classifier_path is not None
    stem = Path(classifier_path) if explicit else CLASSIFIER_STEM
    if not Path(f"{stem}.json").is_file():
        if explicit:
            raise ValueError(f"classifier not found: {stem}.json")
        notes.append(f"no classifier at {stem} (train one: python -m sdvar_core.metrics train): "
                     f"accuracy and FID-tiny skipped")
    else:
        classifier = load_classifier(stem)
        size, n_cls = classifier.config.image_size, min(classifier.config.num_classes, NUM_CLASSES)
        if images.shape[1:3] != (size, size) or labels.min() < 0 or labels.max() >= n_cls:
            notes.append(f"accuracy and FID-tiny skipped: the classifier takes {size}-px images of {n_cls} "
                         f"procedural classes (for ImageNet samples use the OpenAI evaluator on samples.npz)")
        else:
            result.update(classifier_metrics(run, classifier, n_real, real_seed, n_boot))
    (folder / "eval.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdvar_core.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a sample folder (samples.npz, tokens.npz, run.json)")
    p.add_argument("--reference", default=None, help="a folder made with the same seeds, e.g. target-only")
    p.add_argument("--classifier", default=None, help="classifier path stem (default: assets/classifier)")
    p.add_argument("--real", type=int, default=2000, help="real procedural images for FID-tiny")
    p.add_argument("--real-seed", type=int, default=HELDOUT_SEED, help="seed of the real images")
    p.add_argument("--boot", type=int, default=20, help="bootstrap resamples for the FID interval")
    args = p.parse_args(argv)
    if args.real < 2:
        p.error(f"--real must be >= 2, got {args.real}")
    if args.boot < 1:
        p.error(f"--boot must be >= 1, got {args.boot}")
    if args.real_seed < 0:
        p.error(f"--real-seed must be >= 0, got {args.real_seed}")
    try:
        result = evaluate(args.folder, args.reference, args.classifier, args.real, args.real_seed, args.boot)
    except ValueError as e:
        p.error(str(e))
    print(table(result))


if __name__ == "__main__":
    main()
