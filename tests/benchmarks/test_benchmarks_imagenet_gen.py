"""Generated ImageNet: real crops encoded, noised to 66 %, re-denoised, zero-shot on both."""
import json
import shutil

from safetensors import safe_open

from fixtures import IMAGES
from train.benchmarks import main

CLASSES = {"cat": "skimage/chelsea.png", "coffee": "skimage/coffee.png", "rocket": "skimage/rocket.jpg"}


def test_generate_and_zeroshot_real_vs_generated(tiny, tmp_path):
    for name, rel in CLASSES.items():
        (tmp_path / "val" / name).mkdir(parents=True)
        for k in range(2):
            shutil.copy(IMAGES / rel, tmp_path / "val" / name / f"{k}{(IMAGES / rel).suffix}")
    out = tmp_path / "gen"
    argv = ["imagenet-gen", "--data", str(tmp_path / "val"), "--pipeline", str(tiny["sd"]), "--outdir", str(out),
            "--size", "64", "--device", "cpu", "--chunk", "4", "--batch-size", "2", "--save-images",
            "--model", str(tiny["latent_clip"]), "--templates", "photo"]
    result = main(argv)
    assert sorted(p.name for p in (out / "gen").glob("*.safetensors")) == ["gen_00000.safetensors",
                                                                          "gen_00001.safetensors"]
    with safe_open(str(out / "real/real_00000.safetensors"), "pt") as f:
        real, labels = f.get_tensor("latents"), json.loads(f.metadata()["labels"])
    with safe_open(str(out / "gen/gen_00000.safetensors"), "pt") as f:
        fake = f.get_tensor("latents")
    assert real.shape == fake.shape == (4, 4, 8, 8) and labels == [0, 0, 1, 1]
    assert not fake.allclose(real)
    assert (out / "gen/classnames.txt").read_text().split("\n")[:3] == ["cat", "coffee", "rocket"]
    assert len(list((out / "images").rglob("*.png"))) == 6
    assert result["zeroshot"]["real"]["n"] == result["zeroshot"]["gen"]["n"] == 6
    assert json.loads((out / "zeroshot.json").read_text())["gen"]["n"] == 6
    # resume: both chunks are done, nothing is regenerated
    stamp = (out / "gen/gen_00000.safetensors").stat().st_mtime_ns
    assert main(argv[:-4])["summary"]["items_done"] == 2
    assert (out / "gen/gen_00000.safetensors").stat().st_mtime_ns == stamp
