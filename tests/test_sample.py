"""Sharded sampling CLI on a random small pair: 2 processes == 1, resume after a kill, file layout, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdvar_core import sample
from sdvar_core.engine import generate

ROOT = Path(__file__).resolve().parents[1]
LABELS = [2, 2, 2, 5, 5, 5, 7, 7, 7]   # --classes 2,5,7 --per-class 3: 3 chunks of 4, 4, 1


def cli_args(pair_dir, out, *extra):
    return ["--pair", str(pair_dir), "--mode", "speculative", "--gamma", "3", "--lenience", "2",
            "--per-class", "3", "--classes", "2,5,7", "--batch-size", "4", "--seed", "7",
            "--threads", "1", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def single(pair_dir, tmp_path_factory):
    """One uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("single")
    sample.main(cli_args(pair_dir, out))
    return out


def stats_without_time(folder):
    lines = [json.loads(x) for x in (folder / "stats.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "seconds"} for x in lines]


def test_two_processes_give_the_same_files_as_one(pair_dir, single, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "sdvar_core.sample",
                           *cli_args(pair_dir, out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for j in range(len(LABELS)):
        assert (out / "images" / f"{j:06d}.png").read_bytes() == (single / "images" / f"{j:06d}.png").read_bytes(), j
    with np.load(out / "samples.npz") as a, np.load(single / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    with np.load(out / "tokens.npz") as a, np.load(single / "tokens.npz") as b:
        assert np.array_equal(a["tokens"], b["tokens"])
    assert stats_without_time(out) == stats_without_time(single)
    assert json.loads((out / "run.json").read_text())["runs"][-1]["world_size"] == 2
    # rank 1 really made a chunk: both ranks wrote into the shared folder, and chunk 1 is rank 1's
    assert "3 chunk(s) to make now on 2 process(es)" in proc.stdout


def test_npz_layout_and_per_chunk_seeds(single, random_pair):
    with np.load(single / "samples.npz") as z:
        assert sorted(z.files) == ["arr_0", "labels"]
        arr, labels = z["arr_0"], z["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (9, 64, 64, 3)
    assert labels.tolist() == LABELS
    for j in range(9):   # index order
        assert np.array_equal(arr[j], np.asarray(Image.open(single / "images" / f"{j:06d}.png")))
    # chunk c is one generate call with seed·1_000_003 + c over its indices
    again = generate(random_pair, "speculative", LABELS[4:8], seed=7 * 1_000_003 + 1, gamma=3, lenience=2.0)
    assert np.array_equal(again.images, arr[4:8])
    with np.load(single / "tokens.npz") as z:
        tokens = z["tokens"]
        assert tokens.dtype == np.int16 and tokens.shape == (9, 680)
        assert z["labels"].tolist() == LABELS and z["patch_nums"].tolist() == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    final = np.concatenate([s.tokens for s in again.trace.scales], axis=1)
    assert np.array_equal(tokens[4:8], final)
    stats = stats_without_time(single)
    assert [s["index"] for s in stats] == list(range(9)) and [s["class"] for s in stats] == LABELS
    assert stats[5]["target_calls"] == again.trace.target_calls and stats[5]["draft_calls"] == again.trace.draft_calls
    assert stats[5]["accepted_per_scale"] == [int((s.status[1] == 0).sum()) for s in again.trace.scales]
    run = json.loads((single / "run.json").read_text())
    assert run["job"]["mode"] == "speculative" and run["job"]["settings"]["gamma"] == 3
    assert run["job"]["seed"] == 7 and run["runs"][0]["world_size"] == 1 and "torch" in run["runs"][0]["versions"]


def test_resume_after_a_kill_makes_only_the_missing_chunks(pair_dir, single, tmp_path, capsys):
    out = tmp_path / "resumed"
    sample.main(cli_args(pair_dir, out, "--max-chunks", "2"))
    assert "incomplete: 1 chunk(s) left" in capsys.readouterr().out
    assert not (out / "samples.npz").exists() and len(stats_without_time(out)) == 8
    # a kill while chunk 1 was being written: its chunk file and one PNG missing, a temp file and a half line left
    (out / "chunks" / "000001.npz").unlink()
    (out / "images" / "000005.png").unlink()
    (out / "images" / ".000006.png.999.tmp").write_bytes(b"half a png")
    with open(out / "stats.jsonl", "a") as f:
        f.write('{"index": 6, "cla')
    first = (out / "images" / "000000.png").stat().st_mtime_ns
    sample.main(cli_args(pair_dir, out))
    assert "2 chunk(s) to make now" in capsys.readouterr().out   # chunks 1 and 2, not chunk 0
    assert (out / "images" / "000000.png").stat().st_mtime_ns == first
    assert not list((out / "images").glob(".*.tmp"))
    with np.load(out / "samples.npz") as a, np.load(single / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    assert (out / "tokens.npz").read_bytes() == (single / "tokens.npz").read_bytes()
    assert stats_without_time(out) == stats_without_time(single)
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2
    sample.main(cli_args(pair_dir, out))   # nothing left: a no-op that keeps the files
    assert "0 chunk(s) to make now" in capsys.readouterr().out


def test_a_different_job_in_the_same_folder_is_refused(pair_dir, single, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(cli_args(pair_dir, single, "--seed", "8"))
    assert e.value.code == 2 and "different job (differs in: seed)" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (["--per-class", "-1"], "--per-class must be >= 1"),
    (["--mode", "fast"], "mode must be one of"),
    (["--classes", "0,10"], "--classes must be in 0..9"),
    (["--classes", "two"], "comma-separated ints"),
    (["--gamma", "0"], "gamma must be an integer >= 1"),
    (["--mode", "schedule"], "needs entry_num or schedule"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--pair", "no-such-pair-folder"], "target.json not found"),
    (["--draft-depth", "16"], "apply to --pair official only"),
])
def test_bad_input_is_a_clear_error(pair_dir, tmp_path, capsys, change, message):
    with pytest.raises(SystemExit) as e:
        sample.main(cli_args(pair_dir, tmp_path / "x") + change)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

