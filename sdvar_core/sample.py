"""Sharded, resumable sampling: N images per class into a folder of PNGs, stats, tokens and an .npz.

    python -m sdvar_core.sample --pair tiny --mode speculative --gamma 2 --per-class 50 --out runs/spec
    torchrun --standalone --nproc_per_node=8 -m sdvar_core.sample --pair official ... --out runs/d30

Image j of a job (j = position of its class in --classes × per-class + i) is made in chunk
c = j // batch_size, one `generate` call over that chunk's indices with seed
runtime.derived_seed(seed, c) = seed·1_000_003 + c. Chunks go round-robin to the processes
that torchrun starts (RANK / WORLD_SIZE in the environment; gloo on CPU, NCCL on GPUs, one
process per GPU), so any number of processes gives the same images as one. Image j depends
on the seed, the batch size and the classes of its chunk (a chunk's images share one
generator and, in speculative mode, one round structure), all fixed by the job and j.

Folder layout:
    images/{j:06d}.png    one picture per index
    chunks/{c:06d}.npz    per chunk: `tokens` int16 (n, L) and `stats` (JSON text as uint8);
                          written last, atomically: a chunk is done when it and its PNGs exist
    stats.jsonl           one JSON line per image, sorted by index (appended while running,
                          rebuilt from chunks/ at the end of every invocation): index, class, chunk,
                          target_calls / draft_calls (of its chunk's generate call), accepted_per_scale
                          (its draft tokens accepted as drafted, K counts), seconds (chunk time / images)
    samples.npz           arr_0 uint8 (N, H, W, 3) in index order + labels (N,) int64: the layout
                          the OpenAI guided-diffusion evaluator reads; written once every chunk is done
    tokens.npz            tokens int16 (N, L), labels (N,), patch_nums (K,)
    run.json              {"job": what fixes the images, "runs": one entry per invocation}

Several nodes need --out on a shared file system. Resuming: run the same command again. Done chunks are skipped; a killed run loses at most the
chunks in flight; --max-minutes stops between chunks. A different job (pair, mode, settings, seed, classes, per-class, batch size)
in the same folder is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from dataclasses import asdict, fields
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from .data import CLASS_NAMES
from .engine import MODES, Pair, Settings, generate
from .runtime import derived_seed, resolve_device
from .trace import ACCEPTED

OFFICIAL_NUM_CLASSES = 1000
NUM_SCALES = 10

def gamma_value(text: str):
    """--gamma: a positive integer or 'auto' (the engine validates)."""
    return "auto" if text == "auto" else int(text)


# Settings exposed on the command line: (field, flag type, help). `progressive` stays off (final images only).
SETTING_FLAGS = (
    ("cfg", float, "classifier-free guidance scale (README FID protocol: 1.5)"),
    ("top_k", int, "top-k filter, 0 = off (protocol: 900)"),
    ("top_p", float, "top-p filter, 1 = off (protocol: 0.96)"),
    ("entry_num", int, "schedule mode: the draft makes the first ENTRY_NUM scales"),
    ("schedule", str, "schedule mode: one letter per scale, 'D' or 'T', e.g. DDDDTTTTTT"),
    ("sd_mask", int, "attention rule (0..5) of the incoming model's prefill at a switch"),
    ("gamma", gamma_value, "speculative: scales drafted per round, or 'auto' (planned before each round)"),
    ("accept", str, "speculative acceptance: 'prob' or 'top1'"),
    ("tau", float, "speculative: a scale passes when its accepted fraction >= tau"),
    ("lenience", float, "speculative: lambda >= 1 in min(1, lambda p/q)"),
    ("verify_mask", int, "speculative: attention rule (1..5) of the target's verification"),
    ("precision", str, "'fp32', or autocast: 'bf16' (CUDA, CPUs with native bf16), 'fp16' (CUDA)"),
)
SETTING_SWITCHES = (
    ("adaptive_gamma", "speculative: gamma +1 after a fully accepted round, -1 after an early rejection"),
    ("keep_draft_rejected", "speculative (relaxed): keep the draft's rejected tokens in passing scales"),
)


# ---- the job -------------------------------------------------------------------------------------


def parse_classes(text: str) -> list[int]:
    """'0,3,5-7' → [0, 3, 5, 6, 7]; raises ValueError on anything else."""
    out = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"--classes must be comma-separated ints or ranges like 0,3,5-7, got {text!r}")
        lo = int(lo)
        hi = int(hi) if dash else lo
        if hi < lo:
            raise ValueError(f"--classes range {part!r} is empty")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"--classes lists a class twice: {text!r}")
    return out


def pair_num_classes(spec: str) -> int:
    """Number of classes of a pair spec, read without loading weights ('tiny', 'official' or a folder)."""
    if spec == "tiny":
        return len(CLASS_NAMES)
    if spec == "official":
        return OFFICIAL_NUM_CLASSES
    target_json = Path(spec) / "target.json"
    if not target_json.is_file():
        raise ValueError(f"--pair must be 'tiny', 'official' or a folder with vqvae/draft/target "
                         f".json + .safetensors; {target_json} not found")
    return int(json.loads(target_json.read_text())["config"]["num_classes"])


def load_sample_pair(args, device: torch.device) -> Pair:
    """The pair named by --pair on `device`: the zoo's 'tiny' / 'official', or a folder of our safetensors."""
    from . import zoo

    if args.pair == "tiny":
        return zoo.load_pair("tiny", device=device)
    if args.pair == "official":
        return zoo.load_pair("official", draft_depth=args.draft_depth, target_depth=args.target_depth,
                             weights_dir=args.weights_dir, device=device)
    return zoo.load_pair_folder(args.pair, device)


def job_labels(classes: list[int], per_class: int) -> np.ndarray:
    """Class of every global index: classes[j // per_class]. (N,) int64."""
    return np.repeat(np.asarray(classes, dtype=np.int64), per_class)


def chunk_indices(chunk: int, batch_size: int, total: int) -> range:
    """Global image indices of a chunk."""
    return range(chunk * batch_size, min((chunk + 1) * batch_size, total))


# ---- files ---------------------------------------------------------------------------------------


def image_path(out: Path, j: int) -> Path:
    return out / "images" / f"{j:06d}.png"


def chunk_path(out: Path, c: int) -> Path:
    return out / "chunks" / f"{c:06d}.npz"


def write_atomic(path: Path, write) -> None:
    """write(file object) into a temporary sibling, then rename it onto `path` (never a half file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def chunk_done(out: Path, c: int, indices: range) -> bool:
    return chunk_path(out, c).is_file() and all(image_path(out, j).is_file() for j in indices)


def read_chunk(out: Path, c: int) -> tuple[np.ndarray, list[dict]]:
    """(tokens int16 (n, L), stats lines) of a done chunk."""
    with np.load(chunk_path(out, c)) as z:
        return z["tokens"], json.loads(z["stats"].tobytes().decode())


def append_stats(out: Path, lines: list[dict]) -> None:
    """Append lines to stats.jsonl in one write (O_APPEND), so concurrent ranks do not interleave."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    fd = os.open(out / "stats.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_samples_npz(path: Path, out: Path, labels: np.ndarray) -> None:
    """samples.npz from the PNGs, streamed (one image in memory at a time): arr_0 (N, H, W, 3) uint8, labels."""
    first = np.asarray(Image.open(image_path(out, 0)).convert("RGB"))
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(labels), *first.shape)}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                for j in range(len(labels)):
                    img = np.asarray(Image.open(image_path(out, j)).convert("RGB"))
                    if img.shape != first.shape:
                        raise ValueError(f"{image_path(out, j)} has shape {img.shape}, expected {first.shape}")
                    member.write(np.ascontiguousarray(img).tobytes())
            with zf.open("labels.npy", "w") as member:
                np.lib.format.write_array(member, labels)

    write_atomic(path, write)


def finish(out: Path, num_chunks: int, batch_size: int, labels: np.ndarray, patch_nums) -> int:
    """Rebuild stats.jsonl from the done chunks; when all are done write samples.npz and tokens.npz.

    Returns the number of chunks still to make. Run by rank 0 only, after every rank has stopped writing.
    """
    total = len(labels)
    done = [c for c in range(num_chunks) if chunk_done(out, c, chunk_indices(c, batch_size, total))]
    tokens, lines = [], []
    for c in done:
        t, s = read_chunk(out, c)
        tokens.append(t)
        lines.extend(s)
    write_atomic(out / "stats.jsonl", lambda f: f.write("".join(json.dumps(x) + "\n" for x in lines).encode()))
    if len(done) < num_chunks:
        return num_chunks - len(done)
    arrays = dict(tokens=np.concatenate(tokens), labels=labels, patch_nums=np.asarray(patch_nums))
    write_atomic(out / "tokens.npz", lambda f: np.savez(f, **arrays))
    write_samples_npz(out / "samples.npz", out, labels)
    return 0


# ---- one chunk -----------------------------------------------------------------------------------


def make_chunk(pair: Pair, args, settings: dict, out: Path, c: int, labels: np.ndarray) -> list[dict]:
    """Generate chunk c, write its PNGs then its chunks/ file; returns its stats lines."""
    indices = chunk_indices(c, args.batch_size, len(labels))
    t0 = time.perf_counter()
    result = generate(pair, args.mode, labels[indices.start:indices.stop].tolist(), derived_seed(args.seed, c),
                      progressive=False, **settings)
    seconds = time.perf_counter() - t0
    trace = result.trace
    for j, img in zip(indices, result.images):
        write_atomic(image_path(out, j), lambda f, img=img: Image.fromarray(img).save(f, format="PNG"))
    tokens = trace.tokens.astype(np.int16)   # (n, L)
    accepted = np.stack([(s.status == ACCEPTED).sum(1) for s in trace.scales], axis=1)  # (n, K)
    lines = [{"index": j, "class": int(labels[j]), "chunk": c, "target_calls": trace.target_calls,
              "draft_calls": trace.draft_calls, "accepted_per_scale": accepted[i].tolist(),
              "seconds": seconds / len(indices)}
             for i, j in enumerate(indices)]
    stats = np.frombuffer(json.dumps(lines).encode(), dtype=np.uint8)
    write_atomic(chunk_path(out, c), lambda f: np.savez(f, tokens=tokens, stats=stats))
    return lines


# ---- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdvar_core.sample", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Launch with torchrun --nproc_per_node=P to shard over P processes.")
    p.add_argument("--pair", default="tiny", help="'tiny', 'official', or a folder holding vqvae/draft/target "
                                                  ".json + .safetensors")
    p.add_argument("--draft-depth", type=int, default=None, help="official pair: draft depth (default 16)")
    p.add_argument("--target-depth", type=int, default=None, help="official pair: target depth (default 30)")
    p.add_argument("--weights-dir", default=None, help="official pair: folder with var_d*.pth and the VAE")
    p.add_argument("--mode", required=True, help=f"one of {', '.join(MODES)}")
    for name, typ, text in SETTING_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=text)
    for name, text in SETTING_SWITCHES:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=text)
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--classes", default=None, help="e.g. 0,1,5-9 (default: every class of the pair)")
    p.add_argument("--batch-size", type=int, default=16, help="images per chunk (one generate call); "
                                                              "changing it changes the images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--max-chunks", type=int, default=None,
                   help="stop after this many new chunks (all processes together); rerun to go on")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new chunk after this many minutes (each process); rerun to go on")
    p.add_argument("--device", default="auto", help="'auto' (cuda:LOCAL_RANK if available), 'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads per process (0 = leave as is)")
    return p


def check_args(parser: argparse.ArgumentParser, args) -> tuple[dict, list[int]]:
    """Validate everything that needs no model; returns (settings given on the command line, classes)."""
    settings = {f.name: getattr(args, f.name) for f in fields(Settings)
                if getattr(args, f.name, None) is not None}
    try:
        Settings(**settings).validate(args.mode, NUM_SCALES)
        if args.mode == "schedule":
            Settings(**settings).schedule_string(args.mode, NUM_SCALES)
        num_classes = pair_num_classes(args.pair)
        classes = list(range(num_classes)) if args.classes is None else parse_classes(args.classes)
    except ValueError as e:
        parser.error(str(e))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        parser.error(f"--classes must be in 0..{num_classes - 1} for pair {args.pair!r}, got {bad[:10]}")
    for flag, value, low in (("--per-class", args.per_class, 1), ("--batch-size", args.batch_size, 1),
                             ("--seed", args.seed, 0), ("--threads", args.threads, 0)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.max_chunks is not None and args.max_chunks < 1:
        parser.error(f"--max-chunks must be >= 1, got {args.max_chunks}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.pair != "official" and (args.draft_depth, args.target_depth, args.weights_dir) != (None, None, None):
        parser.error("--draft-depth/--target-depth/--weights-dir apply to --pair official only")
    try:
        resolve_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    return settings, classes


def distributed_setup(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; initialises the process group when world > 1."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = resolve_device(device_arg).type == "cuda"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"process LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): "
                             f"start at most one process per GPU (or use --device cpu)")
        torch.cuda.set_device(device)
    if world > 1:
        # long timeout: ranks wait at the final barrier while the slowest finishes its last chunk
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2),
                                device_id=device if use_cuda else None)
    return rank, world, device


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def job_record(args, settings: dict, classes: list[int], pair: Pair) -> dict:
    """What fixes the images; a resumed run must match it."""
    return dict(pair=pair.name, draft_depth=pair.draft.cfg.depth,
                target_depth=pair.target.cfg.depth, mode=args.mode,
                settings={k: v for k, v in asdict(Settings(**settings)).items() if k != "progressive"},
                seed=args.seed, classes=classes, per_class=args.per_class, batch_size=args.batch_size,
                image_size=pair.vqvae.cfg.image_size, patch_nums=list(pair.layout.patch_nums))


def run_record(args, world: int, device: torch.device, argv: list[str]) -> dict:
    """One invocation: where the pair came from, how many processes, on what, with which versions."""
    return dict(started=time.strftime("%Y-%m-%dT%H:%M:%S"), pair_source=args.pair, world_size=world, device=str(device),
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                argv=argv, versions=dict(python=platform.python_version(), torch=torch.__version__,
                                         numpy=np.__version__, cuda=torch.version.cuda))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    settings, classes = check_args(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rank, world, device = distributed_setup(args.device)
        pair = load_sample_pair(args, device)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    labels = job_labels(classes, args.per_class)
    total = len(labels)
    num_chunks = -(-total // args.batch_size)
    job = job_record(args, settings, classes, pair)

    # Read-only phase on every rank (no rank writes before the barrier): same view of the folder.
    runs = []
    if (out / "run.json").is_file():
        previous = json.loads((out / "run.json").read_text())
        if previous["job"] != job:
            diff = sorted(k for k in job if previous["job"].get(k) != job[k])
            parser.error(f"{out} holds a different job (differs in: {', '.join(diff)}); use another --out")
        runs = previous["runs"]
    todo = [c for c in range(num_chunks) if not chunk_done(out, c, chunk_indices(c, args.batch_size, total))]
    if args.max_chunks is not None:
        todo = todo[:args.max_chunks]
    mine = todo[rank::world]
    barrier(world)

    if rank == 0:
        for d in ("images", "chunks"):
            (out / d).mkdir(parents=True, exist_ok=True)
            for stale in (out / d).glob(".*.tmp"):   # left by a killed run
                stale.unlink()
        runs.append(run_record(args, world, device, argv))
        record = json.dumps(dict(job=job, runs=runs), indent=2) + "\n"
        write_atomic(out / "run.json", lambda f: f.write(record.encode()))
        print(f"{total} images in {num_chunks} chunks of {args.batch_size}; {len(todo)} chunk(s) to make now "
              f"on {world} process(es)", flush=True)
    barrier(world)

    t0 = time.perf_counter()
    deadline = None if args.max_minutes is None else t0 + 60 * args.max_minutes
    made = 0
    for c in tqdm(mine, desc=f"{args.mode} rank {rank}", disable=rank != 0, file=sys.stderr):
        if deadline is not None and time.perf_counter() > deadline:   # between chunks: nothing half-made
            break
        append_stats(out, make_chunk(pair, args, settings, out, c, labels))
        made += 1
    seconds = time.perf_counter() - t0
    barrier(world)

    if rank == 0:
        left = finish(out, num_chunks, args.batch_size, labels, pair.layout.patch_nums)
        print(json.dumps(dict(made_chunks_rank0=made, rank0_seconds=round(seconds, 2), chunks_left=left)), flush=True)
        if left:
            print(f"incomplete: {left} chunk(s) left; rerun the same command to resume", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
