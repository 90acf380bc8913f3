"""Time the app the way a user meets it: start → page ready, and click → complete visualisation.

Launches `python app.py` on a free port as a subprocess, polls until the page answers, then times
gradio_client calls of /generate (each one click: the chosen mode plus the target-only and draft-only
comparisons, all figures rendered and sent). Prints a small table of medians.

    PYTHONPATH=. python scripts/bench_app.py [--repeats 5] [-- extra app.py arguments]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdvar_core.config import EXAMPLES_DIR  # noqa: E402
from sdvar_core.explore import DEFAULT_INPUTS, list_bundles  # noqa: E402  (the timed app runs in its own process)
from ui.common import named_outputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_check import free_port, stop_app  # noqa: E402



def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    """Seconds until GET url answers 200 (the page and its config are served)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="clicks per row (median reported)")
    parser.add_argument("app_args", nargs="*", help="extra arguments for app.py (after --)")
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    t_spawn = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *args.app_args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = wait_ready(url, proc)
        from gradio_client import Client

        t = time.perf_counter()
        client = Client(url, verbose=False)
        connect = time.perf_counter() - t
        rows = [("app start → page ready (process spawn → GET /config 200)", [ready]),
                ("client connect", [connect])]
        cases = [("click → speculative + target-only + draft-only", dict(mode="speculative")),
                 ("click → schedule (entry_num 4) + both comparisons", dict(mode="schedule")),
                 ("click → target only + draft only", dict(mode="target"))]
        info = None
        for label, kw in cases:
            times = []
            for i in range(args.repeats + 1):   # the first click warms up and is reported separately
                t = time.perf_counter()
                out = client.predict(api_name="/generate", **{**DEFAULT_INPUTS, **kw, "seed": 100 + i})
                times.append(time.perf_counter() - t)
                info = info or named_outputs(client.config, "/generate", out)["summary"]
            rows.append((label + " (first click)", times[:1]))
            rows.append((label, times[1:]))
        bundles = list_bundles(EXAMPLES_DIR)
        if bundles:
            t = time.perf_counter()
            client.predict(api_name="/load_example", example=bundles[0][0])
            rows.append(("show a precomputed run (/load_example)", [time.perf_counter() - t]))
        t = time.perf_counter()
        client.predict(api_name="/scale_view", scale=3)
        rows.append(("scrub one scale (/scale_view)", [time.perf_counter() - t]))
        t = time.perf_counter()
        client.predict(api_name="/mask_view", mask_rule=1, mask_entry=4, mask_full=False)
        rows.append(("mask view (/mask_view)", [time.perf_counter() - t]))
    finally:
        stop_app(proc, timeout=10)
    print(f"spawned at +0.0 s, total bench {time.perf_counter() - t_spawn:.1f} s; pair: {info.split('**')[3]}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  median s   min s   max s   n")
    for label, times in rows:
        print(f"{label.ljust(width)}  {statistics.median(times):8.2f}  {min(times):6.2f}  {max(times):6.2f}  {len(times):2d}")


if __name__ == "__main__":
    main()
