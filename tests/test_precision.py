"""bf16 on the CPU: the engine's autocast path gives the fp32 token distributions within noise."""
import numpy as np
import pytest
import torch

from sdvar_core.engine import generate
from sdvar_core.runtime import precision_supported
from test_engine import assert_matches, mini_pair, scale01_frequencies, target_marginals

pytestmark = pytest.mark.skipif(not precision_supported(torch.device("cpu"), "bf16"),
                                reason="this CPU has no native bf16")


@pytest.mark.parametrize("mode, kw", [("target", {}), ("speculative", {"gamma": 2})])
def test_bf16_samples_the_fp32_target_distribution(mode, kw):
    """Class-conditional marginals of scales 0 and 1, sampled in bf16, against the target's exact fp32
    probabilities (5 standard errors per cell); the draft's own samples fail the same test."""
    pair = mini_pair()
    p0, p1 = target_marginals(pair, 1)
    f0, f1, n = scale01_frequencies(pair, mode, precision="bf16", **kw)
    assert_matches(f0, p0, n)
    assert_matches(f1, p1, n)
    d0, _, n = scale01_frequencies(pair, "draft", precision="bf16")
    with pytest.raises(AssertionError):
        assert_matches(d0, p0, n)


def test_bf16_run_records_and_decodes(random_pair):
    fp32 = generate(random_pair, "speculative", [0, 3], seed=1, gamma=2).trace
    bf16 = generate(random_pair, "speculative", [0, 3], seed=1, gamma=2, precision="bf16").trace
    assert bf16.settings["precision"] == "bf16" and bf16.images.dtype == np.uint8
    assert bf16.images.shape == fp32.images.shape and bf16.scales[4].image.shape == fp32.scales[4].image.shape
    assert all(s.p_draft.dtype == np.float32 for s in bf16.scales)   # the acceptance math stays fp32


@torch.no_grad()
def test_bf16_distributions_of_the_embedded_pair_stay_close_to_fp32():
    """Teacher-forced per-token distributions of the embedded pair along sampled token paths: bf16 moves
    them far less than the draft differs from the target (total variation, mean over tokens)."""
    from sdvar_core.zoo import load_pair

    try:
        pair = load_pair("tiny")
    except (ValueError, OSError, ImportError) as e:
        pytest.skip(f"the embedded pair is not available: {e}")
    classes = list(range(min(4, pair.num_classes)))
    tokens = [torch.from_numpy(s.tokens) for s in generate(pair, "target", classes, seed=0, cfg=1.5,
                                                           progressive=False).trace.scales]
    latents = pair.vqvae.teacher_inputs(tokens)

    def probs(model, bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.tensor(classes), latents).float().softmax(-1)

    def tv(a, b):
        return 0.5 * (a - b).abs().sum(-1).mean().item()

    target = probs(pair.target)
    drift = tv(probs(pair.target, bf16=True), target)
    gap = tv(probs(pair.draft), target)
    assert drift < 0.1 * gap, (drift, gap)
    assert tv(probs(pair.draft, bf16=True), probs(pair.draft)) < 0.1 * gap
