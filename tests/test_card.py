"""The embedded pair's card (sdvar_core.card) and the `train all` recipe (sdvar_core.train)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sdvar_core import card, metrics, train
from sdvar_core.checkpoints import save_classifier
from sdvar_core.classifier import train_classifier
from sdvar_core.trace import ACCEPTED, CORRECTED
from sdvar_core.zoo import load_pair


def two_colour_image(size=64, split=32):
    """Left of column `split` red, right of it blue: one vertical edge. (1, size, size, 3) uint8."""
    img = np.zeros((1, size, size, 3), np.uint8)
    img[:, :, :split] = (255, 0, 0)
    img[:, :, split:] = (0, 0, 255)
    return img


def test_edge_tokens_find_the_edge_and_only_it():
    img = two_colour_image(split=32)
    e16 = card.edge_tokens(img, 16).reshape(16, 16)   # 4-px tokens: the edge lies between columns 7 and 8
    assert e16[:, 7].all() and e16[:, 8].all()
    assert not e16[:, :7].any() and not e16[:, 9:].any()
    assert card.edge_tokens(img, 1).tolist() == [[True]]
    flat = np.full((2, 64, 64, 3), 90, np.uint8)
    assert not card.edge_tokens(flat, 13).any()
    # 13 does not divide 64: footprints overlap by a pixel, so both neighbours of the edge see it
    e13 = card.edge_tokens(img, 13).reshape(13, 13)
    cols = np.flatnonzero(e13[0])
    assert 1 <= len(cols) <= 2 and abs(cols.mean() * 64 / 13 + 64 / 26 - 32) < 64 / 13


def test_speculative_stats_counts_add_up(random_pair):
    st = card.speculative_stats(random_pair, samples=3, settings=dict(cfg=1.5, top_k=0, top_p=1.0))
    K = random_pair.layout.num_scales
    assert st["samples"] == 3 and 1 <= st["target_calls_mean"] <= K
    assert len(st["acceptance_per_scale"]) == K
    for k in range(K):
        edge, flat = st["edge_tokens_per_scale"][k], st["flat_tokens_per_scale"][k]
        a = st["acceptance_per_scale"][k]
        assert (a is None) == (edge + flat == 0)
        if a is not None:
            assert 0 <= a <= 1
        for where, n in (("edge", edge), ("flat", flat)):
            r = st[f"corrected_rate_{where}_per_scale"][k]
            assert (r is None) == (n == 0) and (r is None or 0 <= r <= 1)
    # the 1x1 scale covers the whole picture, so its token is an edge token whenever it was judged
    assert st["flat_tokens_per_scale"][0] == 0


def test_speculative_stats_match_a_trace(random_pair):
    """Acceptance per scale equals the pooled ACCEPTED / (ACCEPTED + CORRECTED) of the same runs."""
    from sdvar_core.engine import generate

    settings = dict(cfg=1.5, top_k=0, top_p=1.0)
    st = card.speculative_stats(random_pair, samples=2, settings=settings)
    acc, judged = np.zeros(10), np.zeros(10)
    for i in range(2):
        tr = generate(random_pair, "speculative", [i], seed=i, gamma=2, progressive=False, **settings).trace
        for s in tr.scales:
            if s.producer == "draft+target":
                acc[s.scale] += (s.status == ACCEPTED).sum()
                judged[s.scale] += ((s.status == ACCEPTED) | (s.status == CORRECTED)).sum()
    expect = [None if j == 0 else round(a / j, 4) for a, j in zip(acc, judged)]
    assert st["acceptance_per_scale"] == expect


def test_grid_png(tmp_path):
    rng = np.random.default_rng(0)
    real, target, draft = (rng.integers(0, 255, (10 * 2, 64, 64, 3), dtype=np.uint8) for _ in range(3))
    card.write_grid(tmp_path / "g.png", real, target, draft, [f"c{i}" for i in range(10)])
    g = np.asarray(Image.open(tmp_path / "g.png"))
    tile = 64 * card.GRID_ZOOM
    assert g.shape[1] >= 10 * tile and g.shape[0] >= 3 * 2 * tile
    # the first target tile is the first target image, upscaled
    assert (g == np.kron(target[0], np.ones((card.GRID_ZOOM, card.GRID_ZOOM, 1), np.uint8))[0, 0]).all(-1).any()


def test_goals_read_the_numbers():
    ev = {"target": {"class_accuracy": 0.93, "fid_tiny": 1.0, "fid_tiny_ci95": [0.9, 1.1]},
          "draft": {"class_accuracy": 0.7, "fid_tiny": 3.0, "fid_tiny_ci95": [2.8, 3.2]}}
    assert [ok for _, ok, _ in card.goals(ev)] == [True, True, True, True]
    ev["draft"].update(class_accuracy=0.95, fid_tiny_ci95=[1.0, 1.2])
    assert [ok for _, ok, _ in card.goals(ev)] == [True, True, False, False]


def test_card_end_to_end_writes_hashes_that_load_pair_checks(tmp_path, pair_dir):
    folder = tmp_path / "tiny"
    shutil.copytree(pair_dir, folder)
    for ext in ("json", "safetensors"):   # a plain mid model beside the pair (here: the draft's weights)
        shutil.copy2(folder / f"draft.{ext}", folder / f"mid.{ext}")
    # the classifier inside the pair's folder (as `train all --classifier <out>/classifier` puts it): not the pair's
    save_classifier(train_classifier(steps=2, batch_size=4, progress=False), folder / "clf", {"steps": 2})
    c = card.main(["--folder", str(folder), "--classifier", str(folder / "clf"), "--work", str(tmp_path / "work"),
                   "--per-class", "1", "--real", "20", "--spec-samples", "2", "--batch-size", "10", "--device", "cpu"])
    assert (folder / "grid.png").is_file() and (folder / "MODEL_CARD.md").is_file()
    saved = json.loads((folder / "card.json").read_text())
    assert sorted(saved["files"]) == ["draft.safetensors", "target.safetensors", "vqvae.safetensors"]
    assert saved["evaluation"]["target"]["images"] == 10 and saved["data_version"] == c["data_version"]
    mid_eval = json.loads((tmp_path / "work" / "mid" / "eval.json").read_text())   # sampled as a plain model
    assert saved["evaluation"]["mid"]["fid_tiny"] == mid_eval["fid_tiny"] and "mid" in saved["models"]
    assert saved["evaluation"]["mid"]["images"] == 10 and "plain mid VAR" in (folder / "MODEL_CARD.md").read_text()
    eval_json = json.loads((tmp_path / "work" / "target" / "eval.json").read_text())
    assert saved["evaluation"]["target"]["class_accuracy"] == eval_json["class_accuracy"]
    assert "Goals of issue 9" in (folder / "MODEL_CARD.md").read_text()
    load_pair("tiny", folder=folder, device="cpu")              # hashes verified
    with open(folder / "draft.safetensors", "r+b") as f:     # one flipped byte fails the check
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="draft.safetensors"):
        load_pair("tiny", folder=folder, device="cpu")


def test_recipe_stages_parse_with_the_real_parsers(tmp_path):
    recipe = train.PairRecipe()
    stages = recipe.stages(tmp_path, ["--device", "cpu", "--precision", "auto"])
    assert [s[0] for s in stages] == ["classifier", "vqvae", "draft", "target", "mid"]
    parsers = {"train": train.build_parser(), "metrics": metrics.build_parser()}
    for name, module, argv, stem in stages:
        args = parsers[module].parse_args(argv)
        assert args.out == str(stem)
        if name in ("draft", "target", "mid"):
            depth, width, heads = getattr(recipe, name)
            assert (args.depth, args.width, args.heads, args.resume) == (depth, width, heads, True)
            assert args.steps == getattr(recipe, f"{name}_steps")
    quick = recipe.quick()
    assert quick.target_steps < recipe.target_steps and quick.per_class < recipe.per_class


def test_recipe_trains_the_plain_mid_model_after_the_target(tmp_path):
    """The mid stage: depth 4, width 160, 2 heads, 3500 steps, lr 1.5e-3, seed 3, on the pair's VQ-VAE tokens with
    the other VARs' data settings, after the target; `train all` installs it beside the pair."""
    recipe = train.PairRecipe()
    stages = {s[0]: s for s in recipe.stages(tmp_path, ["--device", "cpu", "--precision", "bf16", "--threads", "1"])}
    args = train.build_parser().parse_args(stages["mid"][2])
    assert (args.model, args.depth, args.width, args.heads) == ("var", 4, 160, 2)
    assert (args.steps, args.lr, args.seed, args.resume) == (3500, 1.5e-3, 3, True)
    assert args.vqvae == str(tmp_path / "vqvae") and args.out == str(tmp_path / "mid")
    target = train.build_parser().parse_args(stages["target"][2])
    for same in ("batch_size", "images", "eval_images", "data_cache", "warmup", "ckpt_every", "precision", "threads"):
        assert getattr(args, same) == getattr(target, same), same
    assert list(stages).index("mid") > list(stages).index("target")


def test_stage_done_needs_the_requested_steps(tmp_path):
    stem = tmp_path / "draft"
    assert not train.stage_done(stem, ["--steps", "10"])
    stem.with_suffix(".json").write_text(json.dumps({"steps": 7}))
    assert not train.stage_done(stem, ["--steps", "10"])     # stopped early (time limit): resume it
    stem.with_suffix(".json").write_text(json.dumps({"steps": 10}))
    assert train.stage_done(stem, ["--steps", "10"])
    assert train.stage_done(stem, ["--out", "x"])            # no step count: the file is enough
