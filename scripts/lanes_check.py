"""Is a Generate served while another session's sweep runs, and how fast does Stop end a sweep?

Starts `python app.py` (the embedded pair) in its own process. Times a few Generate clicks of one
session alone, then starts a long sweep in a second session, times the same clicks while it runs,
and presses that session's Stop (`/stop_sweep`), timing until the sweep's job has ended.

    python scripts/lanes_check.py [--clicks 3]

Results: BENCHMARKS.md (issue 10).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memory_check  # noqa: E402

GENERATE = dict(class_name="circle", mode="speculative")
SWEEP = dict(sweep_kind="schedule", sweep_seeds="0", sweep_classes="all", sweep_entries=[str(e) for e in range(1, 10)],
             sweep_dirs=["D→T", "T→D"], sweep_masks=["1", "3"], sweep_gammas=[], sweep_taus=[])


def timed_clicks(client, n: int, seed0: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.predict(api_name="/generate", seed=seed0 + i, **GENERATE)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> None:
    from gradio_client import Client

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=3)
    args = parser.parse_args(argv)
    proc, url = memory_check.start_app()
    try:
        user, sweeper = Client(url, verbose=False), Client(url, verbose=False)
        timed_clicks(user, 1, 100)                      # warm-up
        alone = timed_clicks(user, args.clicks, 200)
        job = sweeper.submit(api_name="/sweep", **SWEEP)
        while not job.status().progress_data and not job.done():
            time.sleep(0.2)                             # the sweep has started computing
        during = timed_clicks(user, args.clicks, 300)
        running = not job.done()
        t0 = time.perf_counter()
        sweeper.predict(api_name="/stop_sweep")
        while not job.done():
            time.sleep(0.01)
        stop = time.perf_counter() - t0
        result = {"generate_alone_s": alone, "generate_during_sweep_s": during, "sweep_still_running": running,
                  "stop_s": stop, "load": os.getloadavg()}
        print(json.dumps(result))
        print(f"Generate alone {min(alone):.2f}–{max(alone):.2f} s; during a sweep {min(during):.2f}–{max(during):.2f} s"
              f" (sweep still running: {running}); Stop → sweep ended in {stop:.2f} s; load {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
