"""SDVAR Explorer: speculative decoding on VAR, scale by scale (Gradio app).

Layout and event wiring. The figures come from `sdvar_core.viz` (pure functions of a Trace);
the runs from `sdvar_core.engine.generate`. Every number on a page comes from runs of the same click.

    python app.py [--weights-dir DIR] [--host HOST] [--port PORT] [--share] [--threads N]
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import functools
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch

import gradio as gr

from sdvar_core import masks, viz
from sdvar_core.config import TINY_VQVAE, ScaleLayout, VARConfig
from sdvar_core.data import CLASS_NAMES
from sdvar_core.engine import Pair
from sdvar_core.explore import (DIRECTIONS, config_label, headline, list_bundles, load_bundle, load_quality_classifier,
                                parse_seeds, run_click, run_config, sweep_configs, sweep_row)

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"

MODELS = {"tiny": "Embedded toy pair (64 px, 10 shapes) — CPU, offline",
          "d16-d20": "VAR d16 → d20 (ImageNet 256 px)",
          "d16-d24": "VAR d16 → d24 (ImageNet 256 px)",
          "d16-d30": "VAR d16 → d30 (ImageNet 256 px)"}
OFFICIAL_DEPTHS = {"d16-d20": (16, 20), "d16-d24": (16, 24), "d16-d30": (16, 30)}
MODES = [("speculative (draft proposes, target verifies)", "speculative"),
         ("schedule (hand-off at entry_num)", "schedule"),
         ("target only", "target"), ("draft only", "draft")]
SWEEP_COLUMNS = ["config", "images", "target_calls", "draft_calls", "wall_s", "speedup", "token_agreement",
                 "pixel_psnr_db", "class_accuracy"]   # shown in the app; the CSV has every column
# The Generate tab's inputs after the model, with their defaults, in the order of the /generate endpoint's
# parameters; precomputed examples store them under these names.
DEFAULT_INPUTS = dict(class_name=CLASS_NAMES[8], class_id=207, seed=0, mode="speculative", cfg=1.5, top_k=0,
                      top_p=1.0, entry_num=4, schedule="", sd_mask=3, gamma=2, accept="prob", tau=1.0, lenience=1.0,
                      adaptive_gamma=False, keep_draft_rejected=False, precision="fp32", more_smooth=False)
INPUT_KEYS = tuple(DEFAULT_INPUTS)

CSS = """
#headline .block { min-width: 0 !important; }
#headline input, #headline textarea { font-size: 1.35rem !important; font-weight: 600; }
.notice { padding: 6px 12px; border-radius: 6px; background: #fff7e6; border: 1px solid #f0c36d; }
.notice p { margin: 0 !important; }
footer { display: none !important; }
"""


# ---- models -------------------------------------------------------------------------------------

def random_pair(name: str = "tiny (random weights)") -> Pair:
    """An untrained pair with the embedded pair's layout: the app's fallback when assets/tiny is missing."""
    from sdvar_core.vqvae import VQVAE
    from sdvar_core.var import VAR

    torch.manual_seed(0)
    vq = TINY_VQVAE
    mk = lambda d, w, h: VAR(VARConfig(depth=d, width=w, heads=h, vocab_size=vq.vocab_size,  # noqa: E731
                                       z_channels=vq.z_channels, num_classes=len(CLASS_NAMES))).eval()
    return Pair(VQVAE(vq).eval(), mk(2, 64, 2), mk(4, 128, 4), name=name, class_names=list(CLASS_NAMES))


def default_pair_loader(weights_dir: str | None = None):
    """key → Pair: 'tiny' from assets/tiny, the official pairs from weights_dir / $SDVAR_WEIGHTS_DIR / the hub."""
    def load(key: str) -> Pair:
        from sdvar_core import zoo

        if key == "tiny":
            return zoo.load_pair("tiny")
        draft, target = OFFICIAL_DEPTHS[key]
        return zoo.load_pair(draft_depth=draft, target_depth=target, weights_dir=weights_dir)
    return load


class PairBank:
    """Loaded pairs, shared read-only by every session (models only; results live in gr.State).

    Holds the embedded pair and at most one official pair: loading another official pair drops the
    previous one (a d16 + d30 pair alone is about 9 GB in fp32).
    """

    def __init__(self, loader):
        self.loader = loader
        self.pairs: dict[str, Pair] = {}
        self.notes: dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> Pair:
        """The pair for `key`; ValueError with a clear message when it cannot be loaded.

        If the embedded pair's weights are missing, an untrained pair stands in (noted in `notes`).
        """
        if key not in MODELS:
            raise ValueError(f"unknown model {key!r}; choose one of {', '.join(MODELS)}")
        with self.lock:
            if key not in self.pairs:
                if key != "tiny":
                    for other in [k for k in self.pairs if k != "tiny"]:
                        del self.pairs[other]
                try:
                    self.pairs[key] = self.loader(key)
                except (ValueError, ImportError, OSError) as e:
                    if key != "tiny":
                        raise ValueError(f"{MODELS[key]} could not be loaded: {e}") from e
                    self.pairs[key] = random_pair()
                    self.notes[key] = (f"The embedded weights could not be loaded ({e}); an untrained pair with "
                                       "random weights stands in, so pictures are noise.")
            return self.pairs[key]


def pair_info(pair: Pair, note: str = "") -> str:
    """Markdown describing the loaded pair."""
    def size(m):
        return f"depth {m.cfg.depth}, width {m.cfg.width}, {m.num_params() / 1e6:.2f} M params"
    device = next(pair.target.parameters()).device
    text = (f"**{pair.name}** on `{device}` — draft: {size(pair.draft)}; target: {size(pair.target)}; "
            f"{pair.vqvae.cfg.image_size} px images, codebook {pair.vqvae.cfg.vocab_size}, "
            f"{pair.layout.num_scales} scales = {pair.layout.total} tokens.")
    return text + (f"\n\n**Note:** {note}" if note else "")


def class_index(pair: Pair, class_name, class_id) -> int:
    """The class id from the name picker (pairs with names) or the number box (ImageNet ids)."""
    if pair.class_names:
        if class_name not in pair.class_names:
            raise ValueError(f"unknown class {class_name!r}; choose one of {', '.join(pair.class_names)}")
        return pair.class_names.index(class_name)
    if class_id is None or float(class_id) != int(class_id) or not 0 <= int(class_id) < pair.num_classes:
        raise ValueError(f"class id must be an integer in 0..{pair.num_classes - 1}, got {class_id}")
    return int(class_id)


# ---- runs ---------------------------------------------------------------------------------------

def click_settings(inputs: dict) -> dict:
    """Settings for engine.generate from the Generate tab's values (keys of INPUT_KEYS; missing ones take
    DEFAULT_INPUTS). A schedule string, when given, wins over entry_num. Validation is the engine's."""
    v = {**DEFAULT_INPUTS, **inputs}
    s = dict(cfg=float(v["cfg"]), top_k=int(v["top_k"]), top_p=float(v["top_p"]), sd_mask=int(v["sd_mask"]),
             gamma=int(v["gamma"]), accept=str(v["accept"]), tau=float(v["tau"]), lenience=float(v["lenience"]),
             adaptive_gamma=bool(v["adaptive_gamma"]), keep_draft_rejected=bool(v["keep_draft_rejected"]),
             precision=str(v["precision"]), more_smooth=bool(v["more_smooth"]))
    if v["mode"] == "schedule":
        text = (v["schedule"] or "").strip().upper().replace(" ", "")
        if text:
            s["schedule"] = text
        else:
            s["entry_num"] = int(v["entry_num"])
    return s


# ---- rendering a run into the Generate tab ------------------------------------------------------

def stat_values(runs: dict, class_names=None) -> tuple:
    """(target calls, draft calls, wall time text, speed-up text, summary Markdown) of one click."""
    main = runs["main"]
    h = headline(main, runs["target"], runs["draft"])
    st = main.settings
    cls = st["class_ids"][0]
    label = class_names[cls] if class_names and cls < len(class_names) else f"class {cls}"
    speed = f"{h['speedup']:.2f}×"
    lines = [f"**{st['mode']}** run of **{st.get('pair', '')}** ({label}, seed {st['seed']}): "
             f"**{h['target_calls']} target calls** instead of {h['target_only_calls']}, "
             f"{h['draft_calls']} draft calls. Generation took **{h['wall_s']:.2f} s** against "
             f"**{h['target_only_wall_s']:.2f} s** for target only → **{speed}** "
             f"{'faster' if h['speedup'] >= 1 else '(slower)'}; draft only took {h['draft_only_wall_s']:.2f} s."]
    if h["verified_tokens"]:
        lines.append(f"The target accepted **{h['accepted_tokens']} of {h['verified_tokens']}** drafted tokens "
                     f"({h['accepted_tokens'] / h['verified_tokens']:.0%}).")
    agree = f"{h['token_agreement']:.0%} of the final tokens equal the target-only run's."
    if st["mode"] == "speculative" and st["accept"] == "prob" and st["tau"] == 1 and st["lenience"] == 1 \
            and not st["keep_draft_rejected"]:
        agree += " (The exact rule keeps the target's distribution, not its individual samples.)"
    lines.append(agree)
    lines.append("All numbers come from the three runs of this click; wall time leaves out the per-scale preview "
                 "decodes. With small models much of the time goes to sampling, decoding and Python rather than "
                 "the transformer, so wall-clock speed-ups are small and noisy; target calls saved is the robust "
                 "number.")
    return h["target_calls"], h["draft_calls"], f"{h['wall_s']:.2f} s", speed, "\n\n".join(lines)


def scale_view(runs: dict | None, scale: int):
    """(token-grid figure, scale summary) for the 1-based scale slider."""
    if not runs:
        return None, "Run a generation (or pick a precomputed run) to scrub through its scales."
    k = int(scale) - 1
    return viz.token_grid_figure(runs["main"], k), viz.scale_summary(runs["main"], k)


def render_run(runs: dict, title: str, class_names=None) -> list:
    """Every Generate-tab output (and the shape table) for a click's runs; scale view at the last scale."""
    main = runs["main"]
    K = len(main.scales)
    grid, summary = scale_view(runs, K)
    target_calls, draft_calls, wall, speed, text = stat_values(runs, class_names)
    img = lambda t: viz.upscale(t.images[0])  # noqa: E731
    return [runs, f"Showing: {title}", img(main), img(runs["target"]), img(runs["draft"]),
            target_calls, draft_calls, wall, speed, text,
            gr.Slider(minimum=1, maximum=K, value=K, step=1), grid, summary,
            viz.acceptance_figure(main),
            viz.timeline_figure(main, runs["target"] if runs["target"] is not main else None),
            shapes_view(runs, "all", "all")]


def mask_view(layout: ScaleLayout, rule, current, full):
    """Masks tab: (heatmap, pair-count table, the rule's explanation, six small multiples)."""
    rule, current, full = int(rule), int(current), bool(full)
    return (viz.mask_heatmap_figure(rule, current, layout, full), viz.pair_count_table(rule, current, layout, full),
            rule_markdown(rule), viz.mask_small_multiples_figure(current, layout, full))


def keys_view(layout: ScaleLayout, rule, current, scale, row, col):
    """Token picker: (attended-keys figure, row and col slider updates); row and col are clamped to the
    1-based scale's grid, so moving to a smaller scale keeps a valid token."""
    k = int(scale) - 1
    if not 0 <= k < layout.num_scales:
        raise ValueError(f"scale must be in 1..{layout.num_scales}, got {scale}")
    pn = layout.patch_nums[k]
    row, col = min(int(row), pn - 1), min(int(col), pn - 1)
    return (viz.attended_keys_figure(int(rule), int(current), k, row, col, layout),
            gr.Slider(maximum=pn - 1, value=row), gr.Slider(maximum=pn - 1, value=col))


def shapes_view(runs: dict | None, model: str, scale) -> pd.DataFrame:
    """The last run's shape table, filtered by model and scale ('all' keeps everything)."""
    if not runs:
        return pd.DataFrame(columns=["scale", "grid", "model", "tensor", "shape", "meaning"])
    df = viz.shape_table(runs["main"])
    if model != "all":
        df = df[df["model"] == model]
    if scale not in (None, "all"):
        df = df[df["scale"] == int(scale)]
    return df.reset_index(drop=True)


# ---- the app ------------------------------------------------------------------------------------

def _gr_error(fn):
    """Run fn; a ValueError from the library becomes a gr.Error with its message."""
    @functools.wraps(fn)   # keeps the signature, so gradio still sees a gr.Progress parameter
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e)) from None
    return wrapped


def _api(public: bool, name: str) -> dict:
    """Listener kwargs: one public API endpoint per callback, the other listeners of it private."""
    return {"api_name": name} if public else {"api_visibility": "private"}


INCLUDING_EXCLUDING = (
    "**Including / excluding the current scale.** At a hand-off the incoming model prefills the earlier "
    "scales (already fixed) and the *current* scale (the first one it must produce). Rules 1 and 4 apply their "
    "restriction to the current scale too (*including*); rules 2 and 5 exempt it, so the current scale attends "
    "like normal VAR (*excluding*). Scales after the current one always attend natively, from the KV cache.")


def rule_markdown(rule: int) -> str:
    """The selected rule's plain explanation (with the including/excluding note for rules 1, 2, 4, 5)."""
    text = f"### {rule} · {masks.rule_name(rule)}\n{masks.rule_explanation(rule)}"
    return text + (f"\n\n{INCLUDING_EXCLUDING}" if rule in (1, 2, 4, 5) else "")


def all_rules_markdown() -> str:
    """Every rule's explanation, after the note on including / excluding the current scale."""
    return "\n\n".join([INCLUDING_EXCLUDING] + [f"**{r} · {masks.rule_name(r)}.** {masks.rule_explanation(r)}"
                                                for r in range(6)])


def build_demo(pair_loader=None, examples_dir=EXAMPLES_DIR, weights_dir: str | None = None) -> gr.Blocks:
    """The Gradio app. pair_loader(key) → Pair for the keys of MODELS (default: the zoo);
    examples_dir holds precomputed runs (*.npz made by scripts/make_examples.py)."""
    bank = PairBank(pair_loader or default_pair_loader(weights_dir))
    tiny = bank.get("tiny")
    on_cuda = next(tiny.target.parameters()).is_cuda
    bundles = list_bundles(examples_dir)
    layout = tiny.layout
    K = layout.num_scales
    D = DEFAULT_INPUTS

    with gr.Blocks(title="SDVAR Explorer") as demo:
        runs_state = gr.State(None)
        model_state = gr.State("tiny")

        gr.Markdown("# SDVAR Explorer\nSpeculative decoding on **VAR** (next-scale prediction): a small *draft* "
                    "model proposes token maps, a large *target* model checks them. See, scale by scale, which "
                    "draft tokens the target accepted, how each hand-off mask lets tokens attend, and what every "
                    "tensor looks like.")
        if not on_cuda:
            gr.Markdown("**Running on CPU.** The embedded toy pair answers in a few seconds; the official "
                        "VAR pairs need a GPU to be usable.", elem_classes="notice")
        with gr.Row():
            model = gr.Dropdown([(label, key) for key, label in MODELS.items()], value="tiny", label="Models",
                                scale=2, elem_id="model")
            example = gr.Dropdown([b[0] for b in bundles], value=bundles[0][0] if bundles else None,
                                  label="Precomputed runs (instant)", scale=2, elem_id="example",
                                  interactive=bool(bundles))
        model_md = gr.Markdown(pair_info(tiny, bank.notes.get("tiny", "")))

        with gr.Tabs():
            # ---- tab 1 -------------------------------------------------------------------------
            with gr.Tab("Generate & inspect", id="generate"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=280):
                        names = list(tiny.class_names or [])
                        class_name = gr.Dropdown(names, value=D["class_name"] if D["class_name"] in names
                                                 else (names or [None])[0], label="Class", visible=bool(names),
                                                 elem_id="class-name", allow_custom_value=True)  # class_index checks it
                        class_id = gr.Number(value=D["class_id"], precision=0, label="ImageNet class id (0–999)",
                                             visible=not tiny.class_names, elem_id="class-id")
                        seed = gr.Number(value=D["seed"], precision=0, label="Seed", elem_id="seed")
                        mode = gr.Radio(MODES, value=D["mode"], label="Mode", elem_id="mode")
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        with gr.Accordion("Advanced settings", open=False):
                            with gr.Group(visible=False) as schedule_group:
                                entry_num = gr.Slider(0, K, value=D["entry_num"], step=1, elem_id="gen-entry-num",
                                                      label="entry_num: scales made by the draft before the target "
                                                            "takes over")
                                schedule = gr.Textbox(value="", label=f"or a schedule string ({K} letters D/T)",
                                                      placeholder="e.g. DDDDTTTTTT", elem_id="gen-schedule")
                                sd_mask = gr.Dropdown([(f"{r} · {masks.rule_name(r)}", r) for r in range(6)],
                                                      value=D["sd_mask"], label="sd_mask at the hand-off",
                                                      elem_id="gen-sd-mask")
                            with gr.Group(visible=True) as spec_group:
                                gamma = gr.Slider(1, K, value=D["gamma"], step=1, label="γ: scales drafted per round",
                                                  elem_id="gamma")
                                accept = gr.Radio([("probability min(1, λp/q)", "prob"), ("top-1 match", "top1")],
                                                  value=D["accept"], label="Acceptance rule", elem_id="accept")
                                tau = gr.Slider(0.05, 1.0, value=D["tau"], step=0.05,
                                                label="τ: a scale passes when this share of its tokens is accepted",
                                                elem_id="tau")
                                lenience = gr.Slider(1.0, 10.0, value=D["lenience"], step=0.5,
                                                     label="λ (lenience ≥ 1)", elem_id="lenience")
                                adaptive = gr.Checkbox(D["adaptive_gamma"], label="adaptive γ (+1 after a clean "
                                                       "round, −1 after a failed first scale)")
                                keep_rejected = gr.Checkbox(D["keep_draft_rejected"], label="relaxed: keep the "
                                                            "draft's rejected tokens in passing scales")
                                gr.Markdown("τ = 1, λ = 1 with the probability rule is exact: the output has the "
                                            "target's distribution.")
                            cfg = gr.Slider(0.0, 8.0, value=D["cfg"], step=0.1, label="CFG scale", elem_id="cfg")
                            top_k = gr.Slider(0, 1000, value=D["top_k"], step=1, label="top-k (0 = off)",
                                              elem_id="top-k")
                            top_p = gr.Slider(0.05, 1.0, value=D["top_p"], step=0.05, label="top-p (1 = off)",
                                              elem_id="top-p")
                            precision = gr.Radio(["fp32", "bf16", "fp16"], value=D["precision"], visible=on_cuda,
                                                 label="Precision (autocast on CUDA)", elem_id="precision")
                            more_smooth = gr.Checkbox(D["more_smooth"], elem_id="more-smooth",
                                                      label="more_smooth: soft codebook mixture in f_hat "
                                                            "(VAR's visual option; not in speculative mode)")
                    with gr.Column(scale=3):
                        showing = gr.Markdown("", elem_id="showing")
                        with gr.Row(elem_id="headline"):
                            target_calls = gr.Number(label="target calls", interactive=False, elem_id="target-calls")
                            draft_calls = gr.Number(label="draft calls", interactive=False, elem_id="draft-calls")
                            wall = gr.Textbox(label="wall time", interactive=False, elem_id="wall-time")
                            speedup = gr.Textbox(label="speed-up vs target only", interactive=False,
                                                 elem_id="speedup")
                        with gr.Row():
                            final_image = gr.Image(label="this run", type="numpy", format="png", interactive=False,
                                                   height=256, elem_id="final-image")
                            target_image = gr.Image(label="target only (same seed)", type="numpy", format="png",
                                                    interactive=False, height=256, elem_id="target-image")
                            draft_image = gr.Image(label="draft only (same seed)", type="numpy", format="png",
                                                   interactive=False, height=256, elem_id="draft-image")
                        summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    scale_slider = gr.Slider(1, K, value=K, step=1, label="Scale (scrub through the generation)",
                                             elem_id="scale-slider", scale=5)
                    play = gr.Button("▶ play scales", scale=1, elem_id="play")
                scale_md = gr.Markdown(elem_id="scale-summary")
                token_grid = gr.Plot(label="picture and token grid at this scale", elem_id="token-grid")
                acceptance = gr.Plot(label="acceptance per scale", elem_id="acceptance")
                timeline = gr.Plot(label="timeline", elem_id="timeline")

            # ---- tab 2 -------------------------------------------------------------------------
            with gr.Tab("Masks", id="masks") as masks_tab:
                gr.Markdown("At a hand-off the incoming model must produce scale *entry_num + 1*. It prefills the "
                            "earlier scales and the current one in a single call; the **sd_mask** rule decides "
                            "which keys each of those queries may attend to. Scales after that are generated one "
                            "at a time on the KV cache (native VAR attention).")
                with gr.Row():
                    mask_rule = gr.Radio([(f"{r} · {masks.rule_name(r)}", r) for r in range(6)], value=1,
                                         label="sd_mask", elem_id="mask-rule", scale=3)
                    with gr.Column(scale=2):
                        mask_entry = gr.Slider(0, K - 1, value=4, step=1, elem_id="entry-num",
                                               label="entry_num (the incoming model starts at scale entry_num + 1)")
                        mask_full = gr.Checkbox(False, label=f"show the whole sequence ({layout.total}×{layout.total}) "
                                                "instead of the prefill window")
                with gr.Row(equal_height=False):
                    mask_heatmap = gr.Plot(label="attention mask (dark = allowed; box = prefill window)",
                                           elem_id="mask-heatmap", scale=3)
                    with gr.Column(scale=2):
                        rules_md = gr.Markdown(rule_markdown(1), elem_id="rules")
                        mask_counts = gr.Dataframe(label="allowed query–key pairs per query scale", interactive=False,
                                                   elem_id="mask-counts")
                gr.Markdown("### Which keys does one token see?")
                with gr.Row():
                    pick_scale = gr.Slider(1, K, value=6, step=1, label="query scale", elem_id="pick-scale")
                    pick_row = gr.Slider(0, layout.patch_nums[5] - 1, value=2, step=1, label="row", elem_id="pick-row")
                    pick_col = gr.Slider(0, layout.patch_nums[5] - 1, value=3, step=1, label="col", elem_id="pick-col")
                keys_plot = gr.Plot(label="attended keys on every scale's grid", elem_id="keys-plot")
                mask_multiples = gr.Plot(label="all six rules", elem_id="mask-multiples")
                with gr.Accordion("Every rule explained", open=False):
                    gr.Markdown(all_rules_markdown(), elem_id="all-rules")

            # ---- tab 3 -------------------------------------------------------------------------
            with gr.Tab("Shapes", id="shapes"):
                gr.Markdown("Every shape below was recorded while the run shown on the Generate tab ran. "
                            "**B** = images in the batch (1 here); the transformer runs **2B** rows with "
                            "classifier-free guidance (conditional and unconditional); `kv_len` is the KV cache "
                            "length after the call; pn×pn is the scale's token grid.")
                with gr.Row():
                    shape_model = gr.Dropdown(["all", "draft", "target", "vqvae"], value="all", label="model")
                    shape_scale = gr.Dropdown(["all"] + [str(k + 1) for k in range(K)], value="all", label="scale")
                shape_table = gr.Dataframe(interactive=False, wrap=True, elem_id="shape-table",
                                           column_widths=["7%", "7%", "9%", "11%", "14%", "52%"])

            # ---- tab 4 -------------------------------------------------------------------------
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Sweep settings over several seeds. Every sweep first runs target only and draft only "
                            "with the same seeds; speed-ups and agreements are against that target-only run. "
                            "Sampling settings (CFG, top-k, top-p, acceptance rule, λ, precision) come from the "
                            "Generate tab.")
                with gr.Row():
                    sweep_kind = gr.Radio([("schedules: entry_num × sd_mask", "schedule"),
                                           ("speculative: γ × τ", "speculative")], value="schedule",
                                          label="Sweep", elem_id="sweep-kind")
                    seeds = gr.Textbox("0, 1", label="Seeds (e.g. '0, 1' or '0-3')", elem_id="sweep-seeds")
                    sweep_classes = gr.Radio([("every class (embedded pair)", "all"),
                                              ("the class chosen on the Generate tab", "chosen")],
                                             value="all", label="Images per seed", elem_id="sweep-classes")
                with gr.Group(visible=True) as sched_sweep:
                    with gr.Row():
                        sweep_entries = gr.CheckboxGroup([str(e) for e in range(1, K)], value=["2", "4", "6", "8"],
                                                         label="entry_num", elem_id="sweep-entries")
                        sweep_dirs = gr.CheckboxGroup([(text, key) for key, text in DIRECTIONS.items()],
                                                      value=["D→T"], label="direction", elem_id="sweep-dirs")
                        sweep_masks = gr.CheckboxGroup([(str(r), str(r)) for r in range(6)], value=["1", "3"],
                                                       label="sd_mask", elem_id="sweep-masks")
                with gr.Group(visible=False) as spec_sweep:
                    with gr.Row():
                        sweep_gammas = gr.CheckboxGroup([str(g) for g in range(1, 7)], value=["1", "2", "3"],
                                                        label="γ", elem_id="sweep-gammas")
                        sweep_taus = gr.CheckboxGroup(["1.0", "0.9", "0.8", "0.7", "0.5"], value=["1.0", "0.8"],
                                                      label="τ", elem_id="sweep-taus")
                with gr.Row():
                    sweep_btn = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="sweep-stop")
                    csv_btn = gr.DownloadButton("Download CSV", value=None, elem_id="sweep-csv")
                sweep_md = gr.Markdown(elem_id="sweep-status")
                sweep_plot = gr.Plot(label="sweep", elem_id="sweep-plot")
                sweep_table = gr.Dataframe(interactive=False, elem_id="sweep-table")

        # ---- wiring ----------------------------------------------------------------------------
        gen_inputs = [class_name, class_id, seed, mode, cfg, top_k, top_p, entry_num, schedule, sd_mask, gamma,
                      accept, tau, lenience, adaptive, keep_rejected, precision, more_smooth]
        run_outputs = [runs_state, showing, final_image, target_image, draft_image, target_calls, draft_calls,
                       wall, speedup, summary, scale_slider, token_grid, scale_md, acceptance, timeline, shape_table]

        def on_model(key, progress=gr.Progress()):
            """Load the chosen pair; on failure warn and fall back to the embedded pair."""
            progress(0, desc=f"loading {MODELS.get(key, key)} (official weights: several GB)")
            try:
                pair = bank.get(key)
            except ValueError as e:
                gr.Warning(f"{e} — using the embedded pair instead.", duration=15)
                key, pair = "tiny", bank.get("tiny")
            names = pair.class_names or []
            return (key, gr.Dropdown(value=key), pair_info(pair, bank.notes.get(key, "")),
                    gr.Dropdown(choices=names, value=names[0] if names else None, visible=bool(names)),
                    gr.Number(visible=not names))

        model.change(on_model, model, [model_state, model, model_md, class_name, class_id], api_name="select_model")

        def on_mode(m):
            return gr.Group(visible=m == "schedule"), gr.Group(visible=m == "speculative")

        mode.change(on_mode, mode, [schedule_group, spec_group], api_visibility="private")

        @gpu(duration=60)
        @_gr_error
        def on_generate(key, *values, progress=gr.Progress()):
            """Run the chosen mode plus target-only and draft-only comparisons; render everything."""
            v = dict(zip(INPUT_KEYS, values))
            pair = bank.get(key)
            cls = class_index(pair, v["class_name"], v["class_id"])
            progress(0, desc="starting")
            runs = run_click(pair, v["mode"], cls, v["seed"], click_settings(v),
                             lambda done, total, desc: progress((done, total), desc=desc))
            label = pair.class_names[cls] if pair.class_names else f"class {cls}"
            return render_run(runs, f"your run — {v['mode']}, {label}, seed {int(v['seed'])}", pair.class_names)

        generate_btn.click(on_generate, [model_state] + gen_inputs, run_outputs, api_name="generate",
                           concurrency_id="model", concurrency_limit=1,
                           show_progress_on=[final_image, token_grid])

        scale_slider.input(_gr_error(scale_view), [runs_state, scale_slider], [token_grid, scale_md],
                           api_name="scale_view", trigger_mode="always_last", show_progress="hidden")

        def on_play(runs):
            """Step the scale view from the first to the last scale."""
            if not runs:
                raise gr.Error("Nothing to play yet: generate a run or pick a precomputed one.")
            for k in range(1, len(runs["main"].scales) + 1):
                yield (k, *scale_view(runs, k))
                time.sleep(0.45)

        play.click(on_play, runs_state, [scale_slider, token_grid, scale_md], api_visibility="private",
                   show_progress="hidden")

        def show_bundle(title):
            """A precomputed run: its outputs and the inputs it was made with."""
            match = [p for t, p in bundles if t == title]
            if not match:
                return [gr.skip()] * (len(run_outputs) + len(gen_inputs))
            runs, inputs, title = load_bundle(match[0])
            names = CLASS_NAMES if runs["main"].settings.get("pair", "").startswith("tiny") else None
            return render_run(runs, f"precomputed — {title}", names) + [
                inputs[k] if k in inputs else gr.skip() for k in INPUT_KEYS]

        def on_load():
            """Every new page opens on the first precomputed run (none: the page waits for a click)."""
            return show_bundle(bundles[0][0] if bundles else None)

        example.input(show_bundle, example, run_outputs + gen_inputs, api_name="load_example")
        demo.load(on_load, None, run_outputs + gen_inputs, api_visibility="private")

        # masks tab
        def on_mask(key, rule, current, full):
            return mask_view(bank.get(key).layout, rule, current, full)

        def on_keys(key, rule, current, scale, row, col):
            return keys_view(bank.get(key).layout, rule, current, scale, row, col)

        mask_outputs = [mask_heatmap, mask_counts, rules_md, mask_multiples]
        mask_inputs = [model_state, mask_rule, mask_entry, mask_full]
        key_inputs = [model_state, mask_rule, mask_entry, pick_scale, pick_row, pick_col]
        key_outputs = [keys_plot, pick_row, pick_col]
        for widget in (mask_rule, mask_entry, mask_full):
            widget.input(_gr_error(on_mask), mask_inputs, mask_outputs, trigger_mode="always_last",
                         **_api(widget is mask_rule, "mask_view"))
        for widget in (pick_scale, pick_row, pick_col, mask_rule, mask_entry):   # the public endpoint first
            widget.input(_gr_error(on_keys), key_inputs, key_outputs, trigger_mode="always_last",
                         **_api(widget is pick_scale, "keys_view"))
        masks_tab.select(_gr_error(on_mask), mask_inputs, mask_outputs, api_visibility="private").then(
            _gr_error(on_keys), key_inputs, key_outputs, api_visibility="private")

        # shapes tab
        for widget in (shape_model, shape_scale):
            widget.input(_gr_error(shapes_view), [runs_state, shape_model, shape_scale], shape_table,
                         **_api(widget is shape_model, "shapes"))

        # compare tab
        def on_sweep_kind(kind):
            return gr.Group(visible=kind == "schedule"), gr.Group(visible=kind == "speculative")

        sweep_kind.change(on_sweep_kind, sweep_kind, [sched_sweep, spec_sweep], api_visibility="private")

        @gpu(duration=180)
        def on_sweep(key, kind, seeds_text, classes, entries, dirs, sd_masks, gammas, taus, cls_name, cls_id,
                     cfg_v, top_k_v, top_p_v, accept_v, lenience_v, precision_v, progress=gr.Progress()):
            """Run the sweep entry by entry, yielding the table, plot and CSV after each one."""
            try:
                pair = bank.get(key)
                seed_list = parse_seeds(seeds_text)
                configs = sweep_configs(kind, entries, dirs, sd_masks, gammas, taus, pair.layout.num_scales)
                if classes == "all":
                    if pair.num_classes > 16:
                        raise ValueError(f"{pair.name} has {pair.num_classes} classes; choose 'the class chosen "
                                         "on the Generate tab' for it")
                    class_ids = list(range(pair.num_classes))
                else:
                    class_ids = [class_index(pair, cls_name, cls_id)]
                base = dict(cfg=float(cfg_v), top_k=int(top_k_v), top_p=float(top_p_v), accept=str(accept_v),
                            lenience=float(lenience_v), precision=str(precision_v))
            except ValueError as e:
                raise gr.Error(str(e)) from None
            classifier, note = load_quality_classifier(pair)
            folder = Path(tempfile.mkdtemp(prefix="sdvar-sweep-"))
            csv_path = folder / f"sweep-{kind}.csv"
            rows, reference = [], None
            for i, config in enumerate(configs):
                progress((i, len(configs)), desc=config_label(config))
                try:
                    traces = run_config(pair, config, seed_list, class_ids, base)
                except ValueError as e:
                    raise gr.Error(f"{config['series']}: {e}") from None
                reference = reference or traces   # the first entry is target only
                rows.append(sweep_row(config, traces, reference, class_ids, classifier))
                df = pd.DataFrame(rows)
                df.to_csv(csv_path, index=False)
                status = (f"{i + 1} of {len(configs)} runs done ({len(seed_list)} seed(s) × {len(class_ids)} "
                          f"image(s) each) with **{pair.name}**. " + note)
                yield status, viz.sweep_figure(df), df[SWEEP_COLUMNS].round(4), str(csv_path)

        sweep_event = sweep_btn.click(
            on_sweep, [model_state, sweep_kind, seeds, sweep_classes, sweep_entries, sweep_dirs, sweep_masks,
                       sweep_gammas, sweep_taus, class_name, class_id, cfg, top_k, top_p, accept, lenience, precision],
            [sweep_md, sweep_plot, sweep_table, csv_btn], api_name="sweep", concurrency_id="model",
            concurrency_limit=1, show_progress_on=[sweep_plot])
        stop_btn.click(None, None, None, cancels=[sweep_event], api_visibility="private")

    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False, **kwargs):
    """Queue and launch with the app's theme and CSS; host/port default to GRADIO_SERVER_NAME/PORT or 127.0.0.1:7860."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    demo.queue(default_concurrency_limit=4, max_size=32)
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
    if args.threads or not torch.cuda.is_available():
        torch.set_num_threads(max(1, args.threads or 1))
    demo = build_demo(weights_dir=args.weights_dir or os.environ.get("SDVAR_WEIGHTS_DIR"))
    launch(demo, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
