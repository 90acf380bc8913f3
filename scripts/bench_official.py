"""Time the official-size path the way a user meets it, through the app's API.

Writes official-layout random weights (VAR-d{draft}, VAR-d{target} and the VQ-VAE, made by this
project's code in the official key layout: no download), serves `app.py --weights-dir` on them with a
fresh planner cache, and measures with gradio_client: picking the pair; the first click (speculative,
γ auto, bf16): time to the first streamed scale and to the end; a second click that changes only γ
(auto → 1); a target-alone click of another seed, whose run time is one plain target-alone
generation; the app's resident memory with the pair loaded and its peak. Then, in this process with
the app gone, the γ planner's first use (`calibration.calibrate`, the cost prior) against one plain
target-alone generation, each after a warm-up generation.

    PYTHONPATH=. python scripts/bench_official.py [--weights DIR] [--draft 16] [--target 20] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_app import wait_ready  # noqa: E402
from memory_check import free_port, stop_app  # noqa: E402
from sdvar_core.explore import DEFAULT_INPUTS  # noqa: E402
from ui.common import named_outputs  # noqa: E402


def write_weights(folder: Path, depths: list[int]) -> None:
    """Random official-layout files for `depths` and the VQ-VAE (skipped where present)."""
    import torch

    from sdvar_core.config import OFFICIAL_VQVAE, official_var_config, official_var_file
    from sdvar_core.var import VAR
    from sdvar_core.vqvae import VQVAE
    from sdvar_core.zoo import OFFICIAL_VAE_FILE

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for depth in depths:
        path = folder / official_var_file(depth)
        if not path.is_file():
            var = VAR(official_var_config(depth))
            var.init_weights()
            torch.save(var.state_dict(), path)
            del var
    if not (folder / OFFICIAL_VAE_FILE).is_file():
        torch.save(VQVAE(OFFICIAL_VQVAE).state_dict(), folder / OFFICIAL_VAE_FILE)


def memory_gib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) GiB of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = {k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) for k in ("VmRSS", "VmHWM")}
    return kib["VmRSS"] / 2**20, kib["VmHWM"] / 2**20


def timed_click(client, inputs: dict) -> dict:
    """Submit one /generate and watch its streamed outputs: seconds to the first scale and to the end."""
    t0 = time.perf_counter()
    job = client.submit(api_name="/generate", **inputs)
    first_scale, seen = None, 0
    while not job.done():
        outputs = job.outputs()
        if first_scale is None and len(outputs) > seen:   # the first output whose line names a scale
            seen = len(outputs)
            if any(re.search(r", scale \d+/\d+", str(named_outputs(client.config, "/generate", o).get("showing", "")))
                   for o in outputs):
                first_scale = time.perf_counter() - t0
        time.sleep(0.01)
    result = job.result()
    total = time.perf_counter() - t0
    out = named_outputs(client.config, "/generate", result)
    return {"first_scale": first_scale, "total": total, "wall": float(out["wall-time"].split()[0]),
            "summary": out["summary"], "outputs": len(job.outputs())}


def prior_vs_generation(weights: str, draft: int, target: int, threads: int) -> tuple[float, float]:
    """(seconds of the planner's cost prior, seconds of one target-alone generation), in this process."""
    import torch

    from sdvar_core import calibration, generate, zoo

    torch.set_num_threads(threads)
    pair = zoo.load_pair(draft_depth=draft, target_depth=target, weights_dir=weights, device="cpu", precision="bf16")
    generate(pair, "target", [207], seed=5, precision="bf16", progressive=False)   # warm-up
    t = time.perf_counter()
    calibration.calibrate(pair, 1, "bf16")
    prior = time.perf_counter() - t
    gen = generate(pair, "target", [207], seed=6, precision="bf16", progressive=False).trace.timings["total"]
    return prior, gen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(Path(tempfile.gettempdir()) / "sdvar-official-random"))
    parser.add_argument("--draft", type=int, default=16)
    parser.add_argument("--target", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    key = f"d{args.draft}-d{args.target}"

    t = time.perf_counter()
    write_weights(Path(args.weights), [args.draft, args.target])
    print(f"weights ready in {args.weights} ({time.perf_counter() - t:.1f} s)", flush=True)

    from gradio_client import Client

    from sdvar_core.runtime import machine_name
    import torch

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cache = tempfile.mkdtemp(prefix="sdvar-planner-")   # a fresh planner cache: the first use is measured
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT), "SDVAR_CACHE_DIR": cache}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--weights-dir",
                             args.weights, "--threads", str(args.threads)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    try:
        rows.append(("app start → page ready", wait_ready(url, proc, timeout=300)))
        client = Client(url, verbose=False)
        base = {**DEFAULT_INPUTS, "model": key, "class_id": 207, "precision": "bf16", "mode": "speculative"}
        t = time.perf_counter()
        client.predict(api_name="/select_model", model=key)
        rows.append((f"pick {key} (load, weight matrices in bf16)", time.perf_counter() - t))
        rss_loaded, _ = memory_gib(proc.pid)
        first = timed_click(client, {**base, "seed": 0, "gamma_auto": True})
        second = timed_click(client, {**base, "seed": 0, "gamma_auto": False, "gamma": 1})
        plain = timed_click(client, {**base, "seed": 1, "mode": "target"})
        rss_end, peak = memory_gib(proc.pid)
    finally:
        stop_app(proc)
    ref = plain["wall"]
    rows += [("first click: first scale on screen", first["first_scale"]),
             ("first click (speculative, γ auto, fresh planner cache): whole click", first["total"]),
             ("second click (γ auto → 1, same class and seed): whole click", second["total"]),
             ("plain target-alone generation (wall time of the target-alone run)", ref)]
    print(f"machine: {machine_name(torch.device('cpu')).split(', torch')[0]}, app threads {args.threads}; "
          f"pair {key}; bf16")
    width = max(len(r[0]) for r in rows)
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds:8.2f} s")
    print(f"{'first click ÷ plain target-alone generation'.ljust(width)}  {first['total'] / ref:8.2f} ×")
    print(f"{'second click ÷ plain target-alone generation'.ljust(width)}  {second['total'] / ref:8.2f} ×")
    print(f"{'resident memory with the pair loaded'.ljust(width)}  {rss_loaded:8.2f} GiB")
    print(f"{'resident memory after the clicks / peak'.ljust(width)}  {rss_end:8.2f} / {peak:.2f} GiB")
    print(f"streamed outputs per click: {first['outputs']}, {second['outputs']}, {plain['outputs']}")
    print("first click:", re.sub(r"\s+", " ", first["summary"])[:400])
    print("second click:", re.sub(r"\s+", " ", second["summary"])[:400])
    prior, gen = prior_vs_generation(args.weights, args.draft, args.target, args.threads)
    print(f"in-process: the γ planner's cost prior {prior:.2f} s, one target-alone generation {gen:.2f} s "
          f"→ {prior / gen:.2f} of a generation")


if __name__ == "__main__":
    main()
