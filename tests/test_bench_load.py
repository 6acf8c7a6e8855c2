"""Issue 25's rule on a real ratio: bench_scoring's own paths and timing (a tiny decode + pixel CLIP vs a tiny
Latent-CLIP, random weights) give the same time ratio alone and beside a CPU-burning neighbour."""
import pytest
import torch

from bench.bench_scoring import scoring_paths, time_paths
from bench.timing import busy_neighbour, load_differences, ratio
from latent_clip import ModelConfig
from synthetic import tiny_latent_cfg, tiny_pixel_cfg

TINY_DECODER = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16)
REPEATS = 25
# Measured over 8 runs of this measurement (25 repeats; 2026-12-07, the shared 2-core machine at load average 8-11):
# |beside / alone - 1| 0.0-3.3 % (median 1.8 %), ratio 4.8-5.0x; with 15 repeats 0.0-6.3 % over 13 runs. The bound
# is the 10 %, 3x the largest difference measured.
AGREEMENT = 0.10


def tiny_latent_config() -> ModelConfig:
    """A Latent-CLIP wide enough (64 tokens of width 256, 4 layers; ~10 ms a call) that its time is work, not
    Python overhead."""
    cfg = tiny_latent_cfg(image_size=128, layers=4, patch_size=2)
    return ModelConfig.from_dict({**cfg, "vision_cfg": {**cfg["vision_cfg"], "width": 256}})


@pytest.mark.slow
def test_scoring_time_ratio_holds_beside_a_cpu_burner():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = scoring_paths("cpu", TINY_DECODER, {"tiny ViT": tiny_pixel_cfg(image_size=64)},
                              {"tiny Latent-CLIP": tiny_latent_config()})

        def measure():
            seconds = time_paths(paths, side=16, backward=False, repeats=REPEATS)
            return {"tiny": ratio(seconds["pixel: decode + tiny ViT"], seconds["latent: tiny Latent-CLIP"])}

        alone = measure()
        with busy_neighbour() as burner:
            beside = measure()
            assert burner.poll() is None  # the neighbour burned through the whole measurement
    finally:
        torch.set_num_threads(threads)
    assert alone["tiny"].median > 2  # the decode path costs several latent paths: a ratio, not noise around 1
    assert load_differences(alone, beside)["tiny"] <= AGREEMENT, (alone, beside)
