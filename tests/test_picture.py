"""Your own picture: loading rules (every bad case named), encode → decode on real data-set images, the
pyramid, and pictures at the official 256 px layout."""
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sdvar_core import data, encode_image, generate, load_pair
from sdvar_core.config import ASSETS_DIR, VQVAEConfig
from sdvar_core.engine import to_uint8
from sdvar_core.metrics import psnr
from sdvar_core.picture import BACKGROUND, MAX_PIXELS, MIN_SIDE, fit, load_image, pyramid
from sdvar_core.zoo import random_pair


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that states its size and holds no pixel data: only a check of the header can answer it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("source,match", [
    (b"this is not a picture", "not an image"), (b"", "not an image"),
    (png_bytes(Image.new("RGB", (1, 1))), "too small"), (png_bytes(Image.new("RGB", (MIN_SIDE - 1, 64))), "too small"),
    (header_only_png(6000, 5000), f"limit is {MAX_PIXELS:,} pixels"),        # 30 Mpx: our limit, from the header
    (header_only_png(100_000, 100_000), "too large"),                           # past Pillow's own bomb limit
    (png_bytes(Image.new("F", (32, 32)), format="TIFF"), "mode F"),
    (np.zeros((32, 32, 3), np.float32), "uint8"), (np.zeros((32, 32, 2), np.uint8), "shape"),
    (np.zeros((4, 64, 3), np.uint8), "too small"), ("no-such-file.png", "no picture file"), (3.5, "must be an image"),
])
def test_bad_pictures_are_refused_with_a_named_reason(source, match):
    with pytest.raises(ValueError, match=match):
        load_image(source)


def test_modes_become_rgb_as_stated():
    grey = load_image(png_bytes(Image.new("L", (20, 30), 77)))
    assert grey.image.shape == (30, 20, 3) and (grey.image == 77).all() and "mode L" in grey.notes[0]
    deep = np.full((16, 16), 65535, np.uint16)
    deep[0, 0] = 257 * 10
    sixteen = load_image(png_bytes(Image.fromarray(deep)))             # a 16-bit greyscale PNG
    assert sixteen.image[1, 1].tolist() == [255] * 3 and sixteen.image[0, 0].tolist() == [10] * 3
    assert load_image(deep).image[0, 0].tolist() == [10] * 3           # a uint16 array alike
    rgba = Image.new("RGBA", (16, 16), (200, 10, 10, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))                                 # fully transparent: the background shows
    flat = load_image(png_bytes(rgba)).image
    assert flat[0, 0].tolist() == list(BACKGROUND) and flat[5, 5].tolist() == [200, 10, 10]
    pal = Image.new("P", (16, 16), 2)
    pal.putpalette([0, 0, 0, 9, 9, 9, 0, 128, 255] + [0] * 759)
    assert load_image(png_bytes(pal)).image[3, 3].tolist() == [0, 128, 255]
    pal_t = Image.new("P", (16, 16), 1)
    pal_t.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal_t.info["transparency"] = 1                                      # a transparent palette colour
    assert load_image(png_bytes(pal_t, transparency=1)).image[0, 0].tolist() == list(BACKGROUND)
    cmyk = load_image(png_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), format="JPEG", quality=95))
    r, g, b = cmyk.image[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    anim = load_image(buf.getvalue())
    assert anim.image[8, 8, 0] > 200 and anim.image[8, 8, 2] < 50 and "first frame" in anim.notes[0]
    assert load_image(np.dstack([np.full((16, 16, 3), 40, np.uint8), np.zeros((16, 16), np.uint8)])).image[0, 0].tolist() \
        == list(BACKGROUND)


def test_fit_crops_the_centre_and_names_the_resize():
    img = np.zeros((40, 100, 3), np.uint8)
    img[:, 30:70] = 255                                                  # the centred 40×40 square is white
    out, how = fit(img, 16)
    assert out.shape == (16, 16, 3) and (out == 255).all()
    assert how == "100×40 → centre crop 40×40 → resized to 16×16 (Lanczos)"
    assert fit(np.zeros((16, 16, 3), np.uint8), 16)[1] == "16×16 → used as is"


def test_round_trip_on_held_out_images_reaches_the_card_psnr():
    """encode_image → decode on real held-out images of the data set (the card's eval seed): the mean
    per-image PSNR is within 1 dB of the card's VQ-VAE figure (measured there on 500 such images)."""
    pair = load_pair("tiny")
    card = json.loads((ASSETS_DIR / "tiny" / "card.json").read_text())["models"]["vqvae"]
    images, _ = data.make_batch(60, card["eval_seed"])
    scores = []
    with torch.no_grad():
        for img in images:
            enc = encode_image(pair, img)
            assert enc.resize == "64×64 → used as is" and np.array_equal(enc.image, img)
            tokens = [torch.from_numpy(t).view(1, -1) for t in enc.tokens]
            scores.append(psnr(to_uint8(pair.vqvae.tokens_to_image(tokens))[0], img))
    assert np.mean(scores) >= card["heldout_psnr_db"] - 1.0, (np.mean(scores), card["heldout_psnr_db"])
    pyr = pyramid(pair, encode_image(pair, images[0]))
    assert pyr.rebuilt.shape == (10, 64, 64, 3) and pyr.residual.shape == (10, 16, 16)
    assert pyr.psnr_db[-1] == pytest.approx(scores[0]) and pyr.psnr_db[-1] > pyr.psnr_db[0] + 5
    assert pyr.ssim[-1] > pyr.ssim[0] and 0.5 < pyr.energy_share.sum() <= 1 and (pyr.energy_share > -1e-6).all()
    assert np.array_equal(pyr.added[0], pyr.rebuilt[0])


def test_a_256_px_pair_in_the_official_layout():
    """The official layout (256 px, 16×16 latent, the 10 official scales): encoding fits a picture of any
    shape, and a continuation keeps its prefix (a random pair with narrow layers, so it stays fast)."""
    vq = VQVAEConfig(vocab_size=64, z_channels=8, ch=8, ch_mult=(1, 1, 2, 2, 2), num_res_blocks=1, use_attn=False)
    pair = random_pair(vqvae_cfg=vq, draft=dict(depth=1, width=32, heads=1), target=dict(depth=1, width=32, heads=1))
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    enc = encode_image(pair, Image.fromarray(img))
    assert enc.image.shape == (256, 256, 3) and enc.patch_nums == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    assert "400×300 → centre crop 300×300 → resized to 256×256" in enc.resize
    mask = np.zeros((256, 256), bool)
    mask[128:] = True
    tr = generate(pair, "speculative", [1], seed=0, prefix=enc, prefix_scales=4, keep_mask=mask, progressive=False).trace
    assert all(np.array_equal(tr.scales[k].tokens[0], enc.tokens[k].reshape(-1)) for k in range(4))
    assert np.array_equal(tr.scales[9].tokens[0].reshape(16, 16)[8:], enc.tokens[9][8:])
    assert tr.images.shape == (1, 256, 256, 3)


def test_pyramid_figures_and_the_export(random_pair):
    """The plotly pyramid (tokens and residuals as heatmaps, pictures as images, headings with PSNR) and its
    matplotlib twin in the teaching-figure export."""
    from sdvar_core.figures import export_zip, static_figures
    from sdvar_core.viz_picture import outlined, pyramid_curves_figure, pyramid_figure

    pyr = pyramid(random_pair, encode_image(random_pair, data.make_images([5], 2)[0]))
    fig = pyramid_figure(pyr)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 20 and len([t for t in fig.data if t.type == "image"]) == 20
    assert np.array_equal(np.asarray(heat[2].z), pyr.tokens[1])          # scale 2's token map, as drawn
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("<b>10 · 16×16</b><br>" + f"{pyr.psnr_db[-1]:.1f} dB") for t in titles)
    curves = pyramid_curves_figure(pyr)
    assert np.allclose(curves.data[1].y, pyr.psnr_db)
    figs, _ = static_figures(None, pyramid=pyr)
    assert "pyramid" in figs and len(figs["pyramid"].axes) == 40
    import zipfile
    with zipfile.ZipFile(io.BytesIO(export_zip({"pyramid": figs["pyramid"]}, ("png",)))) as z:
        assert z.namelist() == ["pyramid.png"]
    mask = np.ones((64, 64), bool)
    mask[20:40, 20:40] = False
    ring = outlined(pyr.input, mask)
    assert (ring[20, 20:40] == (213, 94, 0)).all() and np.array_equal(ring[30, 30], pyr.input[30, 30])
