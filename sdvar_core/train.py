"""Training CLI: one sub-command per model, and `all` for the whole embedded pair.

    python -m sdvar_core.train all [--work out/tiny-work] [--out assets/tiny] [--device auto]
    python -m sdvar_core.train vqvae --out assets/tiny/vqvae --steps 800 --batch-size 16 --seed 0
    python -m sdvar_core.train var --vqvae assets/tiny/vqvae --out assets/tiny/target --depth 6 --width 192 --heads 3 --steps 3000

`all` runs every stage of `PairRecipe` in order (classifier, VQ-VAE, target, draft, card),
skips the stages whose outputs are complete and resumes an interrupted one from its checkpoint,
so rerunning the same command after a stop continues where it was.

Writes `<out>.safetensors` + `<out>.json` at the end and a resumable checkpoint
`<out>.ckpt.pt` (a plain dict, loaded with weights_only=True) every --ckpt-every steps.
Data comes from the procedural set in `data.py`, rendered on the fly: training
image i is `make_images(..., seed, start=i)`; the held-out set is `make_batch(n, eval_seed)`.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .checkpoints import save_var, save_vqvae
from .config import CLASSIFIER_STEM, TINY_DIR, TINY_VQVAE
from .runtime import autocast_for, best_precision, derived_seed, machine_name, resolve_device
from .vqvae import VQVAE

# --- small reusable helpers ------------------------------------------------------------------


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr(step: int, steps: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to 10% of base_lr at `steps`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save a plain dict of tensors / numbers / strings atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def train_images(step: int, batch_size: int, seed: int, size: int) -> torch.Tensor:
    """Batch `step` of the endless training stream: (B, 3, size, size) in [0,1], fresh images each step."""
    labels = np.random.default_rng([seed, step]).integers(0, data.NUM_CLASSES, batch_size)
    return data.to_tensor(data.make_images(labels, seed, size, start=step * batch_size))


def train_loop(model, opt, loss_fn, args, ckpt_path: Path, extra_state=None) -> dict:
    """Run steps [start, args.steps) of `loss_fn(step) -> dict with 'loss'` with AdamW, cosine LR,
    grad clipping, tqdm, periodic checkpoints and optional resume / wall-time limit.

    `extra_state` is a pair (get() -> dict, set(dict)) for state outside model/opt.
    Returns {'steps': steps done, 'wall_time_s': training seconds over all runs}.
    """
    start, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["torch_rng"])
        start, elapsed = ck["step"], ck["wall_time_s"]
        if extra_state:
            extra_state[1](ck["extra"])
        print(f"resumed from {ckpt_path} at step {start}")
    elif args.resume:
        print(f"no checkpoint at {ckpt_path}; starting from scratch")

    def checkpoint(step):
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                    "wall_time_s": elapsed + time.time() - t0, "torch_rng": torch.get_rng_state(),
                                    "extra": extra_state[0]() if extra_state else {}})

    model.train()
    t0, step = time.time(), start
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, dynamic_ncols=True)
    for step in bar:
        if args.time_limit and elapsed + time.time() - t0 > 60 * args.time_limit:
            print(f"time limit of {args.time_limit} min reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, args.warmup)
        losses = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0:
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        if (step + 1) % args.ckpt_every == 0:
            checkpoint(step + 1)
    else:
        step = args.steps
    checkpoint(step)
    return {"steps": step, "wall_time_s": round(elapsed + time.time() - t0, 1)}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output stem: writes <out>.safetensors, <out>.json, <out>.ckpt.pt")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt.pt if it exists")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', ...")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=0.0, help="stop after this many minutes (0 = none)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="autocast dtype; auto = bf16 on CUDA and on CPUs with native bf16, else fp32")


def precision_of(args, device: torch.device) -> str:
    return best_precision(device) if args.precision == "auto" else args.precision


def check_common_args(args) -> None:
    for key in ("steps", "batch_size", "ckpt_every", "warmup"):
        if getattr(args, key) < (0 if key == "warmup" else 1):
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.threads < 0 or args.time_limit < 0:
        raise ValueError("--threads and --time-limit must be >= 0")


# --- VQ-VAE -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, n: int, seed: int, batch_size: int = 100) -> dict:
    """Held-out reconstruction through the tokens: mean per-image PSNR (dB) and codebook usage fraction."""
    model.eval()
    device = next(model.parameters()).device
    images, _ = data.make_batch(n, seed, model.cfg.image_size)
    psnrs, used = [], torch.zeros(model.cfg.vocab_size, dtype=torch.bool, device=device)
    for i in range(0, n, batch_size):
        x = data.to_tensor(images[i:i + batch_size]).to(device)
        tokens = model.image_to_tokens(x)
        mse = (model.tokens_to_image(tokens) - x).pow(2).flatten(1).mean(1)
        psnrs.append(-10 * torch.log10(mse.clamp_min(1e-10)))
        for t in tokens:
            used[t.flatten()] = True
    return {"heldout_psnr_db": round(torch.cat(psnrs).mean().item(), 2),
            "codebook_usage": round(used.float().mean().item(), 4)}


def _render_chunk(job):
    labels, seed, size, start = job
    return data.make_images(labels, seed, size, start=start)


def render_images(n: int, seed: int, size: int, workers: int = 1, chunk: int = 1000):
    """n procedural images rendered in `workers` processes → (uint8 (n, size, size, 3), int64 labels (n,))."""
    from concurrent.futures import ProcessPoolExecutor

    labels = data.make_labels(n, seed)
    jobs = [(labels[i:i + chunk], seed, size, i) for i in range(0, n, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_render_chunk, jobs))
    else:
        chunks = [_render_chunk(j) for j in jobs]
    return np.concatenate(chunks), labels


def train_vqvae(args) -> dict:
    """Train TINY_VQVAE on procedural images; write <out>.safetensors/.json; return the JSON metadata."""
    if args.eval_seed == args.seed:
        raise ValueError(f"--eval-seed must differ from --seed (both {args.seed})")
    cfg = TINY_VQVAE
    device = resolve_device(args.device)
    autocast = autocast_for(device, precision_of(args, device))
    seed_all(args.seed)
    model = VQVAE(cfg).to(device)
    model.quantize.restart_every = args.restart_every
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    q = model.quantize

    pool = None
    if args.pool:  # render a fixed pool once (fast on many cores) instead of fresh images every step
        pool = data.to_tensor(render_images(args.pool, args.seed, cfg.image_size, args.workers)[0]).to(device)

    def loss_fn(step):
        if pool is None:
            x = train_images(step, args.batch_size, args.seed, cfg.image_size).to(device)
        else:
            g = torch.Generator().manual_seed(derived_seed(args.seed, step))
            x = pool[torch.randint(0, len(pool), (args.batch_size,), generator=g).to(device)]
        with autocast():
            return model(x)[1]

    extra = (lambda: {"train_calls": q.train_calls}, lambda d: setattr(q, "train_calls", d["train_calls"]))
    run = train_loop(model, opt, loss_fn, args, Path(f"{args.out}.ckpt.pt"), extra)
    ev = evaluate_vqvae(model, args.eval_images, args.eval_seed)
    meta = {**run, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr, "pool": args.pool, **ev,
            "eval_images": args.eval_images, "eval_seed": args.eval_seed, "machine": machine_name(device),
            "precision": precision_of(args, device),
            "threads": torch.get_num_threads()}
    save_vqvae(model.cpu(), args.out, meta)
    print({k: v for k, v in meta.items()})
    return meta



# --- VAR (draft and target) ---------------------------------------------------------------


@torch.no_grad()
def token_dataset(vqvae: VQVAE, n: int, seed: int, workers: int = 1, chunk: int = 1000):
    """Render n procedural images and tokenize them → (tokens int16 (n, L), labels int64 (n,)) on the VQ-VAE's device."""
    device = next(vqvae.parameters()).device
    images, labels = render_images(n, seed, vqvae.cfg.image_size, workers, chunk)
    tokens = [torch.cat(vqvae.image_to_tokens(data.to_tensor(images[i:i + chunk]).to(device)), dim=1).to(torch.int16)
              for i in tqdm(range(0, n, chunk), desc="tokenize", dynamic_ncols=True)]
    return torch.cat(tokens), torch.as_tensor(labels, device=device)


def var_loss(model, vqvae: VQVAE, tokens: torch.Tensor, labels: torch.Tensor, autocast) -> torch.Tensor:
    """Teacher-forced cross-entropy over all positions. tokens (B, L) int, labels (B,)."""
    tokens = tokens.long()
    with torch.no_grad():
        latents = vqvae.teacher_inputs(list(tokens.split(list(vqvae.cfg.layout.sizes), dim=1)))
    with autocast():
        logits = model(labels, latents)
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def train_var(args) -> dict:
    """Train a class-conditional VAR on the tokens of a trained VQ-VAE; write <out>.safetensors/.json."""
    from .config import VARConfig
    from .var import VAR
    from .checkpoints import load_vqvae

    device = resolve_device(args.device)
    precision = precision_of(args, device)
    seed_all(args.seed)
    vqvae = load_vqvae(args.vqvae, device)
    vq = vqvae.cfg
    cfg = VARConfig(depth=args.depth, width=args.width, heads=args.heads, vocab_size=vq.vocab_size,
                    z_channels=vq.z_channels, num_classes=data.NUM_CLASSES, patch_nums=vq.patch_nums,
                    cond_drop_rate=args.cond_drop, name=Path(args.out).name)
    model = VAR(cfg).to(device)
    t_data = time.time()
    cache = Path(args.data_cache) if args.data_cache else None
    if cache and cache.exists():
        d = torch.load(cache, map_location=device, weights_only=True)
        tokens, labels, held_tokens, held_labels = d["tokens"], d["labels"], d["held_tokens"], d["held_labels"]
    else:
        tokens, labels = token_dataset(vqvae, args.images, args.data_seed, args.workers)
        held_tokens, held_labels = token_dataset(vqvae, args.eval_images, args.eval_seed, args.workers)
        if cache:
            torch.save({"tokens": tokens, "labels": labels, "held_tokens": held_tokens, "held_labels": held_labels}, cache)
    t_data = time.time() - t_data
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    autocast = autocast_for(device, precision)

    def loss_fn(step):
        g = torch.Generator().manual_seed(derived_seed(args.seed, step))
        idx = torch.randint(0, len(tokens), (args.batch_size,), generator=g).to(device)
        return {"loss": var_loss(model, vqvae, tokens[idx], labels[idx], autocast)}

    run = train_loop(model, opt, loss_fn, args, Path(f"{args.out}.ckpt.pt"))
    model.eval()
    with torch.no_grad():
        held = [var_loss(model, vqvae, held_tokens[i:i + 250], held_labels[i:i + 250], autocast).item()
                for i in range(0, len(held_tokens), 250)]
    meta = {**run, "data_seconds": round(t_data, 1), "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "train_images": args.images, "data_seed": args.data_seed, "eval_images": args.eval_images,
            "eval_seed": args.eval_seed, "heldout_loss": round(float(np.mean(held)), 4),
            "params": model.num_params(), "vqvae": Path(args.vqvae).name, "machine": machine_name(device), "precision": precision,
            "threads": torch.get_num_threads()}
    meta["stored_dtype"] = "float16"
    save_var(model.cpu(), args.out, meta, dtype=torch.float16)
    print(meta)
    return meta


# --- the embedded pair, end to end ----------------------------------------------------------


@dataclass(frozen=True)
class PairRecipe:
    """Every setting `train all` uses. The defaults made the shipped pair on a 2-core CPU (bf16);
    `quick()` shrinks every count for a dry run that touches every stage in a few minutes."""

    classifier_steps: int = 800
    vqvae_steps: int = 1500
    vqvae_batch_size: int = 64
    vqvae_pool: int = 40_000
    images: int = 60_000            # training images tokenized once for both VARs
    eval_images: int = 1000         # held-out images for the VARs' loss
    var_batch_size: int = 32
    target: tuple[int, int, int] = (6, 192, 3)   # depth, width, heads
    target_steps: int = 4500
    target_lr: float = 1e-3
    draft: tuple[int, int, int] = (3, 128, 2)
    draft_steps: int = 2500
    draft_lr: float = 2e-3
    mid: tuple[int, int, int] = (4, 160, 2)      # the plain mid model: a baseline between draft and target
    mid_steps: int = 3500
    mid_lr: float = 1.5e-3
    warmup: int = 200
    per_class: int = 100            # card: images per class per model
    real: int = 1000                # card: real images for FID-tiny
    spec_samples: int = 100         # card: exact speculative runs (batch 1)

    def quick(self) -> "PairRecipe":
        return replace(self, classifier_steps=4, vqvae_steps=4, vqvae_batch_size=8, vqvae_pool=200, images=400,
                       eval_images=100, var_batch_size=4, target_steps=4, draft_steps=4, mid_steps=4, warmup=2, per_class=2,
                       real=50, spec_samples=4)

    def stages(self, work: Path, common: list[str]) -> list[tuple[str, str, list[str], Path]]:
        """(name, module, argv, output stem) of every training stage, in order (the cheap draft before the
        target, so that a problem with the data or the tokens shows early; the plain mid model last: a
        baseline for the speed–quality frontier, not part of the pair)."""
        w = lambda name: str(work / name)  # noqa: E731
        var = ["var", "--vqvae", w("vqvae"), "--batch-size", str(self.var_batch_size), "--images", str(self.images),
               "--eval-images", str(self.eval_images), "--data-cache", w("tokens.pt"), "--warmup", str(self.warmup),
               "--ckpt-every", "100", "--resume", *common]
        return [
            ("classifier", "metrics", ["train", "--out", w("classifier"), "--steps", str(self.classifier_steps)],
             work / "classifier"),
            ("vqvae", "train", ["vqvae", "--out", w("vqvae"), "--steps", str(self.vqvae_steps), "--batch-size",
                                str(self.vqvae_batch_size), "--lr", "2e-3", "--pool", str(self.vqvae_pool),
                                "--ckpt-every", "100", "--seed", "0", "--resume", *common], work / "vqvae"),
            ("draft", "train", var + ["--out", w("draft"), "--depth", str(self.draft[0]), "--width",
                                      str(self.draft[1]), "--heads", str(self.draft[2]), "--steps",
                                      str(self.draft_steps), "--lr", str(self.draft_lr), "--seed", "2"],
             work / "draft"),
            ("target", "train", var + ["--out", w("target"), "--depth", str(self.target[0]), "--width",
                                       str(self.target[1]), "--heads", str(self.target[2]), "--steps",
                                       str(self.target_steps), "--lr", str(self.target_lr), "--seed", "1"],
             work / "target"),
            ("mid", "train", var + ["--out", w("mid"), "--depth", str(self.mid[0]), "--width", str(self.mid[1]),
                                    "--heads", str(self.mid[2]), "--steps", str(self.mid_steps), "--lr",
                                    str(self.mid_lr), "--seed", "3"],
             work / "mid"),
        ]


def stage_done(stem: Path, argv: list[str]) -> bool:
    """A stage is done when its JSON exists and (for a training run) it reached the requested steps."""
    info = Path(f"{stem}.json")
    if not info.is_file():
        return False
    meta = json.loads(info.read_text())
    if "--steps" in argv:
        return meta.get("steps") == int(argv[argv.index("--steps") + 1])
    return True


def train_all(args) -> dict:
    """Run every stage of the recipe into --work, install the pair into --out, then write its card."""
    import importlib

    recipe = PairRecipe().quick() if args.quick else PairRecipe()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, "--precision", args.precision]
    if args.threads:
        common += ["--threads", str(args.threads)]
    (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    times = {}
    for name, module, argv, stem in recipe.stages(work, common):
        if stage_done(stem, argv):
            print(f"== {name}: done ({stem}.json), skipped")
            continue
        print(f"== {name}: python -m sdvar_core.{module} {' '.join(argv)}", flush=True)
        t0 = time.time()
        importlib.import_module(f"sdvar_core.{module}").main(argv)
        times[name] = round(time.time() - t0, 1)
        if not stage_done(stem, argv):
            raise SystemExit(f"stage {name} stopped before its last step (time limit?); rerun to resume")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vqvae", "target", "draft", "mid"):   # mid: assets/tiny/mid.*, read by the card and `bench frontier`
        for ext in ("safetensors", "json"):
            shutil.copy2(work / f"{name}.{ext}", out / f"{name}.{ext}")
    classifier = Path(args.classifier)
    classifier.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("safetensors", "json"):
        shutil.copy2(work / f"classifier.{ext}", Path(f"{classifier}.{ext}"))
    if not args.skip_card:
        from . import card
        card.main(["--folder", str(out), "--classifier", str(classifier), "--work", str(work / "card"),
                   "--per-class", str(recipe.per_class), "--real", str(recipe.real),
                   "--spec-samples", str(recipe.spec_samples), "--recipe", str(work / "recipe.json")])
    print({"stage_seconds_this_invocation": times})
    return times


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdvar_core.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("vqvae", help="train the tiny multi-scale VQ-VAE (config.TINY_VQVAE)")
    add_common_args(p)
    p.add_argument("--restart-every", type=int, default=100, help="dead-code restart period in steps (0 = off)")
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--pool", type=int, default=0, help="train on a fixed pool of this many images (0 = fresh images each step)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that render the pool")
    p = sub.add_parser("var", help="train a draft or target VAR on a trained VQ-VAE's tokens")
    add_common_args(p)
    p.add_argument("--vqvae", required=True, help="stem of the trained VQ-VAE (e.g. assets/tiny/vqvae)")
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--images", type=int, default=100_000, help="training images rendered and tokenized once")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that render the images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the rendered training images")
    p.add_argument("--data-cache", default="", help="reuse the tokenized images from this file (written if absent)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--cond-drop", type=float, default=0.1, help="class dropout rate (enables CFG)")
    p = sub.add_parser("all", help="train the whole embedded pair (classifier, VQ-VAE, target, draft) and write its card")
    p.add_argument("--work", default="out/tiny-work", help="folder for checkpoints, token cache and stage outputs")
    p.add_argument("--out", default=str(TINY_DIR), help="where the finished pair and its card go")
    p.add_argument("--classifier", default=str(CLASSIFIER_STEM), help="where the classifier goes (path stem)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda'")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--quick", action="store_true", help="tiny step counts: a dry run of every stage")
    p.add_argument("--skip-card", action="store_true", help="stop after installing the weights")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.model == "all":
        train_all(args)
        return
    check_common_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"vqvae": train_vqvae, "var": train_var}[args.model](args)


if __name__ == "__main__":
    main()
