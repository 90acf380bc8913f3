"""The "Your picture" tab: its callbacks as plain functions (outputs read by name), then bad pictures through
the served app's API: each a named error, the server alive, the next valid picture working."""
import io
import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import Names
from sdvar_core import data
from sdvar_core.picture import MAX_PIXELS
from sdvar_core.trace import INPUT
from test_picture import header_only_png, png_bytes
from ui import picture_tab
from ui.common import bind, named_outputs

NAMES = Names()


class Bank:
    """The random test pair for every model key (a stand-in for explore.PairBank)."""

    def __init__(self, pair):
        self.pair = pair

    def get(self, key):
        return self.pair


@pytest.fixture()
def cache(tmp_path):
    """A folder standing for Gradio's upload cache, with a star picture and a painted layer in it."""
    Image.fromarray(data.make_images([3], 5, size=96)[0]).save(tmp_path / "star.png")
    layer = np.zeros((96, 96, 4), np.uint8)
    layer[30:60, 20:80] = (255, 0, 255, 255)        # a painted band across the middle
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    return tmp_path


def editor(cache, layers=()):
    return {"background": {"path": str(cache / "star.png")}, "layers": [{"path": str(cache / n)} for n in layers],
            "composite": {"path": str(cache / "star.png")}}


RUN = dict(model="tiny", picture_task="continue", prefix_scales=4, picture_mode="speculative", picture_entry=6,
           picture_class="heart", picture_class_id=0, picture_seed=1, progress=lambda *a, **k: None)


def test_pyramid_and_example(random_pair, cache):
    out = picture_tab.on_pyramid(Bank(random_pair), NAMES, cache, model="tiny", own_image=editor(cache))
    assert "96×96 → resized to 64×64 (Lanczos)" in out["picture_md"]
    fig = out["pyramid"]
    assert len([t for t in fig.data if t.type == "heatmap"]) == 20 and len([t for t in fig.data if t.type == "image"]) == 20
    assert out["picture_input"].shape == (256, 256, 3) and out["picture_pyramid"].rebuilt.shape == (10, 64, 64, 3)
    assert out["picture_source"] == picture_tab.picture_key(np.asarray(Image.open(cache / "star.png")), 64)
    ex = picture_tab.on_example(NAMES, picture_example="ring")
    assert np.array_equal(ex["own_image"]["background"], picture_tab.EXAMPLES["ring"])
    # the editor's change: a new picture shows its pyramid, a brush stroke on the same picture does not
    change = dict(model="tiny", picture_source=out["picture_source"])
    assert picture_tab.on_picture_change(Bank(random_pair), NAMES, cache, own_image=editor(cache, ["layer.png"]),
                                         **change) == gr.skip()
    assert picture_tab.on_picture_change(Bank(random_pair), NAMES, cache, own_image=None, **change) == gr.skip()
    fresh = picture_tab.on_picture_change(Bank(random_pair), NAMES, cache, own_image=editor(cache),
                                          **{**change, "picture_source": None})
    assert "96×96" in fresh["picture_md"]


@pytest.mark.parametrize("mode", ["target", "draft", "speculative", "relaxed", "schedule"])
def test_continue_from_scale_k_in_every_mode(random_pair, cache, mode):
    out = picture_tab.on_picture_run(Bank(random_pair), NAMES, cache, own_image=editor(cache), **{**RUN, "picture_mode": mode})
    kept = out["picture_run"]
    assert all(s.producer == "input" and (s.status == INPUT).all() for s in kept.scales[:4])
    assert all(s.producer != "input" for s in kept.scales[4:])
    assert "first **4** of 10 scales" in out["picture_summary"] and out["picture_result"].shape == (256, 256, 3)
    assert out["picture_grid"] is not None and out["picture_scale_md"].startswith("**Scale 10")
    assert picture_tab.picture_scale_view(NAMES, picture_run=kept, picture_scale=2)["picture_scale_md"].startswith("**Scale 2")


def test_inpaint_keeps_the_picture_outside_the_painted_band(random_pair, cache):
    out = picture_tab.on_picture_run(Bank(random_pair), NAMES, cache, own_image=editor(cache, ["layer.png"]),
                                     **{**RUN, "picture_task": "inpaint", "prefix_scales": 0})
    last = out["picture_run"].scales[-1].status[0].reshape(16, 16)
    assert (last[:3] == INPUT).all() and (last[-4:] == INPUT).all() and not (last[7:9, 6:11] == INPUT).any()
    assert "inside the region" in out["picture_summary"]
    with pytest.raises(ValueError, match="nothing is painted"):
        picture_tab.on_picture_run(Bank(random_pair), NAMES, cache, own_image=editor(cache), **{**RUN, "picture_task": "inpaint"})


def test_editor_values_that_are_refused(random_pair, cache, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (32, 32)).save(outside / "x.png")
    bank = Bank(random_pair)
    for value, match in ((None, "holds no picture"), ({"background": None, "layers": [], "composite": None}, "holds no picture"),
                         ({"background": {"path": str(outside / "x.png")}, "layers": []}, "Gradio's cache")):
        with pytest.raises(ValueError, match=match):
            picture_tab.on_pyramid(bank, NAMES, cache, model="tiny", own_image=value)
    for bad, match in ((dict(prefix_scales=11), "prefix_scales"), (dict(picture_mode="fast"), "picture_mode"),
                       (dict(picture_task="erase"), "picture_task"), (dict(picture_class="dog"), "picture_class")):
        with pytest.raises(ValueError, match=match):
            picture_tab.on_picture_run(bank, NAMES, cache, own_image=editor(cache), **{**RUN, **bad})
    wrapped = bind(picture_tab.on_pyramid, bank, NAMES, cache)   # as the app calls it: a named gr.Error
    import gradio as gr
    with pytest.raises(gr.Error, match="holds no picture"):
        wrapped(model="tiny", own_image=None)


# ---- the served app -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 200, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def test_api_bad_pictures_then_a_good_one(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    def pyramid_of(name: str, content: bytes) -> dict:
        path = tmp_path / name
        path.write_bytes(content)
        value = {"background": handle_file(str(path)), "layers": [], "composite": None}
        return named_outputs(client.config, "/picture_pyramid", client.predict(model="tiny", own_image=value,
                                                                                api_name="/picture_pyramid"))

    deep = np.full((40, 40), 40000, np.uint16)
    for name, content, match in (("text.png", b"not a picture at all", "not an image"),
                                 ("empty.png", b"", "not an image"),
                                 ("dot.png", png_bytes(Image.new("RGB", (1, 1))), "too small"),
                                 ("huge.png", header_only_png(8000, 8000), f"limit is {MAX_PIXELS:,} pixels")):
        with pytest.raises(AppError, match=match):
            pyramid_of(name, content)
    for name, content, note in (("anim.gif", animated_gif(), "first frame"),
                                ("deep.png", png_bytes(Image.fromarray(deep)), "mode I"),
                                ("pal.png", png_bytes(Image.new("RGB", (40, 40), (9, 90, 200)).convert("P")), "mode P"),
                                ("cmyk.jpg", png_bytes(Image.new("CMYK", (40, 40), (0, 255, 0, 0)), format="JPEG"), "mode CMYK"),
                                ("grey.png", png_bytes(Image.new("LA", (40, 40), (90, 0))), "transparency flattened"),
                                ("ok.png", png_bytes(Image.fromarray(data.make_images([2], 3)[0])), "used as is")):
        out = pyramid_of(name, content)
        assert note in out["picture-md"], (name, out["picture-md"])
        assert json.loads(out["pyramid"]["plot"])["data"]


def test_malformed_editor_payloads_are_named_and_not_repeated():
    """Gradio validates the editor's payload with its data model before any callback: the message names
    own_image and never repeats the value sent."""
    for bad in ("<img src=x onerror=alert(1)>", 2.5, [1, "a"]):
        with pytest.raises(ValueError, match="own_image must be the image editor's value") as e:
            picture_tab.EditorPayload.model_validate(bad)
        assert "<img" not in str(e.value)
    with pytest.raises(ValueError) as e:
        picture_tab.EditorPayload.model_validate({"background": {"path": "<img src=x>"}, "layers": []},
                                                 context={"validate_meta": True})   # as Gradio calls it
    assert "<img" not in str(e.value)
    assert picture_tab.EditorPayload.model_validate({"layers": []}).background is None
