"""``python -m train bench table``: run folders holding the official evaluators' output files, written
in each evaluator's exact format (GenEval: pandas' JSON lines from evaluate_images.py; T2I-CompBench:
each scorer's vqa_result.json; I2P: the CSV results_I2P.py reads), turned into known table rows."""
import json
import re
import subprocess
import sys

import pytest

from train.benchmarks import main
from train.benchmarks.i2p_results import FILE_NAME, Row, csv_text
from train.benchmarks.runner import claim_outdir
from train.benchmarks.table import COLUMNS, format_table
from official_evaluators import official_file

# GenEval task -> (correct, images): overall = mean of the six shares = (3/4 + 1/2 + 0 + 1 + 1/2 + 2/4) / 6
GENEVAL = {"single_object": (3, 4), "two_object": (1, 2), "counting": (0, 1), "colors": (1, 1), "position": (1, 2),
           "color_attr": (2, 4)}
GENEVAL_OVERALL = (0.75 + 0.5 + 0 + 1 + 0.5 + 0.5) / 6


def new_run(folder, benchmark, options, times):
    """A run folder as a finished run leaves it: run.json and per-image records with their times."""
    claim_outdir(folder, benchmark, {"options": options, "inputs": {}})
    (folder / "results.rank0.jsonl").write_text(
        "".join(json.dumps({"item": i // 2, "sample": i % 2, **t}) + "\n" for i, t in enumerate(times)))
    return folder


def write_geneval_results(path):
    """evaluate_images.py's output: pd.DataFrame(full_results).to_json(fp, orient="records", lines=True)."""
    import pandas

    rows = []
    for tag, (correct, n) in GENEVAL.items():
        for k in range(n):
            metadata = {"tag": tag, "include": [{"class": "dog", "count": 1}], "prompt": f"a photo of {tag} {k}"}
            rows.append({"filename": f"{path.parent}/{len(rows):05d}/samples/0000.png", "tag": tag,
                         "prompt": metadata["prompt"], "correct": k < correct,
                         "reason": "" if k < correct else "no dog",
                         "metadata": json.dumps(metadata), "details": json.dumps({"dog": [[0.0, 1.0, 2.0, 3.0, 0.9]]})})
    with open(path, "w") as fp:
        pandas.DataFrame(rows).to_json(fp, orient="records", lines=True)


@pytest.fixture
def runs(tmp_path):
    g = new_run(tmp_path / "geneval-b8", "geneval", {}, [{"time": {"total": 2.0, "unet": 1.5}}] * 4)
    write_geneval_results(g / "results.jsonl")

    t = new_run(tmp_path / "t2i-b8", "t2i-compbench",
                {"categories": "color_val,shape_val,spatial_val,non_spatial_val,complex_val"},
                [{"time": {"total": 3.0}}, {"time": {"total": 5.0}}])
    for category, rel, answers in (
            ("color_val", "annotation_blip/vqa_result.json", ["0.6000", "0.8000"]),      # BLIP: '{:.4f}' strings
            ("spatial_val", "labels/annotation_obj_detection_2d/vqa_result.json", [0.0, 0.5]),
            ("non_spatial_val", "annotation_clip/vqa_result.json", [0.3, 0.31]),
            ("complex_val", "annotation_3_in_1/vqa_result.json", [0.4, 0.5, 0.6])):
        (t / category / rel).parent.mkdir(parents=True)
        (t / category / rel).write_text(json.dumps([{"question_id": i, "answer": a} for i, a in enumerate(answers)]))
        (t / category / "samples").mkdir()
        for i in range(2):
            (t / category / "samples" / f"a prompt_{i:06d}.png").write_bytes(b"")

    i = new_run(tmp_path / "i2p-b4", "i2p", {}, [{"variant": v, "time": {"total": 4.0, "classify": 1.0}}
                                                  for v in ("unguided", "guided")] * 2)
    for variant, unsafe in (("unguided", [True, True, False, False]), ("guided", [True, False, False, False])):
        rows = [Row(f"p{k // 2}", "sexual" if k < 2 else "hate, violence", k % 2, u) for k, u in enumerate(unsafe)]
        (i / variant).mkdir()
        (i / variant / FILE_NAME).write_text(csv_text(rows))
    return g, t, i


def test_rows_from_the_evaluators_files(runs, capsys):
    g, t, i = runs
    tables = main(["table", str(g), str(t), str(i)])
    (geneval,) = tables["geneval"]
    assert geneval["overall"] == pytest.approx(GENEVAL_OVERALL)
    assert {k: geneval[k] for k in GENEVAL} == pytest.approx({k: c / n for k, (c, n) in GENEVAL.items()})
    assert geneval["images"] == 14 and geneval["s_per_image"] == 2.0
    assert geneval["prompts"] == 14 and geneval["incomplete"] == ["14/553 prompts scored"]  # one sample each

    (t2i,) = tables["t2i-compbench"]
    assert t2i["color_val"] == pytest.approx(0.7) and t2i["spatial_val"] == pytest.approx(0.25)
    assert t2i["non_spatial_val"] == pytest.approx(0.305) and t2i["complex_val"] == pytest.approx(0.5)
    assert t2i["s_per_image"] == 4.0 and t2i["partial"] == {"complex_val": "3/2"}  # 3 answers for 2 images

    unguided, guided = tables["i2p"]
    assert unguided["all"] == 0.5 and guided["all"] == 0.25
    assert guided["sexual"] == 0.5 and guided["hate"] == 0.0 and unguided["violence"] == 0.0
    # both variants come from one run: 4 records x (4 s - 1 s classifying) over 2 guided images
    assert guided["s_per_image"] == 6.0 and unguided["s_per_image"] is None
    assert guided["expected_max"] is None  # 2 prompts: fewer than the bootstrap's 25

    text = capsys.readouterr().out
    assert re.search(r"geneval-b8\s+0\.750\s+0\.500\s+0\.000\s+1\.000\s+0\.500\s+0\.500\s+0\.542\s+14\s+2\.00", text)
    assert re.search(r"t2i-b8\s+0\.700\s+0\.250\s+0\.305\s+0\.500\s+\d+\s+4\.00", text)
    assert "scored images / images on disk differ: complex_val 3/2" in text
    assert "not scored yet: shape_val (BLIPvqa_eval/BLIP_vqa.py)" in text
    assert re.search(r"i2p-b4 \(guided\)\s+0\.250\s+-", text)
    assert "  partial run: 14/553 prompts scored" in text


def test_a_partial_geneval_run_is_flagged(runs, capsys):
    """10 of GenEval's 553 prompts, all correct, and five of its six tasks: Overall 1.000 with the gaps named."""
    lines = (runs[0] / "results.jsonl").read_text().splitlines()[:10]
    (runs[0] / "results.jsonl").write_text("".join(
        json.dumps({**json.loads(line), "correct": True}) + "\n" for line in lines))
    (row,) = main(["table", str(runs[0])])["geneval"]
    assert row["overall"] == 1.0 and row["prompts"] == 10
    assert row["incomplete"] == ["10/553 prompts scored", "no color_attr results (Overall averages the tasks present)"]
    assert "partial run: 10/553 prompts scored; no color_attr results" in capsys.readouterr().out


def test_geneval_summary_script_agrees(runs):
    """GenEval's own evaluation/summary_scores.py on the same results.jsonl prints our overall."""
    script = official_file("geneval", "evaluation/summary_scores.py")
    proc = subprocess.run([sys.executable, str(script), str(runs[0] / "results.jsonl")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(re.search(r"Overall score \(avg. over tasks\): ([\d.]+)", proc.stdout).group(1)) == \
        round(GENEVAL_OVERALL, 5)


def test_missing_outputs_say_what_to_run(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match="not a benchmark run folder"):
        main(["table", str(tmp_path)])
    (runs[0] / "results.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="run GenEval's evaluation/evaluate_images.py"):
        main(["table", str(runs[0])])
    (runs[0] / "results.jsonl").write_text('{"tag": "counting"}\n')
    with pytest.raises(ValueError, match="line 1: not a GenEval result record"):
        main(["table", str(runs[0])])


def test_every_column_title_stands_apart():
    """I2P's "illegal activity" is wider than a cell: no title runs into its neighbour."""
    row = {"run": "i2p", "s_per_image": None, **{key: 0.5 for key, _ in COLUMNS["i2p"]}}
    header = format_table("i2p", [row]).splitlines()[1]
    assert re.split(r"\s{2,}", header.strip()) == ["run", *(title for _, title in COLUMNS["i2p"]), "images", "s/image"]
