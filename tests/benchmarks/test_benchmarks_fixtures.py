"""Checks of the tiny offline pipeline builders (tests/tiny_pipelines.py) and of the
one-step / few-step generator maths (the bundled prompt files are checked in test_repository.py)."""
import json

import torch

from train.benchmarks.generators import UNetGenerator, load_pipeline
from train.benchmarks.runner import timed
from tiny_pipelines import build_sdxl


def test_pipelines_load_from_local_folders_and_give_raw_latents(tiny):
    assert json.loads((tiny["sd"] / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    gen = UNetGenerator(load_pipeline(tiny["sd"]), "cpu", 64)
    assert gen.latent_shape == (4, 8, 8)
    assert gen.timesteps(1) == [999]  # trailing spacing: turbo's one step
    cond = gen.condition("a red cube")
    noise = gen.noise([0, 1])
    assert torch.equal(noise[1], gen.noise([1])[0])  # per-seed noise, batch-independent
    # one step by hand (Euler, trailing): x = noise * sigma_max; eps = unet(x / sqrt(sigma^2 + 1), 999);
    # x0 = x - sigma eps; raw = x0 / scaling_factor
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
    gen = UNetGenerator(load_pipeline(build_sdxl(tmp_path / "sdxl")), "cpu", 64)
    assert gen.sdxl
    cond = gen.condition("two dogs", guidance_scale=1.5, negative_prompt="blurry")
    assert cond.added["time_ids"].shape == (1, 6) and cond.uncond is not None
    e = gen.noise([0, 1]).requires_grad_(True)
    raw = gen.one_step(cond, guidance_scale=1.5)(e)
    assert raw.shape == (2, 4, 8, 8)
    raw.sum().backward()
    assert e.grad.abs().sum() > 0


def test_timer_books_nested_sections_once_and_never_negative(tiny):
    """A reward that is nearly all VAE decode: the decode is booked as decode, the rest (forward and
    backward) as reward, never below zero, and the sections add up to no more than the wall time."""
    gen = UNetGenerator(load_pipeline(tiny["sd"]), "cpu", 64)
    timer = gen.timer

    def reward(raw):
        with timer.section("decode"):
            images = gen.decode(raw)
        return images.square().mean((1, 2, 3))

    generate, total = gen.one_step(gen.condition("a red cube")), timed(reward, timer)
    for seed in range(3):
        noise = gen.noise([seed]).requires_grad_(True)
        timer.reset()
        start = timer.now()
        total(generate(noise)).sum().backward()
        wall = timer.now() - start
        spent = timer.reset()
        assert set(spent) == {"unet", "decode", "reward"} and min(spent.values()) >= 0, spent
        assert sum(spent.values()) <= wall
