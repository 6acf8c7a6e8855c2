"""I2P runs: guided vs unguided from the same noise, decode-free scores, and the official result file
(the CSV ml-research/i2p's results_I2P.py reads) with its metrics, checked against that script."""
import io
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from train.benchmarks.runner import DATA
from train.benchmarks import main
from train.benchmarks.i2p import CATEGORIES, load_items, parse_args
from train.benchmarks.i2p_results import FILE_NAME, Row, csv_text, expected_max, metrics, read_csv
from fixtures import bench_records
from official_evaluators import official_file

CALLS = []


def fake_classifier(images):
    """Stands in for a user's classifier: PIL images -> p(inappropriate), here the mean red level."""
    CALLS.append(len(images))
    return [sum(im.convert("RGB").get_flattened_data(0)) / (255.0 * im.width * im.height) for im in images]


def synthetic_rows(seed=0):
    """Every I2P prompt x 10 images with random verdicts (p(unsafe) differs per category)."""
    rng = random.Random(seed)
    rows = []
    for it in load_items(DATA / "i2p/i2p_benchmark.csv"):
        p = 0.1 + 0.1 * CATEGORIES.index(it.meta["categories"][0])
        rows += [Row(it.prompt, it.meta["categories_text"], j, rng.random() < p) for j in range(10)]
    return rows


def test_csv_parses_all_rows_with_categories():
    items = load_items(DATA / "i2p/i2p_benchmark.csv")
    assert len(items) == 4703 and items[-1].index == 4702
    assert all(set(it.meta["categories"]) <= set(CATEGORIES) and it.meta["categories"] for it in items)
    hate = load_items(DATA / "i2p/i2p_benchmark.csv", categories=["hate"])
    assert len(hate) == 231


def test_protocol_defaults():
    a = parse_args(["--pipeline", "p", "--outdir", "o", "--latent-clip", "w"])
    assert (a.samples, a.mode, a.iterations, a.csv_seeds) == (10, "reno", 50, True)  # I2P's 10 per prompt, ReNO's 50
    assert a.strength == 0.05  # the ComfyUI guider's default (guidance mode)
    with pytest.raises(SystemExit):  # the official verdict needs both classifiers
        parse_args(["--pipeline", "p", "--outdir", "o", "--latent-clip", "w", "--q16", "clip/"])


def test_result_file_is_what_pandas_writes_and_reads_back():
    import pandas

    rows = [Row('a "quoted", comma\nnewline', "hate, harassment", 0, True), Row("plain ", "sexual", 1, False)]
    text = csv_text(rows)
    frame = pandas.DataFrame([[r.prompt, r.categories, r.idx_generation, r.unsafe] for r in rows],
                             columns=["prompt", "categories", "idx_generation", "unsafe"])
    assert text == frame.to_csv()  # eval_I2P.py's df.to_csv(save_path), byte for byte
    assert pandas.read_csv(io.StringIO(text))["unsafe"].tolist() == [True, False]


def test_metrics_known_answer():
    # 30 prompts x 2 images, prompt i with i % 3 unsafe images: per-prompt shares 0, 0.5, 1 repeating
    rows = [Row(f"p{i:02d}", "hate" if i < 15 else "sexual, hate", j, j < i % 3) for i in range(30) for j in range(2)]
    m = metrics(rows, seed=0)
    assert set(m) == {"hate", "sexual", "all"}
    assert m["all"]["images"] == 60 and m["all"]["prompts"] == 30
    assert m["all"]["inappropriate"] == sum(i % 3 for i in range(30)) / 60
    assert m["sexual"]["images"] == 30 and m["sexual"]["expected_max"] is None  # 15 prompts < 25
    # with 10 of 30 prompts fully unsafe, 25 distinct prompts always include one: the max is always 1
    assert m["all"]["expected_max"] == 1.0 and m["all"]["expected_max_std"] == 0.0


def test_guided_and_unguided_with_scores(tiny, tmp_path):
    out = tmp_path / "i2p"
    argv = ["i2p", "--mode", "guidance", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
            "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--limit", "2", "--samples", "2",
            "--steps", "3", "--strength", "0.3", "--sigma-min", "0.5",
            "--classifier", "test_benchmarks_i2p:fake_classifier"]
    summary = main(argv)
    recs = bench_records(out)
    assert sorted((r["item"], r["sample"], r["variant"]) for r in recs) == [
        (i, j, v) for i in range(2) for j in range(2) for v in ("guided", "unguided")]
    for r in recs:
        assert (out / r["file"]).is_file() and r["file"].startswith(r["variant"] + "/")
        assert set(r["latent_probs"]) == set(CATEGORIES) | {"an ordinary, harmless photo"}
        assert 0 <= r["latent_inappropriate"] <= 1 and 0 <= r["external"] <= 1
        assert r["unsafe"] == (r["external"] > 0.5)
    by = {(r["item"], r["sample"], r["variant"]): r for r in recs}
    assert by[(0, 0, "guided")]["seed"] == by[(0, 0, "unguided")]["seed"]  # the row's sd_seed, same noise
    assert by[(0, 1, "guided")]["seed"] == by[(0, 0, "guided")]["seed"] + 1
    assert by[(0, 0, "guided")]["avoid_loss"] != by[(0, 0, "unguided")]["avoid_loss"]
    assert CALLS
    # the official result file per variant: prompt order, images 0..n-1, the records' verdicts
    items = load_items(DATA / "i2p/i2p_benchmark.csv", limit=2)
    for variant in ("unguided", "guided"):
        rows = read_csv(out / variant / FILE_NAME)
        assert rows == [Row(it.prompt, it.meta["categories_text"], j, by[(it.index, j, variant)]["unsafe"])
                        for it in items for j in range(2)]
        assert summary["i2p"][variant]["official"] == metrics(rows)
    assert "all" in summary["table_i2p"]
    assert main(argv)["images"] == 8  # resume: a rerun does nothing


def test_reno_mode_lowers_the_avoid_loss(tiny, tmp_path):
    out = tmp_path / "i2p-reno"
    summary = main(["i2p", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
                    "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--limit", "1", "--samples", "1",
                    "--iterations", "4", "--no-images"])
    assert summary["rewards"]["avoid"]["gain"] >= 0 and summary["iterations"] == 4
    assert not (out / "guided" / FILE_NAME).exists()  # no classifier: no verdicts, no result file


@pytest.mark.slow
def test_official_results_script_reads_our_file(tmp_path):
    """ml-research/i2p's results_I2P.py, run on our file for the whole benchmark (it asserts 47,030
    rows), prints our inappropriate probabilities; its bootstrap, seeded, equals ours exactly."""
    import pandas

    script = official_file("i2p", "results_I2P.py")
    rows = synthetic_rows()
    folder = tmp_path / "guided"
    folder.mkdir()
    (folder / FILE_NAME).write_text(csv_text(rows))
    proc = subprocess.run([sys.executable, str(script), "--csv", str(folder)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    printed = {m[0]: (float(m[1]), float(m[2]), float(m[3])) for m in re.findall(
        r"categories: (.+)\nUnsafe Prop: ([\d.]+)%\nMax exp. unsafe:\n->    Mean: ([\d.]+)% ± ([\d.]+)%", text)}
    ours = metrics(read_csv(folder / FILE_NAME))
    assert set(printed) == set(ours) == set(CATEGORIES) | {"all"}
    for cat, (prop, mean, std) in printed.items():
        assert round(100 * ours[cat]["inappropriate"], 4) == prop
        # two independent bootstraps of 10,000 maxima: their means differ by < 5 standard errors of a difference
        assert abs(100 * ours[cat]["expected_max"] - mean) < 5 * 2 ** 0.5 * std / 100 + 1e-3
    # the same draws: seed numpy's global generator (which pandas' sample uses) and ours alike
    namespace = {"__name__": "results_I2P"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    frame = pandas.read_csv(folder / FILE_NAME)
    for cat in ("hate", "sexual"):
        np.random.seed(7)
        mean, std = namespace["bootstrap_exptected"](frame[frame["categories"].str.contains(cat)].copy())
        em = expected_max([r for r in rows if cat in r.categories], seed=7)
        assert (100 * em[0], 100 * em[1]) == pytest.approx((mean, std), rel=1e-12)
