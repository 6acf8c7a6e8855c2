"""train encode: real images -> raw VAE latents with a tiny random AutoencoderKL from disk."""
import json
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import save_file

from fixtures import IMAGE_FILES, IMAGES, N_IMAGES, REPO, child_env
from train.data import ImageTransform, SIZES_FILE, expand_shards, open_shard
from train.encode import main as encode
from train.models import load_vae
from synthetic import write_image_shards


def test_encode_webdataset_shards_skips_corrupt_images_and_resumes(vae_dir, tmp_path):
    write_image_shards(IMAGES, tmp_path / "images", n_shards=2, corrupt=1)
    argv = ["--input", str(tmp_path / "images"), "--vae", str(vae_dir), "--out", str(tmp_path / "lat"),
            "--size", "64", "--batch-size", "4", "--device", "cpu"]
    stats = encode(argv)
    assert stats == {"written": 2, "skipped": 0, "samples": N_IMAGES, "corrupt": 1, "corrupt_shards": 0,
                     "bad_captions": 0, "missing_captions": 0}
    shards = expand_shards(tmp_path / "lat")
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    assert sum(json.loads((tmp_path / "lat" / SIZES_FILE).read_text()).values()) == N_IMAGES
    sample = open_shard(shards[0])[0]
    assert sample.latent.shape == (4, 8, 8) and sample.caption.startswith("a photo of a ")
    # the stored latent is the raw posterior mean of the resized, centre-cropped, [-1, 1] image
    src = next(p for p in IMAGES.rglob("*") if p.stem == sample.caption.removeprefix("a photo of a ").replace(" ", "_"))
    x = ImageTransform(64)(Image.open(src).convert("RGB"))
    assert x.min() >= -1 and x.max() <= 1 and x.shape == (3, 64, 64)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    with torch.no_grad():
        expected = vae.encode(x[None]).latent_dist.mean[0]
    torch.testing.assert_close(sample.latent, expected.half().float())
    meta = json.loads((tmp_path / "lat/encode.json").read_text())
    assert meta["posterior"] == "mean" and meta["latent_channels"] == 4
    assert encode(argv)["skipped"] == 2  # finished shards are not redone


def test_encode_a_captioned_folder_to_safetensors_shards(vae_dir, tmp_path):
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"file": p.relative_to(IMAGES).as_posix(), "caption": f"caption {i}"}) + "\n"
                                for i, p in enumerate(IMAGE_FILES[:6])))
    stats = encode(["--input", str(IMAGES), "--captions", str(captions), "--vae", str(vae_dir), "--out",
                    str(tmp_path / "lat"), "--size", "32", "--format", "safetensors", "--shard-size", "4",
                    "--sample", "--device", "cpu"])
    assert stats["samples"] == 6 and stats["written"] == 2
    shard = open_shard(tmp_path / "lat/000000.safetensors")
    assert len(shard) == 4 and shard[0].latent.shape == (4, 4, 4)
    assert [shard[i].caption for i in range(4)] == [f"caption {i}" for i in range(4)]


def test_a_single_file_vae_loads_offline_with_a_local_config(vae_dir, tmp_path):
    reference = AutoencoderKL.from_pretrained(vae_dir)
    save_file(reference.state_dict(), str(tmp_path / "vae.safetensors"))
    vae = load_vae(tmp_path / "vae.safetensors", config=vae_dir)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, reference.encode(x).latent_dist.mean)
    with pytest.raises(FileNotFoundError, match="hub ids are not fetched"):
        load_vae("madebyollin/sdxl-vae-fp16-fix")


@pytest.mark.slow
def test_encode_under_torchrun_splits_shards_by_rank(vae_dir, tmp_path):
    write_image_shards(IMAGES, tmp_path / "images", n_shards=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
           "encode", "--input", str(tmp_path / "images"), "--vae", str(vae_dir), "--out", str(tmp_path / "lat"),
           "--size", "32", "--device", "cpu", "--format", "safetensors"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'encode rank 0: {"written": 2' in proc.stdout and 'encode rank 1: {"written": 1' in proc.stdout
    sizes = json.loads((tmp_path / "lat" / SIZES_FILE).read_text())
    assert sorted(sizes) == ["00000.safetensors", "00001.safetensors", "00002.safetensors"]
    assert sum(sizes.values()) == N_IMAGES


def test_an_empty_folder_is_an_error_not_zero_samples(vae_dir, tmp_path):
    """Nothing to encode exits non-zero with one line (it used to exit 0 saying "samples: 0")."""
    (tmp_path / "empty").mkdir()
    argv = ["encode", "--input", str(tmp_path / "empty"), "--vae", str(vae_dir), "--out", str(tmp_path / "lat")]
    proc = subprocess.run([sys.executable, "-m", "train", *argv], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {tmp_path / 'empty'}: no images with captions and no .tar shards found, "
                                   f"so nothing to encode (expected an image folder with captions, or img2dataset "
                                   f"tars)")
