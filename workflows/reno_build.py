"""Writes the ReNO and safety-guidance example workflows (same scheme as workflows/build.py).

* ``example_workflows/<title>.json`` (build.TEMPLATES): UI format (v0.4), the real SDXL-Turbo graphs with
  the official Latent-CLIP B/8 (SDXL-VAE latents): only pairings of one latent family ship.
* ``workflows/api/<name>.json``: the same graphs in API format.
* ``tests/api_workflows/<name>.json``: test twins that tests/comfyui/test_reno_http.py POSTs: the same
  graph on the test's random full-size SD1.5 checkpoint at 64 px with tiny Latent-CLIP weights of
  the SD1.5 latent family (so the twin's pairing is valid too), 2 ReNO iterations, and SaveLatent
  instead of decoding.

Widget order comes from a running server's /object_info (this script boots one with the test
harness when no URL is given):
    .venv/bin/python workflows/reno_build.py [http://127.0.0.1:8188]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import LC_WEIGHTS, L, fetch_object_info, to_api, to_ui, write  # noqa: E402

SDXL_TURBO = "sd_xl_turbo_1.0_fp16.safetensors"
TEST_CKPT = "latent_clip_test_sd15.safetensors"
TEST_WEIGHTS_SD15 = "latent_clip_tiny_sd15.safetensors"  # the harness's tiny config, latent family sd15
PROMPT = "a red cube on top of a blue sphere, studio photo"


def txt2img(ckpt: str, size: int, negative: bool = False) -> dict:
    """Nodes 1-6: checkpoint, prompts, empty latent, Latent-CLIP loader."""
    out = {1: ("CheckpointLoaderSimple", {"ckpt_name": ckpt}),
           2: ("CLIPTextEncode", {"text": PROMPT, "clip": L(1, 1)}),
           4: ("EmptyLatentImage", {"width": size, "height": size, "batch_size": 1}),
           6: ("LatentCLIPLoader", {"model_name": LC_WEIGHTS, "dtype": "auto", "device": "default"})}
    if negative:
        out[3] = ("CLIPTextEncode", {"text": "blurry, low quality", "clip": L(1, 1)})
    return out


def custom_advanced(guider: list, sampler: list, steps: int) -> dict:
    return {14: ("RandomNoise", {"noise_seed": 0}),
            15: ("SDTurboScheduler", {"model": L(1), "steps": steps, "denoise": 1.0}),
            16: ("SamplerCustomAdvanced", {"noise": L(14), "guider": guider, "sampler": sampler,
                                           "sigmas": L(15), "latent_image": L(4)})}


def finish(src: list, prefix: str) -> dict:
    return {20: ("VAEDecode", {"samples": src, "vae": L(1, 2)}),
            21: ("SaveImage", {"images": L(20), "filename_prefix": prefix})}


SPECS = {
    "reno_sdxl_turbo": {**txt2img(SDXL_TURBO, 512),
        10: ("LatentCLIPRewardPrompt", {"latent_clip": L(6), "prompt": PROMPT, "weight": 0.01}),
        11: ("KSamplerSelect", {"sampler_name": "euler"}),
        12: ("LatentCLIPRenoSampler", {"reward": L(10), "sampler": L(11), "iterations": 50, "lr": 5.0,
                                       "grad_clip": 0.1, "reg_weight": 0.01, "momentum": 0.9,
                                       "allow_family_mismatch": False}),
        13: ("BasicGuider", {"model": L(1), "conditioning": L(2)}),
        **custom_advanced(L(13), L(12), 1), **finish(L(16), "latent_clip/reno")},
    "reno_sdxl_turbo_prompt": {**txt2img(SDXL_TURBO, 512),
        10: ("LatentCLIPReno", {"model": L(1), "positive": L(2), "latent_clip": L(6), "prompt": PROMPT,
                                "latent": L(4), "seed": 0, "iterations": 50, "lr": 5.0, "steps": 1,
                                "cfg": 1.0, "allow_family_mismatch": False}),
        **finish(L(10), "latent_clip/reno_prompt")},
    "guidance_sdxl_turbo": {**txt2img(SDXL_TURBO, 512, negative=True),
        10: ("LatentCLIPAvoidGuider", {"model": L(1), "positive": L(2), "negative": L(3), "cfg": 1.0,
                                       "latent_clip": L(6), "concepts": "nudity\nviolence | a photo of "
                                       "a peaceful scene", "strength": 0.05, "start_percent": 0.0,
                                       "end_percent": 0.8, "allow_family_mismatch": False}),
        11: ("KSamplerSelect", {"sampler_name": "euler_ancestral"}),
        **custom_advanced(L(10), L(11), 4), **finish(L(16), "latent_clip/guided")},
}


def test_twin(name: str, spec: dict) -> dict:
    """Same graph on the test checkpoint at 64 px, tiny sd15 weights, 2 iterations / steps, SaveLatent."""
    out = {nid: (cls, dict(values)) for nid, (cls, values) in spec.items() if nid < 20}
    out[1][1]["ckpt_name"], out[6][1]["model_name"] = TEST_CKPT, TEST_WEIGHTS_SD15
    out[4][1].update(width=64, height=64)
    for nid, (cls, values) in out.items():
        if "iterations" in values:
            values["iterations"] = 2
        if cls == "SDTurboScheduler":
            values["steps"] = min(values["steps"], 2)
        if cls == "LatentCLIPAvoidGuider":
            values.update(cfg=1.5, strength=0.5, end_percent=1.0)
    src = L(16) if 16 in out else L(10)
    out[22] = ("SaveLatent", {"samples": src, "filename_prefix": f"latents/{name}"})
    return out


def main(object_info: dict) -> None:
    for name, spec in SPECS.items():
        write(name, to_ui(name, spec, object_info), to_api(spec), to_api(test_twin(name, spec)))


if __name__ == "__main__":
    main(fetch_object_info(sys.argv[1] if len(sys.argv) > 1 else None))
