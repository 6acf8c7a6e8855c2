"""T2I-CompBench runs: the flat <prompt>_<NNNNNN>.png naming per category, pixel + latent rewards."""
import json
import re

import pytest

from train.benchmarks.runner import DATA
from train.benchmarks.tiny_pipelines import build_all
from train.benchmarks import main
from train.benchmarks.t2i_compbench import CATEGORIES, PLUS, read_prompts

TINY_PIXEL = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
              "text_cfg": {"width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny"))


def test_every_split_parses_and_suits_the_file_name_layout():
    for category in CATEGORIES + PLUS:
        prompts = read_prompts(DATA / "t2i_compbench" / f"{category}.txt")
        assert len(prompts) == 300 and all(p == p.strip() and "_" not in p and "/" not in p for p in prompts)


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
        prompts = read_prompts(DATA / "t2i_compbench" / f"{category}.txt")[:2]
        names = sorted(p.name for p in (out / category / "samples").iterdir())
        assert names == sorted(f"{p}_{i * 2 + j:06d}.png" for i, p in enumerate(prompts) for j in range(2))
        for name in names:  # what the scorers recover: prompt before the first '_', 6-digit question id
            prompt, qid = re.fullmatch(r"([^_]+)_(\d{6})\.png", name).groups()
            assert prompts[int(qid) // 2] == prompt
    recs = [json.loads(line) for p in out.glob("results.rank*.jsonl") for line in p.read_text().splitlines()]
    assert len(recs) == 8
    assert all(set(r["losses"]) == {"latent_clip", "pixel_clip", "total"} for r in recs)
    assert all(r["time"]["decode"] > 0 for r in recs)  # the pixel reward decodes
    assert set(summary["gain_by_category"]) == {"color_val", "spatial_val"}
    assert summary["rewards"]["total"]["gain"] >= 0
