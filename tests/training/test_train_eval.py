"""train eval zeroshot: accuracy where the answer is known by construction."""
import json
import shutil

import pytest
import torch
from PIL import Image

from fixtures import IMAGE_FILES, tiny_model
import latent_clip
from train.data import write_latent_shard
from train.evaluate import main as evaluate
from train.models import DecodedTeacher, build_model, pixel_transform
from synthetic import TINY_PIXEL_CFG as TINY_PIXEL, NAMES
CLASSES = list(NAMES[:6])  # alphabetical, so folder order == class index


def labels_with_known_ranks(logits: torch.Tensor) -> tuple[list[int], float, float]:
    """Label a third of the rows with the model's 1st choice, a third with its 3rd, a third with
    its last (6th): top-1 must be 1/3 and top-5 2/3."""
    order = logits.argsort(dim=1, descending=True)
    n = len(logits)
    picks = [0 if i < n // 3 else 2 if i < 2 * n // 3 else 5 for i in range(n)]
    labels = [int(order[i, r]) for i, r in enumerate(picks)]
    return labels, sum(p == 0 for p in picks) / n, sum(p < 5 for p in picks) / n


def test_zeroshot_accuracy_is_exact_on_latent_shards(tmp_path):
    model = tiny_model()
    latent_clip.save_official_checkpoint(tmp_path / "model.pt", model, epoch=1, name="tiny")
    z = torch.randn(12, 4, 16, 16) * 3
    with torch.no_grad():
        logits = model.encode_latents(z) @ model.encode_text(CLASSES).T
    labels, top1, top5 = labels_with_known_ranks(logits)
    write_latent_shard(tmp_path / "val/000000.tar", z, ["?"] * 12, [f"k{i}" for i in range(12)], labels)
    (tmp_path / "val/classnames.txt").write_text("\n".join(CLASSES))
    result = evaluate(["zeroshot", "--data", str(tmp_path / "val"), "--model", str(tmp_path / "model.pt"),
                       "--templates", "identity", "--device", "cpu", "--batch-size", "5"])
    assert result["latent"] == {"top1": pytest.approx(top1), "top5": pytest.approx(top5), "n": 12}


def test_pixel_clip_side_by_side_on_an_imagenet_style_folder(vae_dir, tmp_path):
    import open_clip
    torch.manual_seed(0)
    pixel = build_model("pixel", TINY_PIXEL).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in pixel.state_dict().items()}}, tmp_path / "pixel.pt")
    latent_clip.save_official_checkpoint(tmp_path / "latent.pt", tiny_model(), epoch=1, name="tiny")
    (tmp_path / "pixel.json").write_text(json.dumps(TINY_PIXEL))
    files = IMAGE_FILES[:9]
    transform = pixel_transform(pixel)
    with torch.no_grad():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
        text = pixel.encode_text(open_clip.tokenize(CLASSES), normalize=True)
        logits = pixel.encode_image(x, normalize=True) @ text.T
    labels, top1, top5 = labels_with_known_ranks(logits)
    for name in CLASSES:
        (tmp_path / "val" / name).mkdir(parents=True)
    for path, label in zip(files, labels):
        shutil.copy(path, tmp_path / "val" / CLASSES[label] / path.name)
    result = evaluate(["zeroshot", "--data", str(tmp_path / "val"), "--templates", "identity", "--device", "cpu",
                       "--model", str(tmp_path / "latent.pt"), "--vae", str(vae_dir),
                       "--pixel-model", str(tmp_path / "pixel.json"),
                       "--pixel-checkpoint", str(tmp_path / "pixel.pt"), "--json", str(tmp_path / "r.json")])
    assert result["pixel"] == {"top1": pytest.approx(top1), "top5": pytest.approx(top5), "n": 9}
    assert result["latent"]["n"] == 9  # the same images, VAE-encoded on the fly


def test_decoded_teacher_sees_the_decode_as_the_pixel_clip_sees_an_image():
    """The teacher preprocesses a VAE decode like a training image (pixel_transform: shorter side
    resized, centre crop, the CLIP's mean/std): on a non-square latent its input equals the
    transform of the decode saved as 8-bit RGB, to half a grey level over the smallest std (the
    rounding), where squashing the image to a square would differ by more than 1 (measured 3.2-3.8)."""
    from diffusers import AutoencoderKL

    transform_error = 0.5 / 255 / min(pixel_transform(build_model("pixel", TINY_PIXEL)).std.flatten()) + 1e-4
    for seed in range(3):
        torch.manual_seed(seed)
        pixel = build_model("pixel", TINY_PIXEL).eval()
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                            norm_num_groups=4).eval()
        seen = []
        pixel.visual.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        z = torch.randn(2, 4, 8, 16)  # 64 x 128 px
        DecodedTeacher(pixel, vae)(z)
        with torch.no_grad():
            decoded = vae.decode(z).sample
        rgb = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        transform = pixel_transform(pixel)
        expected = torch.stack([transform(Image.fromarray(a)) for a in rgb])
        squashed = torch.nn.functional.interpolate((decoded / 2 + 0.5).clamp(0, 1), size=(64, 64), mode="bicubic",
                                                   antialias=True, align_corners=False)
        assert seen[0].shape == expected.shape == (2, 3, 64, 64)
        assert (seen[0] - expected).abs().max() <= transform_error
        assert ((squashed - transform.mean) / transform.std - expected).abs().max() > 1
