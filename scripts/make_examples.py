"""Precompute the example runs the app shows instantly (assets/examples/*.npz).

Each example is one click of the Generate tab — the chosen mode plus the target-only and draft-only
runs with the same seed — made with `sdvar_core.explore.run_click` (what the app runs) on the embedded
pair and saved with `sdvar_core.explore.save_bundle`. Re-run after the embedded weights change:

    PYTHONPATH=. python scripts/make_examples.py [--out assets/examples] [--allow-untrained]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdvar_core import explore  # noqa: E402
from sdvar_core.config import EXAMPLES_DIR  # noqa: E402

# (file stem, title, Generate-tab inputs); unspecified inputs take explore.DEFAULT_INPUTS
EXAMPLES = [
    ("01-speculative-exact", "speculative, exact rule (γ = 2) — heart, seed 0",
     dict(class_name="heart", seed=0, mode="speculative", gamma=2, gamma_auto=False)),
    ("02-speculative-relaxed", "speculative, relaxed (γ = 3, τ = 0.8, λ = 2) — star, seed 1",
     dict(class_name="star", seed=1, mode="speculative", gamma=3, gamma_auto=False, tau=0.8, lenience=2.0)),
    ("03-schedule-sdmask1", "schedule: draft makes scales 1–4, target the rest (sd_mask 1) — circle, seed 2",
     dict(class_name="circle", seed=2, mode="schedule", entry_num=4, sd_mask=1)),
    ("04-schedule-native", "schedule: draft makes scales 1–6, native mask (sd_mask 3) — checker, seed 3",
     dict(class_name="checker", seed=3, mode="schedule", entry_num=6, sd_mask=3)),
]



def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="output folder")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="write examples even when assets/tiny is missing and random weights stand in")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # as the app does on CPU
    bank = explore.PairBank(explore.default_pair_loader())
    pair = bank.get("tiny")
    if "tiny" in bank.notes:
        print(f"warning: {bank.notes['tiny']}", file=sys.stderr)
        if not args.allow_untrained:
            sys.exit("refusing to write examples from untrained weights (pass --allow-untrained to do it anyway)")
    out = Path(args.out)
    for stem, title, given in EXAMPLES:
        inputs = {**explore.DEFAULT_INPUTS, **given}
        if "tiny" in bank.notes:
            title += " [untrained weights]"
        t = time.perf_counter()
        runs = explore.run_click(pair, inputs["mode"], explore.class_index(pair, inputs["class_name"], None),
                                 inputs["seed"], explore.click_settings(inputs))
        explore.save_bundle(out / f"{stem}.npz", runs, inputs, title)
        h = explore.headline(runs["main"], runs["target"], runs["draft"])
        print(f"{stem}: {time.perf_counter() - t:.2f} s, target calls {h['target_calls']}, "
              f"draft calls {h['draft_calls']}, speed-up {h['speedup']:.2f}×, "
              f"{(out / f'{stem}.npz').stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
