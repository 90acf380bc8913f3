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


@torch.no_grad()
def teacher_forced_logits(var, class_ids, tokens, vqvae) -> torch.Tensor:
    """The reference for cached generation: one block-causal forward over given tokens, no CFG, no class
    dropout. tokens: K LongTensors (B, pn_k²) → logits (B, L, V)."""
    assert not var.training
    return var(torch.as_tensor(class_ids), vqvae.teacher_inputs(tokens))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The precomputed example the test server shows on page load: a schedule run (draft scales 1–4, sd_mask 1).
EXAMPLE_INPUTS = dict(class_name="star", seed=5, mode="schedule", entry_num=4, sd_mask=1)
EXAMPLE_TITLE = "test example: schedule entry_num 4, sd_mask 1"


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory, random_pair):
    """A folder with one precomputed bundle made by the app's own run_click on the random pair."""
    import app
    from sdvar_core import explore

    folder = tmp_path_factory.mktemp("examples")
    i = {**app.DEFAULT_INPUTS, **EXAMPLE_INPUTS}
    runs = explore.run_click(random_pair, i["mode"], app.class_index(random_pair, i["class_name"], None), i["seed"],
                         app.click_settings(i))
    explore.save_bundle(folder / "01-test.npz", runs, i, EXAMPLE_TITLE)
    return folder


@pytest.fixture(scope="session")
def pair_loader(random_pair):
    """The random pair for 'tiny'; official pairs fail like missing weights do."""
    def load(key):
        if key == "tiny":
            return random_pair
        raise ValueError(f"official weights not found for {key} (test loader)")
    return load


@pytest.fixture(scope="session")
def app_server(pair_loader, examples_dir):
    """The app with the random pair, served on a free port: yields its URL."""
    import app

    demo = app.build_demo(pair_loader=pair_loader, examples_dir=examples_dir)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
