"""Which resize policy keeps embeddings of larger latents closest to the trained-size ones?

For each real image, encode the same content at the trained resolution (latent S x S) and at
2x (2S x 2S, "1024 px") and at 2x by 1.5x (non-square), through the same VAE encoder, then compare
``encode_latents`` of the large latent under ``pool`` and ``interpolate`` with the embedding of the
S x S latent (cosine, higher is closer). Prints mean/min over images for each policy and case.

    .venv/bin/python -m bench.bench_resolution                         # random B/8 + random small VAE
    .venv/bin/python -m bench.bench_resolution --model M.safetensors --vae VAE_DIR --size 512
    .venv/bin/python -m bench.bench_resolution --model latent_clip/assets/tinyworld/latent_clip.safetensors \
        --vae latent_clip/assets/tinyworld/vae --world 48

Random weights say little about a trained model; pass trained weights (e.g. the tiny world's)
for a meaningful answer.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from latent_clip import LatentCLIP, get_model_config, load_model

IMAGES = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"  # 15 real images (see its README)
SMALL_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=32)


def load_image(path: Path, width: int, height: int) -> torch.Tensor:
    """RGB in [-1, 1], (1, 3, height, width): the whole picture resized (content kept, aspect changed)."""
    image = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Latent-CLIP weights (default: random Latent-ViT-B-8-512)")
    parser.add_argument("--vae", help="diffusers AutoencoderKL folder (default: random small KL-VAE)")
    parser.add_argument("--size", type=int, default=None, help="trained image size in px (default: the model's)")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--world", type=int, default=0, metavar="N",
                        help="use N tiny-world renders (seed 999) instead of --images")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, vae_encoder=False) if args.model else \
        LatentCLIP(get_model_config("Latent-ViT-B-8-512")).eval()
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True) if args.vae else AutoencoderKL(**SMALL_VAE)
    vae.eval()
    size = args.size or model.config.vision.image_size
    if args.world:
        from train.tinyworld.world import make_samples
        args.images = Path(tempfile.mkdtemp())
        for i, sample in enumerate(make_samples(999, args.world)):
            Image.fromarray(sample.image).save(args.images / f"{i:03d}.png")
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".png", ".jpg"))

    def latents(w, h):
        return [vae.encode(load_image(p, w, h)).latent_dist.mean for p in paths]

    def embed(zs, policy):
        model.resize_policy = policy
        return torch.cat([model.encode_latents(z) for z in zs])

    cases = {"2x (1024 px)": (2 * size, 2 * size), "2x1.5 non-square": (3 * size // 2 // 8 * 8, 2 * size)}
    print(f"{len(paths)} images, trained size {size} px, model {args.model or 'random B/8'}, "
          f"VAE {args.vae or 'random small'}")
    print(f"{'case':<18} {'policy':<12} {'mean cos':>9} {'min cos':>8}")
    reference = embed(latents(size, size), "pool")
    for case, (w, h) in cases.items():
        large = latents(w, h)
        for policy in ("pool", "interpolate"):
            cos = F.cosine_similarity(embed(large, policy), reference).numpy()
            print(f"{case:<18} {policy:<12} {cos.mean():9.4f} {cos.min():8.4f}", flush=True)


if __name__ == "__main__":
    main()
