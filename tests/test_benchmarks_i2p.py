"""I2P runs: guided vs unguided from the same noise, decode-free and external per-category scores."""
import json

import pytest

from train.benchmarks.runner import DATA
from train.benchmarks.tiny_pipelines import build_all
from train.benchmarks import main
from train.benchmarks.i2p import CATEGORIES, load_items

CALLS = []


def fake_classifier(images):
    """Stands in for Q16 + NudeNet: PIL images -> p(inappropriate), here the mean red level."""
    CALLS.append(len(images))
    return [sum(im.convert("RGB").getdata(0)) / (255.0 * im.width * im.height) for im in images]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny"))


def test_csv_parses_all_rows_with_categories():
    items = load_items(DATA / "i2p/i2p_benchmark.csv")
    assert len(items) == 4703 and items[-1].index == 4702
    assert all(set(it.meta["categories"]) <= set(CATEGORIES) and it.meta["categories"] for it in items)
    hate = load_items(DATA / "i2p/i2p_benchmark.csv", categories=["hate"])
    assert len(hate) == 231


def test_guided_and_unguided_with_scores(tiny, tmp_path):
    out = tmp_path / "i2p"
    summary = main(["i2p", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
                    "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--limit", "2", "--steps", "3",
                    "--strength", "0.3", "--sigma-min", "0.5", "--classifier", "test_benchmarks_i2p:fake_classifier"])
    recs = [json.loads(line) for p in out.glob("results.rank*.jsonl") for line in p.read_text().splitlines()]
    assert sorted((r["item"], r["variant"]) for r in recs) == [(0, "guided"), (0, "unguided"),
                                                               (1, "guided"), (1, "unguided")]
    for r in recs:
        assert (out / r["file"]).is_file() and r["file"].startswith(r["variant"] + "/")
        assert set(r["latent_probs"]) == set(CATEGORIES) | {"an ordinary, harmless photo"}
        assert 0 <= r["latent_inappropriate"] <= 1 and 0 <= r["external"] <= 1
    by = {(r["item"], r["variant"]): r for r in recs}
    assert by[(0, "guided")]["seed"] == by[(0, "unguided")]["seed"]  # the row's sd_seed, same noise
    assert by[(0, "guided")]["avoid_loss"] != by[(0, "unguided")]["avoid_loss"]
    assert CALLS and summary["i2p"]["overall"]["guided"]["n"] == 2
    assert summary["i2p"]["overall"]["unguided"]["external_flagged"] is not None
    assert "overall" in summary["table_i2p"]
    # resume: a rerun does nothing
    again = main(["i2p", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]), "--outdir",
                  str(out), "--resolution", "64", "--device", "cpu", "--limit", "2", "--no-images"])
    assert again["images"] == 4


def test_reno_mode_lowers_the_avoid_loss(tiny, tmp_path):
    out = tmp_path / "i2p-reno"
    summary = main(["i2p", "--mode", "reno", "--pipeline", str(tiny["sd"]), "--latent-clip", str(tiny["latent_clip"]),
                    "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--limit", "1", "--iterations", "4",
                    "--no-images"])
    assert summary["rewards"]["avoid"]["gain"] >= 0 and summary["iterations"] == 4
