"""T2I-CompBench runs: the flat <prompt>_<NNNNNN>.png naming per category, the protocol's defaults and
prompt revisions, pixel + latent rewards, and the official scorers' reading code on our folders."""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from train.benchmarks.runner import DATA
from synthetic import tiny_pixel_cfg
from train.benchmarks import main
from train.benchmarks.external import import_module
from train.benchmarks.t2i_compbench import (CATEGORIES, PLUS, REVISIONS, SCORERS, load_items, parse_args,
                                            prompt_bytes, read_evaluation, read_prompts)
from fixtures import bench_records, kill_when
from official_evaluators import function_from, official_file

SUMS = dict(reversed(line.split(maxsplit=1)) for line in (DATA / "SHA256SUMS").read_text().splitlines())

TINY_PIXEL = tiny_pixel_cfg(image_size=32, layers=1, text_width=32)


def test_every_split_parses_and_suits_the_file_name_layout():
    for revision in REVISIONS:
        for category in CATEGORIES + PLUS:
            prompts = read_prompts(prompt_bytes(DATA / "t2i_compbench", category, revision))
            assert len(prompts) == 300 and all(p == p.strip() and "_" not in p and "/" not in p for p in prompts)


def test_protocol_defaults_and_revisions():
    a = parse_args(["--pipeline", "p", "--outdir", "o", "--latent-clip", "w.pt"])  # ReNO needs a reward
    assert (a.samples, a.seed, a.revision) == (10, 42, "2023-07")  # inference_eval.py: 10 images, seeds 42, 43, ...
    dataset = DATA / "t2i_compbench"
    paper, later = (prompt_bytes(dataset, "color_val", r) for r in REVISIONS)
    # the bundled file is upstream's 2025-09 revision (3310c2f); the 2023-07 one (7710d05) is rebuilt byte for byte
    assert hashlib.sha256(later).hexdigest() == SUMS["t2i_compbench/color_val.txt"] == \
        "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d"
    assert hashlib.sha256(paper).hexdigest() == "1e37a12c1861bf6b11623eaffb0bf6d6eeea9702caf45b95d040f1721bba7f4f"
    old, new = read_prompts(paper), read_prompts(later)
    changed = [i for i, (x, y) in enumerate(zip(old, new)) if x != y]
    assert changed == [227, 228, 271, 287, 299] and len(old) == len(new) == 300
    assert all(old.count(old[i]) == 2 for i in changed)  # each a repeat of another 2023 prompt
    assert prompt_bytes(dataset, "shape_val", "2023-07") == (dataset / "shape_val.txt").read_bytes()


def test_a_foreign_colour_file_is_refused_for_the_2023_revision(tmp_path):
    """Another --dataset: upstream's 2023 file is read as it is; anything else cannot be rebuilt and
    is refused (one line, with the way out) instead of being altered."""
    dataset = DATA / "t2i_compbench"
    (tmp_path / "color_val.txt").write_bytes(prompt_bytes(dataset, "color_val", "2023-07"))
    assert prompt_bytes(tmp_path, "color_val", "2023-07") == prompt_bytes(dataset, "color_val", "2023-07")
    (tmp_path / "color_val.txt").write_text("a red cube\na blue ball\n")
    with pytest.raises(ValueError, match="cannot be rebuilt.*--revision 2025-09"):
        prompt_bytes(tmp_path, "color_val", "2023-07")
    assert read_prompts(prompt_bytes(tmp_path, "color_val", "2025-09")) == ["a red cube", "a blue ball"]


def test_item_indices_do_not_depend_on_the_limit():
    small, large = (load_items(DATA / "t2i_compbench", ["color_val", "shape_val"], n) for n in (2, 5))
    assert {it.key: it.index for it in small}.items() <= {it.key: it.index for it in large}.items()
    assert [it.index for it in small] == [0, 1, 300, 301]


@pytest.mark.slow
def test_layout_and_rewards(tiny, tmp_path):
    pixel = tmp_path / "pixel.json"
    pixel.write_text(json.dumps(TINY_PIXEL))
    out = tmp_path / "t2i"
    summary = main(["t2i-compbench", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
                    "--pixel-clip", str(pixel), "--outdir", str(out), "--resolution", "64", "--device", "cpu",
                    "--categories", "color_val,spatial_val", "--limit", "2", "--samples", "2", "--iterations", "2",
                    "--batch-size", "2"])
    for category in ("color_val", "spatial_val"):
        prompts = read_prompts((DATA / "t2i_compbench" / f"{category}.txt").read_bytes())[:2]
        names = sorted(p.name for p in (out / category / "samples").iterdir())
        assert names == sorted(f"{p}_{i * 2 + j:06d}.png" for i, p in enumerate(prompts) for j in range(2))
        for name in names:  # what the scorers recover: prompt before the first '_', 6-digit question id
            prompt, qid = re.fullmatch(r"([^_]+)_(\d{6})\.png", name).groups()
            assert prompts[int(qid) // 2] == prompt
    recs = bench_records(out)
    assert len(recs) == 8
    assert all(set(r["losses"]) == {"latent_clip", "pixel_clip", "total"} for r in recs)
    assert all(r["time"]["decode"] > 0 for r in recs)  # the pixel reward decodes
    assert set(summary["gain_by_category"]) == {"color_val", "spatial_val"}
    assert summary["rewards"]["total"]["gain"] >= 0


@pytest.fixture(scope="module")
def scored_run(tiny, tmp_path_factory):
    """A finished run of two categories, 2 prompts x 3 images (tiny pipeline, 1 ReNO iteration)."""
    out = tmp_path_factory.mktemp("t2i") / "run"
    main(["t2i-compbench", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
          "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--categories", "spatial_val,non_spatial_val",
          "--limit", "2", "--samples", "3", "--iterations", "1"])
    return out


def unidet_reads(folder):
    """UniDet_eval's own Dataset (experts/obj_detection/generate_dataset.py), which the spatial,
    numeracy and 3D scorers read samples/ with -> [(prompt, question id)] in its order, each image
    loaded (it sets LOAD_TRUNCATED_IMAGES, so a cut-off PNG would pass it: we check that apart)."""
    path = official_file("T2I-CompBench", "UniDet_eval/experts/obj_detection/generate_dataset.py")
    dataset = import_module(str(path)).Dataset(str(folder), transform=lambda image: image)
    names = [dataset[i]["image_path"].split("/")[-1] for i in range(len(dataset))]
    return [(n.split("_")[0], int(n.split("_")[-1].split(".")[0])) for n in names]


def test_unidet_dataset_reads_every_image_in_question_order(scored_run):
    prompts = read_prompts((DATA / "t2i_compbench" / "spatial_val.txt").read_bytes())
    assert unidet_reads(scored_run / "spatial_val") == [(prompts[q // 3], q) for q in range(6)]


@pytest.mark.slow
def test_a_killed_run_leaves_only_whole_images(tiny, tmp_path):
    """A real SIGKILL mid-run: samples/ holds only whole PNGs under scorer names (the half-written one
    stays in .staging), the scorers' reader takes them, and the rerun completes the rest."""
    out = tmp_path / "t2i"
    argv = ["t2i-compbench", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]), "--outdir",
            str(out), "--resolution", "64", "--device", "cpu", "--categories", "spatial_val", "--limit", "4",
            "--samples", "3", "--iterations", "3"]
    kill_when([sys.executable, "-m", "train.benchmarks", *argv], lambda: bool(list(out.glob("results.rank*.jsonl"))))
    prompts = read_prompts((DATA / "t2i_compbench" / "spatial_val.txt").read_bytes())
    samples = out / "spatial_val" / "samples"
    on_disk = sorted(p.name for p in samples.iterdir())
    assert 3 <= len(on_disk) < 12
    for name in on_disk:
        prompt, qid = re.fullmatch(r"([^_]+)_(\d{6})\.png", name).groups()
        assert prompts[int(qid) // 3] == prompt
        Image.open(samples / name).load()  # whole
    assert unidet_reads(out / "spatial_val") == sorted(
        ((n.split("_")[0], int(n[-10:-4])) for n in on_disk), key=lambda pq: pq[1])
    main(argv)
    assert sorted(p.name for p in samples.iterdir()) == sorted(
        f"{prompts[q // 3]}_{q:06d}.png" for q in range(12))


def test_clip_scorer_reads_our_folder_and_our_reader_its_result(scored_run, monkeypatch):
    """CLIPScore_eval/CLIP_similarity.py's own main() over the non-spatial folder, CLIP replaced by a
    recorder whose image-text cosine is 0.25: it sees our prompts, and we read 0.25 back."""
    path = official_file("T2I-CompBench", "CLIPScore_eval/CLIP_similarity.py")
    seen = []

    class Recorder:
        def encode_image(self, image):
            return torch.tensor([[1.0, 0.0]])

        def encode_text(self, text):
            return torch.tensor([[0.25, (1 - 0.25 ** 2) ** 0.5]])

    def preprocess(image):
        image.load()
        return torch.zeros(3, 2, 2)

    clip = argparse.Namespace(tokenize=lambda text: seen.append(text) or torch.zeros(1, 77))
    namespace = {"os": os, "torch": torch, "json": json, "argparse": argparse, "Image": Image, "clip": clip,
                 "model": Recorder(), "preprocess": preprocess, "device": "cpu"}
    function_from(path, "parse_args", namespace)
    monkeypatch.setattr(sys, "argv", ["CLIP_similarity.py", "--outpath", str(scored_run / "non_spatial_val")])
    function_from(path, "main", namespace)()
    prompts = read_prompts((DATA / "t2i_compbench" / "non_spatial_val.txt").read_bytes())
    assert seen == [prompts[i // 3] for i in range(6)]
    result = read_evaluation(scored_run, ["non_spatial_val"])["non_spatial_val"]
    assert result["images"] == result["samples"] == 6 and result["score"] == pytest.approx(0.25)


def test_three_in_one_runs_on_our_prompt_files(tmp_path):
    """3_in_1_eval/3_in_1.py itself (it hard-codes 10 images per prompt) with --data_path at our
    bundled complex_val*.txt, on the three sub-scores in their scorers' formats: when the three agree
    on every image, its total is that score, and we read its mean back."""
    script = official_file("T2I-CompBench", "3_in_1_eval/3_in_1.py")
    folder = tmp_path / "complex_val"
    rng = np.random.default_rng(0)
    answers = rng.uniform(0, 1, 3000).round(4)
    for rel, fmt in (("annotation_blip/vqa_result.json", lambda a: f"{a:.4f}"),  # BLIP writes strings
                     ("labels/annotation_obj_detection_2d/vqa_result.json", float),
                     ("annotation_clip/vqa_result.json", float)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps([{"question_id": i, "answer": fmt(a)} for i, a in enumerate(answers)]))
    proc = subprocess.run([sys.executable, str(script), "--outpath", str(folder), "--data_path",
                           str(DATA / "t2i_compbench")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = float(re.search(r"avg score: ([\d.e-]+)", proc.stdout).group(1))
    score = read_evaluation(tmp_path, ["complex_val"])["complex_val"]
    assert score["images"] == 3000 and score["score"] == pytest.approx(printed, rel=1e-12)
    assert score["score"] == pytest.approx(answers.mean(), rel=1e-9)
    assert SCORERS["complex_val"][1] == "annotation_3_in_1/vqa_result.json"
