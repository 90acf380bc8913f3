"""How the app's memory grows as new sessions arrive: start `python app.py` in its own process, open
sessions one after another through gradio_client, and record the server's resident memory (RSS).

A session does what a visitor's page does: the precomputed run a page opens on (load_example), a
scrub to scale 3, the Masks tab (mask_view, keys_view) and the Shapes tab; every --generate-every-th
session also clicks Generate. Each session is a new session hash, as a new browser tab would be.

    python scripts/memory_check.py                       # RSS after 20 and 300 sessions (a few minutes)
    python scripts/memory_check.py --sessions 20,100,300 --generate-every 10 --env SDVAR_MAX_SESSIONS=64

The target (issue 10): RSS after 300 sessions within +60 MB of RSS after 20. Results: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_app(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End an app started as a subprocess: terminate, then kill if it has not exited within `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_app(env: dict | None = None, port: int | None = None, timeout: float = 180.0, log_path=None):
    """(process, url) of `python app.py` on a free port, once it answers; env is added to os.environ."""
    from gradio_client import Client

    port = port or free_port()
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    err = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=full_env,
                            stdout=err, stderr=err)
    url = f"http://127.0.0.1:{port}/"
    start = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode} before answering")
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:  # not up yet
            if time.time() - start > timeout:
                proc.kill()
                raise RuntimeError(f"app.py did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


def first_example(client) -> str | None:
    """The title of the first precomputed run (the choices of the 'example' dropdown)."""
    for c in client.config["components"]:
        if c["props"].get("elem_id") == "example":
            choices = c["props"].get("choices") or []
            return choices[0][1] if choices else None
    return None


def one_session(client, example: str | None, i: int, generate: bool) -> None:
    """What one visitor's page does (see the module docstring), in a fresh session."""
    client.reset_session()
    if example is not None:
        client.predict(example=example, api_name="/load_example")
        client.predict(scale=3, api_name="/scale_view")
    client.predict(mask_rule=1, mask_entry=4, mask_full=False, api_name="/mask_view")
    client.predict(mask_rule=1, mask_entry=4, pick_scale=6, pick_row=2, pick_col=3, api_name="/keys_view")
    client.predict(shape_model="all", shape_scale="all", api_name="/shapes")
    if generate:
        client.predict(class_name="circle", seed=i, mode="speculative", api_name="/generate")


def measure(checkpoints=(20, 300), generate_every: int = 10, env: dict | None = None, log=print,
            app_log=None) -> dict:
    """{sessions: RSS MiB} after each checkpoint (plus 0: after start-up), from one app process
    (whose output goes to the file app_log when given)."""
    from gradio_client import Client

    proc, url = start_app(env, log_path=app_log)
    try:
        client = Client(url, verbose=False)
        example = first_example(client)
        out = {0: rss_mb(proc.pid)}
        log(f"started: RSS {out[0]:.0f} MiB")
        t0 = time.time()
        for i in range(1, max(checkpoints) + 1):
            one_session(client, example, i, generate_every > 0 and i % generate_every == 0)
            if i in checkpoints:
                time.sleep(1.5)   # let the server finish the last responses
                out[i] = rss_mb(proc.pid)
                log(f"{i:4d} sessions: RSS {out[i]:.0f} MiB ({time.time() - t0:.0f} s)")
        return out
    finally:
        stop_app(proc)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="20,300", help="checkpoints, comma-separated (default 20,300)")
    parser.add_argument("--generate-every", type=int, default=10, help="every n-th session clicks Generate (0: none)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the app's environment")
    parser.add_argument("--app-log", default=None, help="write the app's output to this file")
    args = parser.parse_args(argv)
    checkpoints = sorted(int(n) for n in args.sessions.split(","))
    env = dict(e.split("=", 1) for e in args.env)
    result = measure(checkpoints, args.generate_every, env, app_log=args.app_log)
    first, last = checkpoints[0], checkpoints[-1]
    growth = result[last] - result[first]
    print(json.dumps({"rss_mib": result, "growth_mib": round(growth, 1), "from": first, "to": last,
                      "generate_every": args.generate_every, "env": env}))
    print(f"RSS after {last} sessions − after {first}: {growth:+.1f} MiB (target: within +60)")


if __name__ == "__main__":
    main()
