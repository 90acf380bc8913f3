"""What the tabs share: the view of named components, error and API helpers, the page's CSS."""
from __future__ import annotations

import functools
import inspect
import logging
import typing

import gradio as gr

from sdvar_core.engine import Pair
from sdvar_core.explore import click_runs

from .hosting import safe

log = logging.getLogger("sdvar_explorer")

CSS = """
#headline .block { min-width: 0 !important; }
#headline input, #headline textarea { font-size: 1.35rem !important; font-weight: 600; }
.notice { padding: 6px 12px; border-radius: 6px; background: #fff7e6; border: 1px solid #f0c36d; }
.notice p { margin: 0 !important; }
footer { display: none !important; }
"""


class View:
    """The app's components by name: each tab's `build` sets them as attributes (view.showing = gr.Markdown()).

    Callbacks take the view first and return {view.<name>: value}; Gradio matches the keys to the
    event's outputs, so no output list has to be kept in order. An event's inputs are the
    callback's keyword parameters: `inputs_of` finds the components of the same names.
    """

    def outputs(self, *names: str) -> list:
        """The components called `names` (in that order: the order of the API's return values)."""
        return [getattr(self, n) for n in names]

    def inputs_of(self, fn) -> dict:
        """{parameter: component} for every keyword parameter of `fn` that names a component of the view."""
        params = inspect.signature(fn).parameters
        return {n: getattr(self, n) for n, p in params.items()
                if p.kind == inspect.Parameter.KEYWORD_ONLY and n in vars(self)}


def bind(fn, *args):
    """fn with its leading arguments (bank, view, …) bound, for Gradio. The signature Gradio sees keeps
    the keyword inputs, gr.Request and gr.Progress. Errors become gr.Error messages that are
    HTML-escaped and cut short: a ValueError (a bad input, named by `validate`) says what was wrong;
    anything else says which event failed and is logged with its traceback. Generators alike."""
    bound = functools.partial(fn, *args)
    what = getattr(fn, "__name__", "callback").removeprefix("on_").replace("_", " ")

    def shown(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, ValueError):
            return gr.Error(safe(e), print_exception=False)
        log.exception("%s failed", what)
        return gr.Error(safe(f"{what} failed unexpectedly ({type(e).__name__}: {e}); the server log has the "
                             "details"), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        def wrapper(*a, **kw):
            try:
                yield from bound(*a, **kw)
            except Exception as e:  # noqa: BLE001  (every error becomes a message; see shown)
                raise shown(e) from None
    else:
        def wrapper(*a, **kw):
            try:
                return bound(*a, **kw)
            except Exception as e:  # noqa: BLE001
                raise shown(e) from None
    wrapper = functools.wraps(bound)(wrapper)
    # Gradio finds gr.Request parameters by their type hints, which a partial does not carry
    hints = typing.get_type_hints(fn) if inspect.isfunction(inspect.unwrap(fn)) else {}
    wrapper.__annotations__ = {k: v for k, v in hints.items() if k != "return"}
    return wrapper


def listen(view: View, event, fn, *bound, outputs, also: tuple = (), public: str | None = None, **kwargs):
    """Attach fn (with `bound` arguments first) to `event`: inputs from fn's keyword parameters (and the
    components named in `also`, for a **kwargs parameter), outputs by name. public: the API name of this
    endpoint; None keeps the listener private.

    Inputs reach fn as sent (preprocess=False): Gradio's own checks would answer a bad value with an
    unnamed or generic error, so every callback checks its inputs with `sdvar_core.validate` instead."""
    api = {"api_name": public} if public else {"api_visibility": "private"}
    inputs = {**view.inputs_of(fn), **{n: getattr(view, n) for n in also}}
    kwargs.setdefault("preprocess", False)
    return event(bind(fn, *bound), inputs_kwargs=inputs, outputs=view.outputs(*outputs), **api, **kwargs)


def pair_info(pair: Pair, note: str = "") -> str:
    """Markdown describing the loaded pair."""
    def size(m):
        return f"depth {m.cfg.depth}, width {m.cfg.width}, {m.num_params() / 1e6:.2f} M params"
    device = next(pair.target.parameters()).device
    held = ("weights in fp32 (runs in fp32, or autocast to bf16 where offered)" if pair.precision == "fp32" else
            f"weight matrices held in **{pair.precision}** (runs in {pair.precision}; choosing fp32 reloads the pair)")
    text = (f"**{pair.name}** on `{device}` — draft: {size(pair.draft)}; target: {size(pair.target)}; "
            f"{pair.vqvae.cfg.image_size} px images, codebook {pair.vqvae.cfg.vocab_size}, "
            f"{pair.layout.num_scales} scales = {pair.layout.total} tokens; {held}.")
    return text + (f"\n\n**Note:** {safe(note)}" if note else "")


def named_outputs(config: dict, api_name: str, values) -> dict:
    """A gradio_client result by name: {elem_id: value} for the endpoint `api_name` of an app whose
    config (`Client.config`) is given. State outputs are not returned over the API, so they are skipped."""
    dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    components = {c["id"]: c for c in config["components"]}
    ids = [components[i]["props"].get("elem_id") for i in dep["outputs"] if components[i]["type"] != "state"]
    values = values if isinstance(values, tuple) else (values,)
    if len(ids) != len(values) or None in ids:
        raise ValueError(f"{api_name}: {len(values)} values for outputs {ids} (every output needs an elem_id)")
    return dict(zip(ids, values))


def runs_of(last_run, last_click) -> dict | None:
    """The shown click's runs ({"main", "target", "draft"}: Traces) from the session's two states
    (`explore.view_trace` and `view_click` of the same click), or None when there is none or it expired.
    The one place the teaching views read run data from."""
    return click_runs(last_run, last_click)
