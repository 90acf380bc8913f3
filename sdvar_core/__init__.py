"""SDVAR Explorer core: speculative decoding on VAR (a small draft VAR proposes, a large target VAR verifies).

    from sdvar_core import load_pair, generate
    pair = load_pair("tiny")
    result = generate(pair, "speculative", class_ids=[0, 1], seed=0, gamma=2)
    picture = encode_image(pair, "photo.png")       # your own picture as the pair's token maps
    result = generate(pair, "target", [3], seed=0, prefix=picture, prefix_scales=4)
"""
from .config import VARConfig, VQVAEConfig, preset
from .engine import Pair, Settings, generate
from .picture import EncodedImage, encode_image
from .trace import Trace
from .var import VAR
from .vqvae import VQVAE
from .zoo import load_official, load_pair
from . import calibration  # noqa: F401,E402  (installs the γ planner's default for generate(gamma="auto"))

__all__ = ["load_official", "load_pair", "generate", "encode_image", "EncodedImage", "Pair", "Settings", "Trace", "VAR", "VQVAE",
           "VARConfig", "VQVAEConfig", "preset"]
