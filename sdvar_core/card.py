"""Measure the embedded pair and write its model card: card.json, MODEL_CARD.md and grid.png.

    python -m sdvar_core.card [--folder assets/tiny] [--per-class 100] [--work out/tiny-card]

Every number comes from this run, at the app's default sampling settings (`Settings()`):
- class accuracy and FID-tiny of target-only and draft-only images (and of the plain mid model's, when
  FOLDER/mid.* is there: a baseline for the speed–quality frontier, not part of the pair), each folder made by
  `python -m sdvar_core.sample` and scored by `python -m sdvar_core.evaluate` (the same functions);
- exact speculative decoding (γ = 2, batch 1, as the app runs it): target calls, acceptance per
  scale, and the corrected-token rate on edge tokens against flat tokens (edges from image gradients);
- grid.png: real | target | draft images of every class, the latter two from the scored folders.
`train all` calls this last; `load_pair('tiny')` then checks the hashes written here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import data, evaluate, metrics, sample
from .checkpoints import load_classifier
from .classifier import HELDOUT_SEED
from .config import CLASSIFIER_STEM, TINY_DIR
from .engine import Pair, Settings, generate
from .runtime import machine_name, resolve_device
from .trace import ACCEPTED, CORRECTED
from .zoo import file_sha256, load_pair_folder, plain_model_folder

GRID_ROWS = 3            # images per class and source in grid.png
GRID_ZOOM = 2            # nearest-neighbour upscaling of every tile
FINE_SCALES_FROM = 6     # edge/flat pooled over scales whose tokens cover at most 8x8 px (pn >= 8)
DATA_DESCRIPTION = (
    f"procedural 64x64 images, 10 classes (sdvar_core.data, data version {data.DATA_VERSION}): one random "
    f"foreground colour on one random background colour; shapes of half-size {data.SHAPE_RADIUS[0]}–"
    f"{data.SHAPE_RADIUS[1]} (in [-1, 1] units) centred within ±{data.CENTRE_JITTER}, rotated by at most "
    f"±{data.MAX_ROTATION} rad (square and diamond ±0.2); stripes near-horizontal and checkerboards near-axis-"
    f"aligned (±{data.TEXTURE_ANGLE_JITTER} rad) with a period of {data.TEXTURE_PERIOD[0]}–{data.TEXTURE_PERIOD[1]}")
DATA_CHANGES = [
    "shape centre: anywhere the shape fits → within ±0.12 of the image centre",
    "shape half-size: 0.4–0.75 → 0.55–0.75",
    "rotation: any angle (square, diamond ±0.35, heart ±0.5) → ±0.3 rad (square, diamond ±0.2)",
    "stripes and checker: any angle, period 0.18–0.45 (6–14 px), any phase → near axis-aligned (±0.08 rad), "
    "period 0.55–0.7 (18–22 px), phase 0.25 ± 0.15 periods",
    "why: a VAR samples the tokens of one scale independently, so a layout still open at a coarse scale "
    "(where the shape is, which way stripes run) came out as a patchwork (the previous pair drew blobs); "
    "colours stay fully random and the 10 classes are unchanged",
]


def edge_tokens(images: np.ndarray, pn: int, threshold: float = 0.1) -> np.ndarray:
    """Which tokens of a pn x pn map cover an edge of the picture. images (B, H, W, 3) uint8 → (B, pn²) bool.

    An edge pixel is one whose colour differs from its right or lower neighbour by more than `threshold`
    (in [0, 1], largest channel); a token covers the pixels [floor(i H/pn), ceil((i+1) H/pn)) per axis.
    """
    x = np.asarray(images, dtype=np.float32) / 255
    B, H, W, _ = x.shape
    edge = np.zeros((B, H, W), dtype=bool)
    dx = np.abs(np.diff(x, axis=2)).max(-1) > threshold     # (B, H, W-1): pixel and its right neighbour
    dy = np.abs(np.diff(x, axis=1)).max(-1) > threshold     # (B, H-1, W)
    edge[:, :, :-1] |= dx
    edge[:, :, 1:] |= dx
    edge[:, :-1] |= dy
    edge[:, 1:] |= dy
    rows = [(int(np.floor(i * H / pn)), int(np.ceil((i + 1) * H / pn))) for i in range(pn)]
    cols = [(int(np.floor(j * W / pn)), int(np.ceil((j + 1) * W / pn))) for j in range(pn)]
    out = np.array([[edge[:, r0:r1, c0:c1].any(axis=(1, 2)) for (c0, c1) in cols] for (r0, r1) in rows])
    return out.transpose(2, 0, 1).reshape(B, pn * pn)


def speculative_stats(pair: Pair, samples: int, settings: dict, gamma: int = 2) -> dict:
    """Exact speculative runs at batch 1 (class i % num_classes, seed i): calls, acceptance per scale, and the
    corrected-token rate on edge vs flat tokens of each run's final picture."""
    K = pair.layout.num_scales
    judged, accepted = np.zeros(K), np.zeros(K)
    corrected = {"edge": np.zeros(K), "flat": np.zeros(K)}
    tokens = {"edge": np.zeros(K), "flat": np.zeros(K)}
    target_calls, draft_calls = [], []
    num_classes = len(pair.class_names or []) or pair.target.cfg.num_classes
    for i in range(samples):
        tr = generate(pair, "speculative", [i % num_classes], seed=i, gamma=gamma, progressive=False, **settings).trace
        target_calls.append(tr.target_calls)
        draft_calls.append(tr.draft_calls)
        for s in tr.scales:
            if s.producer != "draft+target":
                continue
            is_judged = (s.status == ACCEPTED) | (s.status == CORRECTED)
            is_corrected = s.status == CORRECTED
            judged[s.scale] += is_judged.sum()
            accepted[s.scale] += (s.status == ACCEPTED).sum()
            edge = edge_tokens(tr.images, s.pn)
            for where, sel in (("edge", edge), ("flat", ~edge)):
                tokens[where][s.scale] += (is_judged & sel).sum()
                corrected[where][s.scale] += (is_corrected & sel).sum()

    def rate(num, den):
        return [None if d == 0 else round(float(n / d), 4) for n, d in zip(num, den)]

    fine = slice(FINE_SCALES_FROM, K)
    edge_rate = corrected["edge"][fine].sum() / max(tokens["edge"][fine].sum(), 1)
    flat_rate = corrected["flat"][fine].sum() / max(tokens["flat"][fine].sum(), 1)
    return {"gamma": gamma, "samples": samples, "batch": 1,
            "target_calls_mean": round(float(np.mean(target_calls)), 3),
            "draft_calls_mean": round(float(np.mean(draft_calls)), 3),
            "acceptance_per_scale": rate(accepted, judged),
            "corrected_rate_edge_per_scale": rate(corrected["edge"], tokens["edge"]),
            "corrected_rate_flat_per_scale": rate(corrected["flat"], tokens["flat"]),
            "edge_tokens_per_scale": tokens["edge"].astype(int).tolist(),
            "flat_tokens_per_scale": tokens["flat"].astype(int).tolist(),
            "fine_scales": list(range(FINE_SCALES_FROM, K)),
            "corrected_rate_edge_fine": round(float(edge_rate), 4),
            "corrected_rate_flat_fine": round(float(flat_rate), 4),
            "edge_to_flat_ratio_fine": None if flat_rate == 0 else round(float(edge_rate / flat_rate), 3)}


def write_grid(path: Path, real: np.ndarray, target: np.ndarray, draft: np.ndarray, class_names) -> None:
    """A labelled PNG: one column per class; `rows` rows each of real, target, draft images.
    Each array: (num_classes * rows, H, W, 3) uint8, class-major."""
    from PIL import Image, ImageDraw

    n_cls, H = len(class_names), real.shape[1]
    rows = len(real) // n_cls
    tile, gap, left, top = H * GRID_ZOOM, 4, 70, 24
    blocks = [("real", real), ("target", target), ("draft", draft)]
    width = left + n_cls * (tile + gap)
    height = top + len(blocks) * (rows * (tile + gap) + 2 * gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(class_names):
        draw.text((left + c * (tile + gap) + 4, 6), name, fill="black")
    y = top
    for label, imgs in blocks:
        draw.text((6, y + rows * (tile + gap) // 2 - 6), label, fill="black")
        for c in range(n_cls):
            for r in range(rows):
                img = Image.fromarray(imgs[c * rows + r]).resize((tile, tile), Image.NEAREST)
                canvas.paste(img, (left + c * (tile + gap), y + r * (tile + gap)))
        y += rows * (tile + gap) + 2 * gap
    canvas.save(path, optimize=True)


def first_per_class(images: np.ndarray, labels: np.ndarray, classes, n: int) -> np.ndarray:
    """The first n images of every class, class-major. (len(classes) * n, H, W, 3)."""
    return np.concatenate([images[np.flatnonzero(labels == c)[:n]] for c in classes])


def goals(ev: dict) -> list[tuple[str, bool, str]]:
    """The issue's bar, checked against measured numbers: (goal, met, the numbers)."""
    t, d = ev["target"], ev["draft"]
    return [("target class accuracy ≥ 0.90", t["class_accuracy"] >= 0.9, f"{t['class_accuracy']:.4f}"),
            ("draft class accuracy ≥ 0.60", d["class_accuracy"] >= 0.6, f"{d['class_accuracy']:.4f}"),
            ("draft worse than the target: lower accuracy", d["class_accuracy"] < t["class_accuracy"],
             f"{d['class_accuracy']:.4f} < {t['class_accuracy']:.4f}"),
            ("draft worse than the target: higher FID-tiny, intervals apart",
             d["fid_tiny_ci95"][0] > t["fid_tiny_ci95"][1],
             f"draft {d['fid_tiny']:.3f} [{d['fid_tiny_ci95'][0]:.3f}, {d['fid_tiny_ci95'][1]:.3f}] vs target "
             f"{t['fid_tiny']:.3f} [{t['fid_tiny_ci95'][0]:.3f}, {t['fid_tiny_ci95'][1]:.3f}]")]


def edge_verdict(sp: dict) -> str:
    """One clause reading the edge/flat ratio."""
    ratio = sp["edge_to_flat_ratio_fine"]
    if ratio is None:
        return ""
    if ratio > 1:
        return f": the target overrules the draft {ratio:.1f}× as often on edges as on flat areas"
    return ": edges are no harder for the draft than flat areas here"


def write_markdown(path: Path, card: dict) -> None:
    m, ev = card["models"], card["evaluation"]
    sp = ev["exact_speculative"]
    K = len(sp["acceptance_per_scale"])
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["# The embedded pair (`tiny`)", "",
             "A small multi-scale VQ-VAE with the official 10 scales (64×64 images → 16×16 latent, 680 tokens) and a",
             "draft/target VAR pair trained on its tokens, all with this project's code. Retrain everything with",
             "`python -m sdvar_core.train all` (resumable; the recipe is `PairRecipe` in `sdvar_core/train.py`).", "",
             f"Data: {card['data']}.", "", "Changes to the data since the previous pair (data version 1):", ""]
    lines += [f"- {c}" for c in card["data_changes"]]
    lines += ["", "![real | target | draft, three of each class](grid.png)", "",
              "| model | config | training | result |", "|---|---|---|---|"]
    vq = m["vqvae"]
    lines.append(f"| VQ-VAE | V={vq['config']['vocab_size']}, Cvae={vq['config']['z_channels']}, ch={vq['config']['ch']}, "
                 f"ch_mult={vq['config']['ch_mult']} | {vq.get('steps')} steps × {vq.get('batch_size')}, "
                 f"{vq.get('precision', 'fp32')}, {vq.get('wall_time_s')} s on {vq.get('machine')} | reconstruction PSNR "
                 f"{vq.get('heldout_psnr_db')} dB on {vq.get('eval_images')} held-out real images (mean per image; "
                 f"what `encode_image` → decode reaches on such pictures), codebook usage {vq.get('codebook_usage')} |")
    for name in ("target", "draft", "mid"):
        if name not in ev:   # the plain mid model is optional
            continue
        c, r = m[name]["config"], ev[name]
        lo, hi = r["fid_tiny_ci95"]
        lines.append(f"| {'plain mid' if name == 'mid' else name} VAR | depth {c['depth']}, width {c['width']}, heads {c['heads']}, "
                     f"{m[name].get('params')} params | {m[name].get('steps')} steps × {m[name].get('batch_size')}, "
                     f"{m[name].get('precision', 'fp32')}, {m[name].get('wall_time_s')} s on {m[name].get('machine')} | "
                     f"class accuracy {r['class_accuracy']:.4f}, FID-tiny {r['fid_tiny']:.3f} [{lo:.3f}, {hi:.3f}] |")
    cl = card["classifier"]
    lines += ["", f"Classifier (`assets/classifier`, judge of class accuracy and FID-tiny): {cl.get('steps')} steps × "
              f"{cl.get('batch_size')}, held-out accuracy {cl.get('heldout_accuracy')} on {cl.get('heldout_images')} real images.",
              "", f"Evaluated on {ev['device']} at the app's default sampling settings {ev['sampling']}: "
              f"{ev['per_class']} images per class per model (`python -m sdvar_core.sample` + `python -m sdvar_core.evaluate`), "
              f"FID-tiny with a bootstrap 95% interval against {ev['real_images']} real held-out images "
              f"(two real sets differ by {ev['fid_tiny_real_vs_real']}).", "",
              f"Exact speculative decoding (γ = {sp['gamma']}, {sp['samples']} runs at batch 1, class i mod 10, seed i): "
              f"{sp['target_calls_mean']} target calls and {sp['draft_calls_mean']} draft calls on average.", "",
              "| scale | " + " | ".join(str(k) for k in range(K)) + " |", "|---|" + "---|" * K,
              "| acceptance (drafted tokens kept) | " + " | ".join(fmt(a) for a in sp["acceptance_per_scale"]) + " |",
              "| corrected rate, edge tokens | " + " | ".join(fmt(a) for a in sp["corrected_rate_edge_per_scale"]) + " |",
              "| corrected rate, flat tokens | " + " | ".join(fmt(a) for a in sp["corrected_rate_flat_per_scale"]) + " |",
              "", f"Edge tokens (their footprint holds a colour step > 0.1 in the final picture) against flat tokens, "
              f"scales {sp['fine_scales'][0]}–{sp['fine_scales'][-1]}: corrected rate {sp['corrected_rate_edge_fine']} vs "
              f"{sp['corrected_rate_flat_fine']}, ratio **{sp['edge_to_flat_ratio_fine']}**{edge_verdict(sp)}.", "", "Goals of issue 9, checked against the numbers above:", ""]
    lines += [f"- {g}: {'met' if ok else 'not met'} ({nums})" for g, ok, nums in goals(ev)]
    lines += ["", "Files and SHA-256 hashes: `card.json` (checked by `sdvar_core.zoo.load_pair('tiny')`)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    defaults = Settings()
    ap = argparse.ArgumentParser(prog="python -m sdvar_core.card", description=__doc__.split("\n")[0])
    ap.add_argument("--folder", default=str(TINY_DIR), help="the pair: vqvae/draft/target .json + .safetensors")
    ap.add_argument("--classifier", default=str(CLASSIFIER_STEM), help="classifier path stem")
    ap.add_argument("--work", default="out/tiny-card", help="sample folders go here (rerun resumes)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--real", type=int, default=1000)
    ap.add_argument("--spec-samples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=defaults.cfg)
    ap.add_argument("--top-k", type=int, default=defaults.top_k)
    ap.add_argument("--top-p", type=float, default=defaults.top_p)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--recipe", default="", help="recipe.json of `train all`, copied into the card")
    args = ap.parse_args(argv)
    folder, work = Path(args.folder), Path(args.work)
    device = resolve_device(args.device)
    card_path = folder / "card.json"
    if card_path.exists():
        card_path.unlink()  # rebuilt below; a stale one would fail the hash check
    settings = dict(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
    rows, sample_sets = {}, {}
    for mode in ("target", "draft"):
        out = work / mode
        t0 = time.perf_counter()
        sample.main(["--pair", str(folder), "--mode", mode, "--per-class", str(args.per_class), "--batch-size",
                     str(args.batch_size), "--seed", str(args.seed), "--out", str(out), "--device", device.type,
                     "--cfg", str(args.cfg), "--top-k", str(args.top_k), "--top-p", str(args.top_p)])
        result = evaluate.evaluate(out, classifier_path=args.classifier, n_real=args.real)
        rows[mode] = {k: result[k] for k in ("class_accuracy", "fid_tiny", "fid_tiny_ci95", "images")}
        rows[mode]["seconds"] = round(time.perf_counter() - t0, 1)
        with np.load(out / "samples.npz") as z:
            sample_sets[mode] = (z["arr_0"], z["labels"])
        print(mode, rows[mode], flush=True)
    mid = folder / "mid"   # the plain mid model (train all's last stage), when shipped: a baseline, not the pair
    if Path(f"{mid}.json").is_file() and Path(f"{mid}.safetensors").is_file():
        out = work / "mid"
        t0 = time.perf_counter()
        sample.main(["--pair", str(plain_model_folder(folder, mid, work / "mid-pair")), "--mode", "target",
                     "--per-class", str(args.per_class), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                     "--out", str(out), "--device", device.type, "--cfg", str(args.cfg), "--top-k", str(args.top_k),
                     "--top-p", str(args.top_p)])
        result = evaluate.evaluate(out, classifier_path=args.classifier, n_real=args.real)
        rows["mid"] = {k: result[k] for k in ("class_accuracy", "fid_tiny", "fid_tiny_ci95", "images")}
        rows["mid"]["seconds"] = round(time.perf_counter() - t0, 1)
        rows["mid"]["training_wall_time_s"] = json.loads(Path(f"{mid}.json").read_text()).get("wall_time_s")
        print("mid", rows["mid"], flush=True)
    clf = load_classifier(args.classifier, device=str(device))
    real, _ = data.make_batch(args.real, HELDOUT_SEED)
    real2, _ = data.make_batch(args.real, HELDOUT_SEED - 1)
    noise_floor = round(metrics.fid_tiny(clf, real, real2), 3)
    pair = load_pair_folder(folder, device, class_names=list(data.CLASS_NAMES))
    t0 = time.perf_counter()
    spec = speculative_stats(pair, args.spec_samples, settings)
    spec["seconds"] = round(time.perf_counter() - t0, 1)
    classes = range(data.NUM_CLASSES)
    per_class_shown = min(GRID_ROWS, args.per_class)
    grid_real = data.make_images(np.repeat(np.arange(data.NUM_CLASSES), per_class_shown), HELDOUT_SEED)
    write_grid(folder / "grid.png", grid_real, *(first_per_class(*sample_sets[m], classes, per_class_shown)
                                                 for m in ("target", "draft")), data.CLASS_NAMES)
    files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in (folder / f"{name}.safetensors" for name in ("draft", "target", "vqvae"))}   # the pair only
    models = {name: json.loads((folder / f"{name}.json").read_text())
              for name in ("vqvae", "draft", "target") + (("mid",) if "mid" in rows else ())}
    card = {"name": "tiny", "data": DATA_DESCRIPTION, "data_version": data.DATA_VERSION, "data_changes": DATA_CHANGES,
            "class_names": list(data.CLASS_NAMES), "files": files, "models": models,
            "classifier": json.loads(Path(f"{args.classifier}.json").read_text()),
            "recipe": json.loads(Path(args.recipe).read_text()) if args.recipe else None,
            "evaluation": {"device": machine_name(device), "sampling": settings, "per_class": args.per_class,
                           "seed": args.seed, "batch_size": args.batch_size, "real_images": args.real,
                           "fid_tiny_real_vs_real": noise_floor, **rows, "exact_speculative": spec}}
    card["evaluation"]["goals"] = [{"goal": g, "met": ok, "numbers": n} for g, ok, n in goals(card["evaluation"])]
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    write_markdown(folder / "MODEL_CARD.md", card)
    print(json.dumps(card["evaluation"], indent=2))
    return card


if __name__ == "__main__":
    main()
