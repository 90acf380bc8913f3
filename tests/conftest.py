"""Shared fixtures: a small random-weight draft/target pair, so tests never wait for trained weights."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

from sdvar_core.config import VARConfig, VQVAEConfig
from sdvar_core.data import CLASS_NAMES
from sdvar_core.engine import Pair
from sdvar_core.var import VAR
from sdvar_core.vqvae import VQVAE

# Small tensors run faster on one thread, and a busy 2-core machine makes two threads thrash.
torch.set_num_threads(int(os.environ.get("SDVAR_TEST_THREADS", "1")))


def build_random_pair(name: str = "random-test") -> Pair:
    """VQ-VAE (64 px, 16×16 latent, 10 scales) with a depth-1 draft and a depth-2 target, random weights."""
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), image_size=64, use_attn=False)).eval()
    mk = lambda d, w, h: VAR(VARConfig(depth=d, width=w, heads=h, vocab_size=64, z_channels=8,  # noqa: E731
                                       num_classes=10)).eval()
    return Pair(vq, mk(1, 32, 1), mk(2, 64, 2), name=name, class_names=list(CLASS_NAMES))


@pytest.fixture(scope="session")
def random_pair() -> Pair:
    return build_random_pair()
