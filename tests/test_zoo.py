"""Loading: official layout checks (on meta), .pth round trip, weight lookup, our safetensors, the tiny pair."""
import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import teacher_forced_logits
from sdvar_core import checkpoints, zoo
from sdvar_core.checkpoints import save_vqvae
from sdvar_core.config import VQVAEConfig, official_var_config
from sdvar_core.data import CLASS_NAMES
from sdvar_core.engine import Pair, generate
from sdvar_core.runtime import precision_supported
from sdvar_core.var import DERIVED_BUFFERS, VAR
from sdvar_core.vqvae import VQVAE

# 32 px, latent 16 with the official 10 scales: a VQ-VAE small enough to save and load in a blink.
SMALL_VQ = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, use_attn=True,
                       image_size=32)
TINY = Path(__file__).resolve().parents[1] / "assets" / "tiny"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine extra intra-op threads only wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def meta_official(depth):
    with torch.device("meta"):
        return VAR(official_var_config(depth))


@pytest.fixture(scope="module")
def d16():
    return meta_official(16)


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    """No SDVAR_WEIGHTS_DIR, an empty hub cache (so a real cache on this machine cannot answer)."""
    monkeypatch.delenv(zoo.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


# ---- official layout, on the meta device ---------------------------------------------------------------


@pytest.mark.parametrize("depth, keys, params", [(16, 220, 310_283_520), (30, 402, 2_010_020_356)])
def test_official_layout_counts(depth, keys, params):
    model = meta_official(depth)
    sd = model.state_dict()
    assert len(sd) == keys == 12 + 13 * depth
    assert sum(p.numel() for p in model.parameters()) == params
    checkpoints.check_var_state(sd, model)  # the official layout passes the strict check
    C = 64 * depth
    assert sd["class_emb.weight"].shape == (1001, C)
    assert sd["pos_1LC"].shape == (1, 680, C)
    assert sd["lvl_1L"].shape == (1, 680) and sd["attn_bias_for_masking"].shape == (1, 1, 680, 680)
    assert sd["blocks.0.attn.mat_qkv.weight"].shape == (3 * C, C)
    assert "blocks.0.attn.mat_qkv.bias" not in sd
    assert sd[f"blocks.{depth - 1}.ada_lin.1.weight"].shape == (6 * C, C)
    assert sd["head_nm.ada_lin.1.weight"].shape == (2 * C, C)
    if depth == 16:
        assert sd["blocks.0.attn.scale_mul_1H11"].shape == (1, 16, 1, 1)
    else:
        assert sd["head.weight"].shape == (4096, 1920)


def test_missing_unexpected_misshaped_named(d16):
    ref = d16.state_dict()
    sd = dict(ref)
    del sd["blocks.3.ffn.fc1.bias"]
    sd["blocks.3.ffn.fc3.weight"] = torch.empty(4, 4, device="meta")
    sd["head.weight"] = torch.empty(1000, 1024, device="meta")
    with pytest.raises(ValueError) as e:
        checkpoints.check_var_state(sd, d16, "var_d16.pth")
    msg = str(e.value)
    assert "var_d16.pth" in msg
    assert "1 missing key(s): blocks.3.ffn.fc1.bias" in msg
    assert "1 unexpected key(s): blocks.3.ffn.fc3.weight" in msg
    assert "head.weight (1000, 1024) in the file vs (4096, 1024) in the model" in msg


def test_many_missing_keys_first_few_and_count(d16):
    sd = {k: v for k, v in d16.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match=r"13 missing key\(s\): blocks\.1\.[^;]*, … and 7 more$"):
        checkpoints.check_var_state(sd, d16)


def test_old_checkpoint_without_scale_mul_gets_a_hint(d16):
    sd = {k: v for k, v in d16.state_dict().items() if not k.endswith("scale_mul_1H11")}
    with pytest.raises(ValueError, match="16 missing key.*predate normalised attention"):
        checkpoints.check_var_state(sd, d16)


def test_wrong_depth_says_what_it_looks_like(d16):
    with pytest.raises(ValueError, match=r"looks like depth 16 \(16 blocks, width 1024\).*depth 20.*var_d16\.pth"):
        checkpoints.check_var_state(d16.state_dict(), meta_official(20), "var_d20.pth")


# ---- real round trip through .pth files -----------------------------------------------------------------


def small_official(tmp_path, depth=2):
    """A depth-`depth` official-rule VAR (width 64·depth) and a SMALL_VQ VQ-VAE, saved as flat .pth files."""
    torch.manual_seed(0)
    vq = VQVAE(SMALL_VQ)
    var = VAR(official_var_config(depth, vocab_size=SMALL_VQ.vocab_size, z_channels=SMALL_VQ.z_channels))
    torch.save(var.state_dict(), tmp_path / f"var_d{depth}.pth")
    torch.save(vq.state_dict(), tmp_path / "vae.pth")
    return vq, var


def test_load_official_round_trip_and_generate(tmp_path):
    vq, var = small_official(tmp_path)
    vq2, var2 = zoo.load_official(2, tmp_path / "var_d2.pth", tmp_path / "vae.pth", "cpu", vqvae_cfg=SMALL_VQ)
    assert var2.cfg.width == 128 and var2.cfg.heads == 2 and not var2.training and not vq2.training
    for a, b in ((var, var2), (vq, vq2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    out = generate(Pair(vq2, var2, var2), "target", [3, 7], seed=0, cfg=1.5, top_k=20, progressive=False)
    assert out.images.shape == (2, 32, 32, 3)
    assert out.images.std() > 0


def test_load_official_nested_trainer_checkpoint(tmp_path):
    vq, var = small_official(tmp_path)
    ckpt = tmp_path / "ar-ckpt-last.pth"
    torch.save({"epoch": 3, "trainer": {"var_wo_ddp": var.state_dict(), "vae_local": vq.state_dict()}}, ckpt)
    vq2, var2 = zoo.load_official(2, ckpt, ckpt, vqvae_cfg=SMALL_VQ)
    assert torch.equal(var2.head.weight, var.head.weight)
    assert torch.equal(vq2.quantize.embedding.weight, vq.quantize.embedding.weight)


def test_ema_vocab_hit_with_another_scale_count_is_replaced(tmp_path):
    vq, _ = small_official(tmp_path)
    sd = vq.state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(14, SMALL_VQ.vocab_size)
    torch.save(sd, tmp_path / "vae14.pth")
    vq2 = zoo.load_official_vqvae(tmp_path / "vae14.pth", cfg=SMALL_VQ)
    assert vq2.quantize.ema_vocab_hit_SV.shape == (10, SMALL_VQ.vocab_size)
    assert torch.equal(vq2.quantize.embedding.weight, vq.quantize.embedding.weight)


def test_load_official_wrong_depth_and_bad_files(tmp_path):
    small_official(tmp_path)
    with pytest.raises(ValueError, match=r"looks like depth 2 \(2 blocks, width 128\)"):
        zoo.load_official(3, tmp_path / "var_d2.pth", tmp_path / "vae.pth", vqvae_cfg=SMALL_VQ)
    with pytest.raises(ValueError, match="VQ-VAE checkpoint .*missing key"):
        zoo.load_official(2, tmp_path / "var_d2.pth", tmp_path / "vae.pth")  # official VQ-VAE config
    with pytest.raises(ValueError, match="checkpoint file not found: .*nope.pth"):
        zoo.load_official(2, tmp_path / "nope.pth", tmp_path / "vae.pth", vqvae_cfg=SMALL_VQ)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: refused by torch.load.weights_only=True., not a plain tensor"):
        zoo.load_official(2, tmp_path / "junk.pth", tmp_path / "vae.pth", vqvae_cfg=SMALL_VQ)


class Payload:
    """Unpickling this would create a marker file: weights_only=True must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_weights_only_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"head.weight": torch.zeros(2), "x": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"weights_only=True.*Unsupported global"):
        zoo.read_checkpoint(tmp_path / "evil.pth", "var_wo_ddp")
    assert not marker.exists()


# ---- finding the official files ----------------------------------------------------------------------


def test_find_official_weights_in_folder_and_env(tmp_path, monkeypatch, no_weights_env):
    for name in ("var_d16.pth", "vae_ch160v4096z32.pth"):
        (tmp_path / name).write_bytes(b"")
    assert zoo.find_official_weights(16, tmp_path) == (tmp_path / "var_d16.pth", tmp_path / "vae_ch160v4096z32.pth")
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(tmp_path))
    assert zoo.find_official_weights(16) == (tmp_path / "var_d16.pth", tmp_path / "vae_ch160v4096z32.pth")


def test_find_official_weights_offline_fails_fast(tmp_path, monkeypatch, no_weights_env):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "vae_ch160v4096z32.pth").write_bytes(b"")
    t = time.perf_counter()
    with pytest.raises(ValueError) as e:
        zoo.find_official_weights(30, tmp_path)
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    for part in ("var_d30.pth", "vae_ch160v4096z32.pth", f"weights_dir={tmp_path}", "FoundationVision/var",
                 "HF_HUB_OFFLINE", "missing var_d30.pth:", zoo.WEIGHTS_ENV):
        assert part in msg


def test_find_official_weights_unreachable_hub_fails_fast(tmp_path, monkeypatch, no_weights_env):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="var_d16.pth and vae_ch160v4096z32.pth.*no folder"):
        zoo.find_official_weights(16)
    assert time.perf_counter() - t < 5


def test_load_pair_official_without_weights(tmp_path, monkeypatch, no_weights_env):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="var_d30.pth"):
        zoo.load_pair("official", weights_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="unknown pair 'huge'"):
        zoo.load_pair("huge")


# ---- our safetensors -----------------------------------------------------------------------------------


def small_var():
    torch.manual_seed(1)
    cfg = official_var_config(2, vocab_size=SMALL_VQ.vocab_size, z_channels=SMALL_VQ.z_channels, num_classes=5)
    return VAR(cfg).eval()


def test_save_load_var_round_trip(tmp_path):
    var = small_var()
    checkpoints.save_var(var, tmp_path / "m", meta={"steps": 7})
    stored = load_file(str(tmp_path / "m.safetensors"))
    assert not set(DERIVED_BUFFERS) & set(stored)
    assert json.loads((tmp_path / "m.json").read_text())["steps"] == 7
    var2 = checkpoints.load_var(tmp_path / "m")
    assert var2.cfg == var.cfg and not var2.training
    tokens = [torch.randint(SMALL_VQ.vocab_size, (2, p * p)) for p in SMALL_VQ.patch_nums]
    vq = VQVAE(SMALL_VQ).eval()
    ids = torch.tensor([0, 4])
    assert torch.equal(teacher_forced_logits(var, ids, tokens, vq), teacher_forced_logits(var2, ids, tokens, vq))


def test_load_var_tampered_and_missing(tmp_path):
    checkpoints.save_var(small_var(), tmp_path / "m")
    sd = load_file(str(tmp_path / "m.safetensors"))
    sd["word_embed.weight"] = torch.zeros(128, 9)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"word_embed.weight \(128, 9\) in the file vs \(128, 8\) in the model"):
        checkpoints.load_var(tmp_path / "m")
    del sd["word_embed.weight"]
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="missing key.*word_embed.weight"):
        checkpoints.load_var(tmp_path / "m")
    (tmp_path / "m.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        checkpoints.load_var(tmp_path / "m")
    with pytest.raises(ValueError, match=r"VAR file\(s\) not found: .*other.json"):
        checkpoints.load_var(tmp_path / "other")


# ---- cards and the tiny pair ---------------------------------------------------------------------------


def test_verify_card(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    (tmp_path / "b.bin").write_bytes(b"world")
    files = {n: {"sha256": zoo.file_sha256(tmp_path / n)} for n in ("a.bin", "b.bin")}
    assert files["a.bin"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    (tmp_path / "card.json").write_text(json.dumps({"files": files}))
    assert zoo.verify_card(tmp_path)["files"] == files
    (tmp_path / "b.bin").write_bytes(b"w0rld")
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ValueError, match=r"a.bin \(missing\), b.bin \(sha256"):
        zoo.verify_card(tmp_path)


def test_pair_from_a_tiny_style_folder(tmp_path, monkeypatch):
    """The 'tiny' loading path on small stand-in weights: card checked on load, names, generation."""
    torch.manual_seed(2)
    save_vqvae(VQVAE(SMALL_VQ), tmp_path / "vqvae")
    for name, depth in (("draft", 1), ("target", 2)):
        cfg = official_var_config(depth, vocab_size=SMALL_VQ.vocab_size, z_channels=SMALL_VQ.z_channels,
                                  num_classes=len(CLASS_NAMES))
        checkpoints.save_var(VAR(cfg), tmp_path / name)
    files = {f"{s}.{e}": {"sha256": zoo.file_sha256(tmp_path / f"{s}.{e}")}
             for s in ("vqvae", "draft", "target") for e in ("json", "safetensors")}
    (tmp_path / "card.json").write_text(json.dumps({"files": files}))
    monkeypatch.setattr(zoo, "TINY_DIR", tmp_path)
    pair = zoo.load_pair(device="cpu")
    assert pair.class_names == list(CLASS_NAMES) and pair.draft.cfg.depth == 1 and pair.target.cfg.depth == 2
    out = generate(pair, "speculative", [1, 8], seed=0, progressive=False)
    assert out.images.shape == (2, 32, 32, 3)
    (tmp_path / "draft.json").write_text((tmp_path / "draft.json").read_text() + " ")
    with pytest.raises(ValueError, match=r"do not match the card: draft.json \(sha256"):
        zoo.load_pair(device="cpu")


def test_tiny_pair_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "TINY_DIR", tmp_path)
    with pytest.raises(ValueError, match="tiny pair is incomplete: vqvae.json, vqvae.safetensors, draft.json"):
        zoo.load_pair("tiny", device="cpu")


@pytest.mark.skipif(not (TINY / "target.safetensors").is_file(), reason="assets/tiny/target.safetensors not there yet")
def test_tiny_pair_loads_matches_card_and_generates():
    card = zoo.verify_card(TINY)
    for name in ("vqvae.safetensors", "draft.safetensors", "target.safetensors"):
        assert name in card["files"]
    pair = zoo.load_pair("tiny", device="cpu")
    assert pair.name == "tiny" and pair.class_names == list(CLASS_NAMES)
    for role in ("draft", "target"):
        saved = json.loads((TINY / f"{role}.json").read_text())["config"]
        assert json.loads(json.dumps(getattr(pair, role).cfg.to_dict())) == saved
    assert pair.target.cfg.num_classes == len(CLASS_NAMES)
    out = generate(pair, "speculative", [0, 1], seed=0)
    s = pair.vqvae.cfg.image_size
    assert out.images.shape == (2, s, s, 3) and out.images.std() > 0


@pytest.mark.skipif(not precision_supported(torch.device("cpu"), "bf16"), reason="this CPU has no native bf16")
def test_load_official_in_bf16_holds_the_matrices_once_and_runs_in_bf16(tmp_path):
    """precision='bf16': every Linear weight matrix in bf16, the rest fp32, equal to the file's values cast once;
    the pair says so and runs in bf16 only (an fp32 run is refused with a message)."""
    vq, var = small_official(tmp_path)
    var2 = zoo.load_official_var(2, tmp_path / "var_d2.pth", "cpu", vqvae_cfg=SMALL_VQ, precision="bf16")
    matrices = zoo.matrix_keys(var2)
    assert "blocks.0.attn.mat_qkv.weight" in matrices and "head.weight" in matrices
    ref = var.state_dict()
    for key, value in var2.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == (torch.bfloat16 if key in matrices else torch.float32), key
            assert torch.equal(value, ref[key].to(value.dtype)), key
    vq2 = zoo.load_official_vqvae(tmp_path / "vae.pth", "cpu", SMALL_VQ)
    pair = Pair(vq2, var2, var2)
    assert pair.precision == "bf16"
    with pytest.raises(ValueError, match="held in bf16.*precision='bf16'"):
        generate(pair, "target", [1], seed=0, progressive=False)
    out = generate(pair, "speculative", [1, 2], seed=0, gamma=2, precision="bf16", progressive=False)
    assert out.images.shape == (2, 32, 32, 3) and out.images.std() > 0
