"""FLUX- and SD3-class (flow-matching transformer) pipelines: tiny, randomly initialised, saved in the
real diffusers layouts with an offline T5 tokenizer; our generators must reproduce each pipeline's
own sampling loop, give raw latents with gradients to the noise, and drive a benchmark run with a
16-channel Latent-CLIP."""
import json

import pytest
import torch

import latent_clip
from fixtures import bench_records
from latent_clip.rewards import latent_alignment
from train.benchmarks import geneval, main
from train.benchmarks.generators import FluxGenerator, SD3Generator, load_pipeline, make_generator
from train.benchmarks.runner import render_steps
from tiny_pipelines import build_flux, build_latent_clip, build_sd3

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("flux") / "schnell")


def pipeline_latents(pipe, noise_packed_or_not, prompt, steps, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt, height=64, width=64, num_inference_steps=steps, latents=noise_packed_or_not,
                    output_type="latent", max_sequence_length=32, **kwargs).images


@pytest.mark.parametrize("steps", [1, 3])
def test_flux_generator_reproduces_the_pipeline_loop(flux, steps):
    gen = make_generator(load_pipeline(flux), "cpu", 64, max_sequence_length=32)
    assert isinstance(gen, FluxGenerator) and gen.latent_shape == (16, 8, 8)
    timesteps = gen.timesteps(steps)
    assert timesteps[0] == 1000.0 and len(timesteps) == steps
    noise = gen.noise([0, 1])
    cond = gen.condition("a red cube")
    with torch.no_grad():
        ours = gen.sample(gen.start(noise, timesteps), timesteps, cond)
    packed = gen.pipe._pack_latents(noise, 2, 16, 8, 8)
    theirs = gen.pipe._unpack_latents(pipeline_latents(gen.pipe, packed, "a red cube", steps), 64, 64, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    if steps == 1:  # ReNO's generator: raw latents (scaled / 0.3611 + 0.1159), gradients to the noise
        e = noise.clone().requires_grad_(True)
        raw = gen.one_step(cond)(e)
        torch.testing.assert_close(raw.detach(), theirs / 0.3611 + 0.1159, rtol=1e-4, atol=1e-4)
        raw.square().sum().backward()
        assert e.grad is not None and e.grad.abs().sum() > 0
        assert gen.timer.seconds["unet"] > 0


def test_flux_dev_guidance_embedding_and_resolution_shift(tmp_path):
    """Guidance-distilled FLUX: the embedded guidance reaches the transformer (it changes the output)
    and the dynamic (resolution-dependent) shift matches the pipeline's schedule."""
    pipe = load_pipeline(build_flux(tmp_path / "dev", dev=True, seed=1))
    gen = make_generator(pipe, "cpu", 64, max_sequence_length=32, embedded_guidance=2.0)
    timesteps = gen.timesteps(2)
    noise = gen.noise([5])
    cond = gen.condition("a cat")
    with torch.no_grad():
        ours = gen.sample(gen.start(noise, timesteps), timesteps, cond)
    theirs = pipe._unpack_latents(pipeline_latents(pipe, pipe._pack_latents(noise, 1, 16, 8, 8), "a cat", 2,
                                                   guidance_scale=2.0), 64, 64, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    gen.embedded_guidance = 7.0
    with torch.no_grad():
        assert not torch.allclose(gen.sample(gen.start(noise, timesteps), timesteps, cond), ours, atol=1e-4)


def test_sd3_generator_reproduces_the_pipeline_loop_with_cfg(tmp_path):
    pipe = load_pipeline(build_sd3(tmp_path / "sd3"))
    with pytest.warns(UserWarning, match="embedded_guidance does not apply to StableDiffusion3Pipeline"):
        gen = make_generator(pipe, "cpu", 64, max_sequence_length=32, embedded_guidance=3.5)
    assert isinstance(gen, SD3Generator)
    timesteps = gen.timesteps(2)
    noise = gen.noise([2, 3])
    cond = gen.condition("two dogs", guidance_scale=2.0)
    assert cond.uncond is not None
    with torch.no_grad():
        ours = gen.sample(gen.start(noise, timesteps), timesteps, cond, guidance_scale=2.0)
    theirs = pipeline_latents(pipe, noise, ["two dogs"] * 2, 2, guidance_scale=2.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 16"):
        make_generator(pipe, "cpu", 72)


def test_unsupported_pipelines_are_named():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    with pytest.raises(NotImplementedError, match="DDPMPipeline is not supported; supported pipelines: FluxPipeline"):
        make_generator(DDPMPipeline(unet, DDPMScheduler()))


def test_img2img_start_is_the_schedulers_noising(flux):
    """imagenet-gen's partial denoise on a flow model: x = (1 - sigma) x0 + sigma noise, as
    FlowMatchEulerDiscreteScheduler.scale_noise (FLUX img2img) computes it."""
    gen = make_generator(load_pipeline(flux), "cpu", 64, max_sequence_length=32)
    timesteps = gen.timesteps(2, denoise=0.5)
    assert len(timesteps) == 2 and timesteps[0] == 500.0
    clean, noise = torch.randn(1, 16, 8, 8), gen.noise([9])
    ours = gen.start(noise, timesteps, clean)
    theirs = gen.scheduler.scale_noise(clean, torch.tensor([timesteps[0]]), noise)
    torch.testing.assert_close(ours, theirs)


@pytest.fixture(scope="module")
def flux_latent_clip(tmp_path_factory):
    """A tiny Latent-CLIP of the flux latent family (16 channels, scaling 0.3611, shift 0.1159)."""
    return build_latent_clip(tmp_path_factory.mktemp("lc") / "lc_flux.safetensors", family="flux", channels=16)


def test_i2p_guidance_on_flux(flux, flux_latent_clip, tmp_path):
    """Per-step latent safety guidance through the flow sampler: guided and unguided share the noise
    and differ in the avoid loss."""
    out = tmp_path / "i2p"
    main(["i2p", "--pipeline", str(flux), "--latent-clip", str(flux_latent_clip), "--max-sequence-length", "32",
          "--outdir", str(out), "--resolution", "64", "--device", "cpu", "--limit", "1", "--steps", "2",
          "--strength", "0.5", "--summary-wait", "60"])
    recs = {r["variant"]: r for r in bench_records(out)}
    assert set(recs) == {"guided", "unguided"} and recs["guided"]["seed"] == recs["unguided"]["seed"]
    assert recs["guided"]["avoid_loss"] != recs["unguided"]["avoid_loss"]


def test_geneval_on_flux_with_a_16_channel_latent_clip(flux, flux_latent_clip, tmp_path):
    """The whole benchmark path on a FLUX-class model: ReNO with a flux-family Latent-CLIP, the
    GenEval layout, per-image records with the time breakdown."""
    out = tmp_path / "out"
    geneval.main(["--pipeline", str(flux), "--resolution", "64", "--max-sequence-length", "32", "--limit", "2",
                  "--latent-clip", str(flux_latent_clip), "--latent-weight", "1.0", "--iterations", "4", "--lr", "5.0",
                  "--samples", "2", "--outdir", str(out), "--device", "cpu", "--summary-wait", "60"])
    for i in range(2):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text())["prompt"]
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    records = bench_records(out)
    assert len(records) == 4
    for r in records:
        assert r["iterations"] == 4 and r["time"]["unet"] > 0 and r["time"]["reward"] > 0
        assert r["losses"]["latent_clip"]["best"] <= r["losses"]["latent_clip"]["initial"] + 1e-6
    assert (out / "summary.json").is_file()


def test_final_steps_render_the_noise_with_more_steps(flux, flux_latent_clip, tmp_path):
    """ReNO's multi-apply (FLUX-schnell: optimise with 1 step, save a 4-step render): the recorded
    baseline reward is the reward of the N-step render of the seed's noise."""
    common = ["--pipeline", str(flux), "--resolution", "64", "--max-sequence-length", "32", "--limit", "1",
              "--latent-clip", str(flux_latent_clip), "--latent-weight", "1.0", "--device", "cpu",
              "--summary-wait", "60", "--seed", "4"]
    geneval.main([*common, "--iterations", "0", "--final-steps", "3", "--outdir", str(tmp_path / "base")])
    geneval.main([*common, "--iterations", "3", "--final-steps", "3", "--outdir", str(tmp_path / "reno")])
    base, reno = (bench_records(tmp_path / d)[0] for d in ("base", "reno"))
    gen = make_generator(load_pipeline(flux), "cpu", 64, max_sequence_length=32)
    prompt = json.loads(geneval.METADATA.read_text().splitlines()[0])["prompt"]
    cond = gen.condition(prompt)
    three, one = render_steps(gen, cond, gen.noise([4]), 3, 0.0), render_steps(gen, cond, gen.noise([4]), 1, 0.0)
    assert not torch.allclose(three, one, atol=1e-3)
    model = latent_clip.load_model(flux_latent_clip, vae_encoder=False).eval()
    with torch.no_grad():
        expected = latent_alignment(model, prompt)(three).item()
    assert base["losses"]["latent_clip"]["initial"] == pytest.approx(expected, abs=1e-3)
    assert reno["losses"]["latent_clip"]["initial"] == pytest.approx(expected, abs=1e-3)  # same seed, same render
