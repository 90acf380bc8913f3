"""Shared fixtures: a small random-weight draft/target pair, so tests never wait for trained weights."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["SDVAR_CACHE_DIR"] = "off"   # the γ planner calibrates afresh: no state from earlier sessions

import numpy as np
import pytest
import torch

from sdvar_core import explore
from sdvar_core.checkpoints import save_var, save_vqvae
from sdvar_core.config import VQVAEConfig
from sdvar_core.engine import Pair, generate
from sdvar_core.trace import ACCEPTED, CORRECTED
from sdvar_core.zoo import random_pair as make_random_pair

# Small tensors run faster on one thread, and a busy 2-core machine makes two threads thrash.
torch.set_num_threads(int(os.environ.get("SDVAR_TEST_THREADS", "1")))

# 64 px, 16×16 latent, the official 10 scales, codebook 64.
TEST_VQVAE = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), image_size=64, use_attn=False)


def build_random_pair(name: str = "random-test") -> Pair:
    """The test VQ-VAE with a depth-1 draft and a depth-2 target, random weights (seed 0), 10 named classes."""
    return make_random_pair(seed=0, vqvae_cfg=TEST_VQVAE, draft=dict(depth=1, width=32, heads=1),
                            target=dict(depth=2, width=64, heads=2), name=name)


@pytest.fixture(scope="session")
def random_pair() -> Pair:
    return build_random_pair()


@pytest.fixture(scope="session")
def three_runs(random_pair) -> dict:
    """A speculative run (exact rule, two images), its target-only twin and a schedule run: traces."""
    spec = generate(random_pair, "speculative", [2, 7], seed=3, gamma=3, accept="prob", lenience=1.0).trace
    statuses = set(np.unique(np.concatenate([s.status.ravel() for s in spec.scales])))
    assert statuses == {ACCEPTED, CORRECTED}, "the fixture should show both accepted and corrected tokens"
    target = generate(random_pair, "target", [2, 7], seed=3, progressive=False).trace
    sched = generate(random_pair, "schedule", [2, 7], seed=3, entry_num=4, sd_mask=1, progressive=False).trace
    return {"spec": spec, "target": target, "schedule": sched}


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory, random_pair):
    """The random small pair saved as a --pair folder (vqvae/draft/target .json + .safetensors)."""
    folder = tmp_path_factory.mktemp("pair")
    save_vqvae(random_pair.vqvae, folder / "vqvae")
    save_var(random_pair.draft, folder / "draft")
    save_var(random_pair.target, folder / "target")
    return folder


@torch.no_grad()
def teacher_forced_logits(var, class_ids, tokens, vqvae) -> torch.Tensor:
    """The reference for cached generation: one block-causal forward over given tokens, no CFG, no class
    dropout. tokens: K LongTensors (B, pn_k²) → logits (B, L, V)."""
    assert not var.training
    return var(torch.as_tensor(class_ids), vqvae.teacher_inputs(tokens))


class Names:
    """A stand-in for ui.common.View whose components are their names: the ui callbacks then return
    {name: value}, so tests read their outputs by name without building the app."""

    def __getattr__(self, name: str) -> str:
        return name


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
    """A folder with one precomputed bundle made by explore.run_click on the random pair."""
    folder = tmp_path_factory.mktemp("examples")
    i = {**explore.DEFAULT_INPUTS, **EXAMPLE_INPUTS}
    runs = explore.run_click(random_pair, i["mode"], explore.class_index(random_pair, i["class_name"], None), i["seed"],
                             explore.click_settings(i))
    explore.save_bundle(folder / "01-test.npz", runs, i, EXAMPLE_TITLE)
    return folder


@pytest.fixture(scope="session")
def pair_loader(random_pair):
    """The random pair for 'tiny'; official pairs fail like missing weights do."""
    def load(key, precision="fp32"):
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
