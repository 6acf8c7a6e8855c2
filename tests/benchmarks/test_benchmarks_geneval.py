"""GenEval runs end to end on tiny local pipelines: folder layout, ReNO records, resume (also after a
real kill, with the folder read by GenEval's own reading code meanwhile), refused settings, sharding."""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from train.benchmarks.geneval import METADATA, TASKS, parse_args, read_evaluation
from fixtures import REPO, bench_records, child_env, kill_when
from official_evaluators import function_from, official_file
from train.benchmarks import main


def args(tiny, out, *extra):
    return ["geneval", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]), "--outdir", str(out),
            "--resolution", "64", "--device", "cpu", "--samples", "2", "--iterations", "3", "--summary-wait", "60",
            *extra]


def whole_pngs_geneval_takes(out):
    """Check the folder as evaluate_images.py lists it (numbered folders, one JSON object in
    metadata.jsonl, names matching its unanchored ``\\d+\\.png``): every such file is a whole PNG.
    Returns {folder: [file names]}."""
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit()):
        with open(folder / "metadata.jsonl") as f:
            json.load(f)
        names = sorted(p.name for p in (folder / "samples").iterdir() if re.match(r"\d+\.png", p.name))
        for name in names:
            Image.open(folder / "samples" / name).load()  # a truncated PNG raises here
        found[folder.name] = names
    return found


def geneval_reading_code(out, results):
    """GenEval's own ``main`` (evaluation/evaluate_images.py) over ``out``, its detector replaced by a
    recorder that loads each image whole and calls it correct when its sample number is even; it
    writes ``results`` as GenEval does. Returns the (file, prompt) pairs it evaluated."""
    import pandas

    seen = []

    def evaluate_image(filepath, metadata):
        Image.open(filepath).load()
        seen.append((os.path.relpath(filepath, out), metadata["prompt"]))
        return {"filename": filepath, "tag": metadata["tag"], "prompt": metadata["prompt"],
                "correct": int(re.search(r"(\d+)\.png$", filepath).group(1)) % 2 == 0, "reason": "",
                "metadata": json.dumps(metadata), "details": "{}"}
    path = official_file("geneval", "evaluation/evaluate_images.py")
    namespace = {"os": os, "json": json, "re": re, "pd": pandas, "evaluate_image": evaluate_image}
    function_from(path, "main", namespace)(argparse.Namespace(imagedir=str(out), outfile=str(results)))
    return sorted(seen)


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
    recs = bench_records(out)
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
    run = json.loads((out / "run.json").read_text())
    assert run["benchmark"] == "geneval" and run["options"]["samples"] == 2 and run["options"]["iterations"] == 3
    assert run["inputs"]["metadata"] == hashlib.sha256(METADATA.read_bytes()).hexdigest()
    assert not list((out / ".staging" / "rank0").iterdir())  # nothing left half-written


def test_official_reading_code_takes_every_image_and_our_reader_scores_its_results(tiny, tmp_path):
    out = tmp_path / "geneval"
    main(args(tiny, out, "--limit", "3", "--samples", "2", "--iterations", "1", "--grid"))
    seen = geneval_reading_code(out, out / "results.jsonl")
    prompts = [json.loads(line)["prompt"] for line in METADATA.read_text().splitlines()]
    assert seen == [(f"{i:05d}/samples/{j:04d}.png", prompts[i]) for i in range(3) for j in range(2)]
    scores = read_evaluation(out)  # the recorder marked sample 0 correct, sample 1 wrong: 0.5 in each task
    assert scores["images"] == 6 and scores["single_object"] == 0.5 and scores["overall"] == 0.5
    assert scores["prompts"] == 3  # the prompt folders of evaluate_images.py's file names
    assert set(scores) - {"overall", "images", "prompts"} <= set(TASKS)


def test_protocol_defaults():
    a = parse_args(["--pipeline", "p", "--outdir", "o", "--latent-clip", "w.pt"])  # ReNO needs a reward
    assert (a.samples, a.seed) == (4, 0)  # GenEval's 4 images per prompt, ReNO's seeds 0-3


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    out = tmp_path / "g"
    main(args(tiny, out, "--limit", "1", "--samples", "1", "--iterations", "1"))
    with pytest.raises(SystemExit) as err:
        main(args(tiny, out, "--limit", "1", "--samples", "1", "--iterations", "2", "--lr", "3"))
    assert "options.iterations: on disk 1, now 2" in str(err.value)
    assert "options.lr: on disk 5.0, now 3.0" in str(err.value)
    other = tmp_path / "prompts.jsonl"
    other.write_text(METADATA.read_text().splitlines()[1] + "\n")
    with pytest.raises(SystemExit, match="inputs.metadata: on disk"):
        main(args(tiny, out, "--limit", "1", "--samples", "1", "--iterations", "1", "--metadata", str(other)))
    # options that only change how the run executes do not make it another run: a larger --limit resumes
    summary = main(args(tiny, out, "--limit", "2", "--samples", "1", "--iterations", "1", "--batch-size", "2"))
    assert summary["items_done"] == 2
    (out / "run.json").unlink()
    with pytest.raises(SystemExit, match="holds results but no run.json"):
        main(args(tiny, out, "--limit", "2", "--samples", "1", "--iterations", "1"))


def test_reno_without_a_reward_is_refused_before_the_folder_is_claimed(tiny, tmp_path, capsys):
    """No reward for ReNO: the usage error comes before run.json or any prompt folder, so the same --outdir
    then takes the run with a reward."""
    out = tmp_path / "g"
    no_reward = [a for a in args(tiny, out, "--limit", "1") if a not in ("--latent-clip", str(tiny["latent_clip"]))]
    with pytest.raises(SystemExit):
        main(no_reward)
    assert "ReNO needs a reward" in capsys.readouterr().err
    assert not out.exists()
    assert main(args(tiny, out, "--limit", "1", "--iterations", "1"))["items_done"] == 1


def test_baseline_without_reno_uses_the_same_seeds(tiny, tmp_path):
    main(args(tiny, tmp_path / "a", "--limit", "1", "--iterations", "0"))
    main(args(tiny, tmp_path / "b", "--limit", "1", "--iterations", "2", "--baseline-dir", str(tmp_path / "b0")))
    for j in range(2):
        a = Image.open(tmp_path / "a/00000/samples" / f"{j:04d}.png").tobytes()
        assert a == Image.open(tmp_path / "b0/00000/samples" / f"{j:04d}.png").tobytes()
    assert bench_records(tmp_path / "a")[0]["iterations"] == 0


def test_resume_after_kill_9_skips_finished_prompts(tiny, tmp_path):
    """A real SIGKILL once the first prompt is recorded: the rerun keeps prompt 0's files untouched
    and renders only the rest."""
    out = tmp_path / "g"
    # killed once prompt 0 is recorded and prompt 1 has begun (its folder appears first, with its metadata)
    kill_when([sys.executable, "-m", "train.benchmarks", *args(tiny, out, "--limit", "6", "--iterations", "4")],
              lambda: bool(bench_records(out)) and (out / "00001").is_dir())
    done = {r["item"] for r in bench_records(out)}
    assert 0 in done and len(done) < 6
    # the killed folder is evaluable as it stands: every numbered folder has its metadata, every PNG is whole
    on_disk = whole_pngs_geneval_takes(out)
    assert on_disk["00000"] == ["0000.png", "0001.png"] and "00001" in on_disk
    assert not [p for p in out.rglob("*") if p.is_file() and ".staging" not in p.parts and p.suffix == ".tmp"]
    # GenEval's own reading code takes exactly those images, with their prompts
    prompts = [json.loads(line)["prompt"] for line in METADATA.read_text().splitlines()]
    seen = geneval_reading_code(out, tmp_path / "killed.jsonl")
    assert seen == sorted((f"{k}/samples/{n}", prompts[int(k)]) for k, names in on_disk.items() for n in names)
    first = (out / "00000/samples/0000.png").stat().st_mtime_ns
    summary = main(args(tiny, out, "--limit", "6", "--iterations", "4"))
    recs = bench_records(out)
    assert sorted((r["item"], r["sample"]) for r in recs) == [(i, j) for i in range(6) for j in range(2)]
    assert (out / "00000/samples/0000.png").stat().st_mtime_ns == first  # not redone
    assert not list(out.rglob("*.tmp"))  # a PNG cut off by the kill was replaced, never kept under its name
    assert summary["items_done"] == 6 and summary["images"] == 12


@pytest.mark.slow
def test_two_ranks_split_prompts_disjointly(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train.benchmarks", *args(tiny, out, "--limit", "4", "--samples", "1", "--iterations", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        items = {json.loads(line)["item"] for line in (out / f"results.rank{rank}.jsonl").read_text().splitlines()}
        assert items == {i for i in range(4) if i % 2 == rank}
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001", "00002", "00003"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_done"] == 4 and summary["images"] == 4
