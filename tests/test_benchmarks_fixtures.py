"""Tiny, randomly initialised diffusers pipelines and a tiny Latent-CLIP, saved to disk in the real
layouts (no downloads), shared by the test_benchmarks_* files; plus checks of the builders and the
one-step / few-step generator maths."""
import json
from pathlib import Path

import pytest
import torch

import latent_clip

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/benchmarks"
TINY_LATENT_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 1,
                                                    "latent_family": "sdxl", "latent_n_channels": 4,
                                                    "latent_factor": 8},
                    "text_cfg": {"width": 64, "heads": 1, "layers": 1}}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable-character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (no merges), built offline: 514 tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def text_encoder(tok, projection: int | None = None, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=projection or hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_vae(seed: int = 0, **config):
    """A tiny AutoencoderKL (f=8): 4 latent channels, scaling 0.5 unless ``config`` says otherwise."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{"block_out_channels": (8, 8, 8, 8), "down_block_types": ("DownEncoderBlock2D",) * 4,
                            "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "latent_channels": 4,
                            "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 0.5, **config})


def tiny_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  timestep_spacing="trailing", prediction_type="epsilon")


def build_sd(folder: Path, seed: int = 0) -> Path:
    """SD-Turbo-shaped: UNet (cross-attn 32), tiny VAE (f=8, scaling 0.5), CLIP text encoder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tok = write_tokenizer(folder / "_tok")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=text_encoder(tok, seed=seed), tokenizer=tok,
                                   unet=unet, scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """SDXL-Turbo-shaped: two text encoders (the second with projection), text_time added cond."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tok = write_tokenizer(folder / "_tok")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                                transformer_layers_per_block=1)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed), text_encoder=text_encoder(tok, seed=seed),
                                     text_encoder_2=text_encoder(tok, projection=32, seed=seed + 1), tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=tiny_scheduler())
    pipe.save_pretrained(str(folder))
    return folder


def build_latent_clip(path: Path, seed: int = 0, family: str = "sdxl", channels: int = 4) -> Path:
    """The tiny Latent-CLIP (random) of latent ``family``, exported to ``path``."""
    cfg = {**TINY_LATENT_CLIP, "vision_cfg": {**TINY_LATENT_CLIP["vision_cfg"], "latent_family": family,
                                              "latent_n_channels": channels}}
    torch.manual_seed(seed)
    return latent_clip.save_export(latent_clip.LatentCLIP(latent_clip.ModelConfig.from_dict(cfg)).eval(), path)


def build_all(root: Path) -> dict[str, Path]:
    return {"sd": build_sd(root / "sd"), "latent_clip": build_latent_clip(root / "latent_clip.safetensors")}


# ---------------------------------------------------------------- checks of the builders and generator maths
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny"))


def test_pipelines_load_from_local_folders_and_give_raw_latents(tiny, tmp_path):
    from train.benchmarks.pipelines import UNetGenerator, load_pipeline

    assert json.loads((tiny["sd"] / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    gen = UNetGenerator(load_pipeline(tiny["sd"]), "cpu", 64)
    assert gen.latent_shape == (4, 8, 8)
    assert gen.timesteps(1) == [999]  # trailing spacing: turbo's one step
    cond = gen.condition("a red cube")
    noise = gen.noise([0, 1])
    assert torch.equal(noise[1], gen.noise([1])[0])  # per-seed noise, batch-independent
    # one step by hand (Euler, trailing): x = noise * sigma_max; eps = unet(x / sqrt(sigma^2 + 1), 999);
    # x0 = x - sigma eps; raw = x0 / scaling_factor (0.5 here)
    sigma = gen.sigma(999)
    with torch.no_grad():
        text = cond.text.expand(2, -1, -1)
        x_in = noise * sigma / (sigma ** 2 + 1) ** 0.5
        eps = gen.unet(x_in, torch.tensor([999, 999]), encoder_hidden_states=text).sample
        raw = gen.one_step(cond)(noise)
    expected = (noise * sigma - sigma * eps) / gen.vae.config.scaling_factor
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-4)
    # the same as the scheduler's own Euler step to x0 (scale_model_input + step's pred_original_sample)
    sched = gen.scheduler
    sched.set_timesteps(1)
    latents = noise * sched.init_noise_sigma
    t = sched.timesteps[0]
    with torch.no_grad():
        eps2 = gen.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=text).sample
    x0 = sched.step(eps2, t, latents).pred_original_sample
    torch.testing.assert_close(raw, x0 / gen.vae.config.scaling_factor, rtol=1e-4, atol=1e-4)
    # differentiable w.r.t. the noise
    e = noise.clone().requires_grad_(True)
    gen.one_step(cond)(e).square().sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0
    gen.unet.enable_gradient_checkpointing()  # --grad-checkpointing: same gradient, frozen eval-mode UNet
    e2 = noise.clone().requires_grad_(True)
    gen.one_step(cond)(e2).square().sum().backward()
    torch.testing.assert_close(e2.grad, e.grad)
    assert "unet" in gen.timer.seconds


def test_few_step_sampler_matches_the_scheduler_loop(tiny):
    from train.benchmarks.pipelines import UNetGenerator, load_pipeline

    gen = UNetGenerator(load_pipeline(tiny["sd"]), "cpu", 64)
    cond = gen.condition("a blue ball")
    steps = gen.timesteps(3)
    noise = gen.noise([3])
    with torch.no_grad():
        ours = gen.sample(gen.start(noise, steps), steps, cond)
        sched = gen.scheduler
        sched.set_timesteps(3)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = gen.unet(sched.scale_model_input(x, t), t, encoder_hidden_states=cond.text).sample
            out = sched.step(eps, t, x)
            x = out.prev_sample
    torch.testing.assert_close(ours, out.pred_original_sample, rtol=1e-4, atol=1e-4)


def test_sdxl_pipeline_with_added_conditioning(tmp_path):
    from train.benchmarks.pipelines import UNetGenerator, load_pipeline

    gen = UNetGenerator(load_pipeline(build_sdxl(tmp_path / "sdxl")), "cpu", 64)
    assert gen.sdxl
    cond = gen.condition("two dogs", guidance_scale=1.5, negative_prompt="blurry")
    assert cond.added["time_ids"].shape == (1, 6) and cond.uncond is not None
    e = gen.noise([0, 1]).requires_grad_(True)
    raw = gen.one_step(cond, guidance_scale=1.5)(e)
    assert raw.shape == (2, 4, 8, 8)
    raw.sum().backward()
    assert e.grad.abs().sum() > 0


def test_bundled_prompt_data_is_a_faithful_copy():
    """train/benchmarks/data ships copies of the shared benchmark prompt files, byte for byte."""
    from train.benchmarks.runner import DATA

    copies = [p for p in DATA.rglob("*") if p.is_file() and p.name != "README.md"]
    assert len(copies) >= 17
    for copy in copies:
        assert copy.read_bytes() == (SHARED / copy.relative_to(DATA)).read_bytes(), copy
