"""SDVAR Explorer: speculative decoding on VAR, scale by scale (Gradio app).

The page: a header (model picker, precomputed runs) and five tabs, each laid out and wired by its
module in `ui/`. The runs come from `sdvar_core.explore` (the engine), the figures from
`sdvar_core.viz`; every number on a page comes from runs of the same click. What serving it to the
public needs (limits from SDVAR_* variables, the sweep lane, cleaning up) is in `ui/hosting`.

    python app.py [--weights-dir DIR] [--host HOST] [--port PORT] [--share] [--threads N]
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import atexit
from pathlib import Path

import gradio as gr
import torch

from sdvar_core.config import ASSETS_DIR, CLASSIFIER_STEM, EXAMPLES_DIR, FRONTIER_JSON
from sdvar_core.explore import MODELS, PairBank, default_pair_loader, load_quality_classifier, scan_bundles
from sdvar_core.runtime import resolve_device
from ui import compare_tab, generate_tab, masks_tab, picture_tab, shapes_tab
from ui.common import CSS, View, pair_info
from ui.hosting import Host, Limits, cache_schedule, limit_malloc_arenas, safe, trim_heap_every


def asset_problems(bank: PairBank, skipped: list[str], classifier_stem=CLASSIFIER_STEM) -> list[str]:
    """What could not be used of the shipped files, each naming the file and what still works."""
    problems = []
    if "tiny" in bank.notes:
        problems.append(bank.notes["tiny"])
    problems += [f"{why} This precomputed run is left out; the others and everything else work." for why in skipped]
    _, note = load_quality_classifier(bank.get("tiny"), classifier_stem)
    if note and "embedded pair only" not in note:
        problems.append(f"{note} Sweeps run, without the class-accuracy column.")
    return problems


def problems_markdown(problems: list[str]) -> str:
    """The notice listing `problems`, with the machine's folders shortened to the assets folder's name."""
    def short(text: str) -> str:
        for folder in {ASSETS_DIR.parent, Path.cwd()}:
            text = text.replace(f"{folder}{os.sep}", "")
        return safe(text, 600)
    return ("**Some shipped files could not be used; the app runs without them.**\n\n"
            + "\n".join(f"- {short(p)}" for p in problems))


def build_demo(pair_loader=None, examples_dir=EXAMPLES_DIR, weights_dir: str | None = None,
               limits: Limits | None = None, classifier_stem=CLASSIFIER_STEM, frontier_path=FRONTIER_JSON) -> gr.Blocks:
    """The Gradio app. pair_loader(key) → Pair for the keys of MODELS (default: the zoo);
    examples_dir holds precomputed runs (*.npz made by scripts/make_examples.py); limits default to
    the SDVAR_* environment variables (`ui.hosting`); frontier_path: the precomputed frontier of the
    Compare tab (`bench frontier --json`). A missing or damaged shipped file never stops
    the app: the page's notice names it and what still works."""
    bank = PairBank(pair_loader or default_pair_loader(weights_dir))
    host = Host.create(limits)
    atexit.register(host.files.remove)
    tiny = bank.get("tiny")
    on_cuda = next(tiny.target.parameters()).is_cuda
    bundles, skipped = scan_bundles(examples_dir)
    problems = asset_problems(bank, skipped, classifier_stem)
    precomputed, frontier_problem = compare_tab.load_precomputed(frontier_path)
    problems += [frontier_problem] if frontier_problem else []
    view = View()

    with gr.Blocks(title="SDVAR Explorer", delete_cache=cache_schedule(host.limits)) as demo:
        # the session keeps its last run (what the views need of it), sweep and six masks for session_ttl seconds
        view.last_run = gr.State(None, time_to_live=host.limits.session_ttl)
        view.last_click = gr.State(None, time_to_live=host.limits.session_ttl)   # its calls, for the teaching views
        view.last_sweep = gr.State(None, time_to_live=host.limits.session_ttl)   # the frontier's and the export's
        view.gallery = gr.State(None, time_to_live=host.limits.session_ttl)      # six masks, one seed
        gr.Markdown("# SDVAR Explorer\nSpeculative decoding on **VAR** (next-scale prediction): a small *draft* "
                    "model proposes token maps, a large *target* model checks them. See, scale by scale, which "
                    "draft tokens the target accepted, how each hand-off mask lets tokens attend, and what every "
                    "tensor looks like.")
        if problems:
            gr.Markdown(problems_markdown(problems), elem_classes="notice", elem_id="asset-notice")
        if not on_cuda:
            gr.Markdown("**Running on CPU.** The embedded toy pair answers in a few seconds; the official "
                        "VAR pairs need a GPU to be usable.", elem_classes="notice")
        with gr.Row():
            view.model = gr.Dropdown([(label, key) for key, label in MODELS.items()], value="tiny", label="Models",
                                     scale=2, elem_id="model")
            view.example = gr.Dropdown([b[0] for b in bundles], value=bundles[0][0] if bundles else None,
                                       label="Precomputed runs (instant)", scale=2, elem_id="example",
                                       interactive=bool(bundles))
        view.model_md = gr.Markdown(pair_info(tiny), elem_id="model-info")

        with gr.Tabs():
            with gr.Tab("Generate & inspect", id="generate"):
                generate_tab.build(view, tiny, on_cuda)
            with gr.Tab("Masks", id="masks") as view.masks_tab:
                masks_tab.build(view, tiny.layout)
            with gr.Tab("Shapes", id="shapes"):
                shapes_tab.build(view, tiny.layout.num_scales)
            with gr.Tab("Compare", id="compare"):
                compare_tab.build(view, tiny.layout.num_scales, precomputed)
            with gr.Tab("Your picture", id="picture"):
                picture_tab.build(view, tiny, host.limits.session_ttl)

        generate_tab.wire(view, demo, bank, bundles, host)
        masks_tab.wire(view, demo, bank, host.limits)
        shapes_tab.wire(view)
        compare_tab.wire(view, demo, bank, host, precomputed)
        picture_tab.wire(view, demo, bank, host.limits)
    demo.queue(default_concurrency_limit=4, max_size=host.limits.queue_size)
    demo.sdvar_host = host   # for launch() and the tests
    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False, **kwargs):
    """Launch with the app's theme and CSS, keeping at most limits.max_sessions sessions in memory;
    host/port default to GRADIO_SERVER_NAME/PORT or 127.0.0.1:7860."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    limits = demo.sdvar_host.limits
    kwargs.setdefault("state_session_capacity", limits.max_sessions)
    kwargs.setdefault("show_error", True)   # a failure inside Gradio itself still says what it was
    return demo.launch(server_name=host, server_port=port, share=share, css=CSS,
                       theme=gr.themes.Soft(primary_hue="blue"), **kwargs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", default=None,
                        help="folder with the official var_d*.pth and vae_ch160v4096z32.pth (else $SDVAR_WEIGHTS_DIR)")
    parser.add_argument("--host", default=None, help="bind address (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: the small models gain nothing from more, "
                             "and a busy CPU makes more threads much slower)")
    args = parser.parse_args(argv)
    limit_malloc_arenas()   # before the server's threads start: memory stays flat as sessions come and go
    trim_heap_every()       # and freed memory goes back to the system
    if args.threads or resolve_device("auto").type == "cpu":
        torch.set_num_threads(max(1, args.threads or 1))
    demo = build_demo(weights_dir=args.weights_dir or os.environ.get("SDVAR_WEIGHTS_DIR"))
    launch(demo, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
