"""GenEval runs end to end on tiny local pipelines: folder layout, ReNO records, resume, sharding."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from train.benchmarks.runner import DATA
from fixtures import REPO
from train.benchmarks.tiny_pipelines import build_all
from train.benchmarks import main

METADATA = DATA / "geneval/evaluation_metadata.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny"))


def args(tiny, out, *extra):
    return ["geneval", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]), "--outdir", str(out),
            "--resolution", "64", "--device", "cpu", "--samples", "2", "--iterations", "3", "--summary-wait", "60",
            *extra]


def records(out):
    return [json.loads(line) for p in sorted(out.glob("results.rank*.jsonl")) for line in p.read_text().splitlines()]


def test_layout_records_and_summary(tiny, tmp_path):
    out = tmp_path / "geneval"
    summary = main(args(tiny, out, "--limit", "2", "--grid", "--baseline-dir", str(tmp_path / "base")))
    lines = METADATA.read_text().splitlines()
    for i in range(2):
        folder = out / f"{i:05d}"
        with open(folder / "metadata.jsonl") as f:  # GenEval reads it with one json.load
            assert json.load(f) == json.loads(lines[i])
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert Image.open(folder / "samples" / "0000.png").size == (64, 64)
        assert Image.open(folder / "grid.png").size == (128, 64)
        assert (tmp_path / "base" / f"{i:05d}" / "metadata.jsonl").is_file()
        assert (tmp_path / "base" / f"{i:05d}" / "samples" / "0001.png").is_file()
    recs = records(out)
    assert sorted((r["item"], r["sample"], r["seed"]) for r in recs) == [(0, 0, 0), (0, 1, 1), (1, 0, 0), (1, 1, 1)]
    for r in recs:
        assert r["iterations"] == 3 and r["tag"] == "single_object"
        assert r["losses"]["latent_clip"]["best"] <= r["losses"]["latent_clip"]["initial"] + 1e-6  # best-of-trajectory
        assert set(r["time"]) == {"unet", "reward", "decode", "other", "total"} and r["time"]["unet"] > 0
        assert r["peak_memory_gb"] > 0
    assert summary["images"] == 4 and summary["items_done"] == 2
    assert summary["rewards"]["latent_clip"]["gain"] >= 0
    assert json.loads((out / "summary.json").read_text())["images"] == 4
    assert main(["summary", str(out)])["rewards"] == summary["rewards"]


def test_baseline_without_reno_uses_the_same_seeds(tiny, tmp_path):
    main(args(tiny, tmp_path / "a", "--limit", "1", "--iterations", "0"))
    main(args(tiny, tmp_path / "b", "--limit", "1", "--iterations", "2", "--baseline-dir", str(tmp_path / "b0")))
    for j in range(2):
        a = Image.open(tmp_path / "a/00000/samples" / f"{j:04d}.png").tobytes()
        assert a == Image.open(tmp_path / "b0/00000/samples" / f"{j:04d}.png").tobytes()
    assert records(tmp_path / "a")[0]["iterations"] == 0


def test_resume_after_kill_9_skips_finished_prompts(tiny, tmp_path):
    """A real SIGKILL once the first prompt is recorded: the rerun keeps prompt 0's files untouched
    and renders only the rest."""
    out = tmp_path / "g"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "train.benchmarks", *args(tiny, out, "--limit", "6", "--iterations", "4")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not records(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = {r["item"] for r in records(out)}
    assert 0 in done and len(done) < 6
    first = (out / "00000/samples/0000.png").stat().st_mtime_ns
    summary = main(args(tiny, out, "--limit", "6", "--iterations", "4"))
    recs = records(out)
    assert sorted((r["item"], r["sample"]) for r in recs) == [(i, j) for i in range(6) for j in range(2)]
    assert (out / "00000/samples/0000.png").stat().st_mtime_ns == first  # not redone
    assert not list(out.rglob("*.tmp"))  # a PNG cut off by the kill was replaced, never kept under its name
    assert summary["items_done"] == 6 and summary["images"] == 12


@pytest.mark.slow
def test_two_ranks_split_prompts_disjointly(tiny, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "train.benchmarks", *args(tiny, out, "--limit", "4", "--samples", "1", "--iterations", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        items = {json.loads(line)["item"] for line in (out / f"results.rank{rank}.jsonl").read_text().splitlines()}
        assert items == {i for i in range(4) if i % 2 == rank}
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001", "00002", "00003"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_done"] == 4 and summary["images"] == 4
