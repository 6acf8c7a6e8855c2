"""ReNO sampler, reward nodes and safety guider with real ComfyUI modules (0.3.75, or the one
$LATENT_CLIP_COMFYUI_DIR names), in-process.

A tiny SD1.5-shaped UNet, FLUX.1-schnell or FLUX.2 in a real ModelPatcher, run under
``torch.inference_mode()`` like ComfyUI's executor, through CFGGuider.sample with eps,
v-prediction and flow (CONST) model_sampling.
"""
import contextlib
import importlib

import pytest
import torch

from latent_clip.reno import private_saved_tensors
from latent_clip.rewards import latent_alignment, latent_avoid

pytestmark = pytest.mark.comfyui
RENO_OPTIONS = {"lr": 5.0, "grad_clip": 0.1, "reg_weight": 0.01, "momentum": 0.9}  # the ReNO sampler's defaults

TINY_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
             "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
             "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1, "context_dim": 768,
             "use_linear_in_transformer": False, "use_spatial_transformer": True, "legacy": False,
             "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False}


# FLUX.1 and FLUX.2 as comfy/model_detection.py describes them, shrunk: FLUX.2 has four rope axes, global
# modulation, SiLU-gated MLPs, no biases, no pooled text vector and 128 latent channels at patch size 1
TINY_FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
             "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
             "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False}
TINY_FLUX2 = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
              "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 1,
              "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False,
              "guidance_embed": False, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
              "default_ref_method": "index", "ref_index_scale": 10.0}
# the rope axes that number text tokens, a required FluxParams field from ComfyUI 0.4 on (model_detection's values;
# 0.3.75 has no such field and numbers FLUX.2's along axis 3)
TXT_IDS_DIMS = {"flux": [], "flux2": [3]}
LATENT_CHANNELS = {"sd15": 4, "flux": 16, "flux2": 128}


def flux_config(family: str) -> dict:
    """The tiny config of ``family`` ('flux' or 'flux2') that the imported ComfyUI's FluxParams accepts."""
    from comfy.ldm.flux.model import FluxParams

    config = dict(TINY_FLUX if family == "flux" else TINY_FLUX2)
    if "txt_ids_dims" in FluxParams.__dataclass_fields__:
        config["txt_ids_dims"] = TXT_IDS_DIMS[family]
    return config


def tiny_model_patcher(sampling: str = "eps", seed: int = 0, family: str = "sd15"):
    """A real MODEL: SD15(tiny config).get_model, FluxSchnell's for ``family`` 'flux' (flow model_sampling
    with shift 1, FLUX latent format, 2x2 patchify inside the model) or Flux2's for 'flux2' (flow, shift
    2.02, 128-channel identity latent format), weights N(0, 1/fan_in), in a ModelPatcher; ``sampling`` 'v'
    or 'flow' (shift 3) patched by the ModelSamplingDiscrete / ModelSamplingSD3 nodes."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    torch.manual_seed(seed)
    with torch.inference_mode():  # as CheckpointLoaderSimple runs
        config = {"sd15": lambda: sm.SD15(dict(TINY_UNET)), "flux": lambda: sm.FluxSchnell(flux_config("flux")),
                  "flux2": lambda: sm.Flux2(flux_config("flux2"))}[family]()
        model = config.get_model({})
        for name, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5 if p.ndim > 1 else
                    (torch.ones_like(p) if "norm" in name or "scale" in name else 0.01 * torch.randn_like(p)))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    if sampling != "eps":
        from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete, ModelSamplingSD3
        patcher = (ModelSamplingDiscrete().patch(patcher, "v_prediction", False) if sampling == "v" else
                   ModelSamplingSD3().patch(patcher, shift=3.0))[0]
    return patcher


def tiny_latent_clip_patcher(inprocess, family: str = "sd15", channels: int = 4):
    """The harness's tiny Latent-CLIP config for latent ``family`` (default: the tiny SD1.5 UNet's,
    a valid pairing), weights as inference tensors as when the loader node runs."""
    import comfy.model_patcher
    from comfy_harness import TINY_CONFIG
    from fixtures import tiny_model

    loaders = importlib.import_module(f"{inprocess.pack.__name__}.nodes.loaders")
    with torch.inference_mode():
        clip = tiny_model(TINY_CONFIG, latent_family=family, latent_n_channels=channels)
    return comfy.model_patcher.ModelPatcher(loaders.ModelHolder(clip), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def guided_sample(model, sampler, positive, noise, latent=None, negative=None, cfg: float = 1.0, steps: int = 1):
    """What SamplerCustomAdvanced runs, under inference_mode like ComfyUI's executor: a CFGGuider over
    ``model`` (positive only when ``negative`` is None) samples ``noise`` from ``latent`` (default: an
    empty latent, zeros like ``noise``) with ``sampler`` on the "simple" schedule of ``steps`` steps."""
    import comfy.samplers

    latent = torch.zeros_like(noise) if latent is None else latent
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.inner_set_conds({"positive": positive} if negative is None else
                               {"positive": positive, "negative": negative})
        guider.set_cfg(cfg)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
        return guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True)


def conds(batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, 768, generator=g), {}]], [[torch.randn(batch, 77, 768, generator=g), {}]]


def flux_conds(family: str, batch: int = 1, seed: int = 3) -> list:
    """Text conditioning of the tiny FLUX configs: 8 tokens of width 32, with a pooled vector for FLUX.1;
    FLUX.2 has no input for one (``pooled_output`` None; 0.3.75 needs the key)."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, 8, 32, generator=g)
    return [[context, {"pooled_output": torch.randn(batch, 32, generator=g) if family == "flux" else None}]]


def pack_errors(inprocess):
    """The contract's exceptions as the pack raises them (its latent_clip is imported inside the pack)."""
    lc = importlib.import_module(f"{inprocess.pack.__name__}.latent_clip")
    return lc.LatentContractError, lc.LatentFamilyMismatch


def pack_module(module: str, name: str | None = None):
    """A fixture ``name`` (default ``module``): the pack's ``nodes.<module>`` as ComfyUI imported it."""
    def fixture(comfy_inprocess):
        return importlib.import_module(f"{comfy_inprocess.pack.__name__}.nodes.{module}")
    return pytest.fixture(fixture, name=name or module)


reno, guidance = pack_module("reno"), pack_module("guidance")
reward_nodes, autograd_nodes = pack_module("rewards", "reward_nodes"), pack_module("_autograd", "autograd_nodes")


@pytest.mark.parametrize("sampling", ["eps", "v", "flow"])
def test_reno_sampler_lowers_the_reward_loss(comfy_inprocess, reno, sampling, reward_nodes):
    model = tiny_model_patcher(sampling)
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a red apple", 1.0).result[0]
    sampler = reno.LatentCLIPRenoSampler.execute(reward, iterations=6, **RENO_OPTIONS).result[0]
    positive, negative = conds()
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = guided_sample(model, sampler, positive, noise, negative=negative, cfg=2.0)
    result = sampler.last_result
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert result.history.shape == (6, 2)
    assert (result.best_loss < result.initial_loss).all()
    # the 1-step output is the best iterate, converted to raw latents by the model's latent_format
    latent_format = model.model.latent_format
    assert torch.allclose(out, latent_format.process_out(result.best_latent).float(), atol=1e-4)


def test_reward_reads_raw_latents_not_model_space(comfy_inprocess, reward_nodes):
    """The reward must see process_out(x0) (raw), not x0 * scale: check against the library."""
    import comfy.latent_formats

    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    term = reward_nodes.PromptTerm(1.0, lclip, "a cat")
    with torch.inference_mode(False):
        fn = reward_nodes.build_reward((term,), comfy.latent_formats.SD15())
        z = torch.randn(1, 4, 16, 16)
        expected = latent_alignment(lclip.model.clip, "a cat")(z)
    assert torch.allclose(fn(z), expected)


def test_only_valid_pairings_run_and_an_allowed_mismatch_is_shown_on_the_node(comfy_inprocess, reno, guidance, reward_nodes):
    """An SDXL Latent-CLIP with an SD1.5 model: an error naming both families in the ReNO sampler,
    the all-in-one node and the safety guider; allow_family_mismatch runs it with the warning kept
    above the progress line of the node text. Another channel count is an error even then."""
    import comfy.samplers

    LatentContractError, LatentFamilyMismatch = pack_errors(comfy_inprocess)
    model = tiny_model_patcher("eps")
    sdxl = tiny_latent_clip_patcher(comfy_inprocess, "sdxl")
    positive, negative = conds()
    both = r"SDXL / SDXL-Turbo VAE.*\('sdxl'\).*SD 1.x / 2.x / SD-Turbo VAE latents \('sd15'\).*allow_family_mismatch"
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(sdxl, "a red apple", 0.01).result[0]
    for allow in (False, True):
        sampler = reno.LatentCLIPRenoSampler.execute(reward, iterations=2, **RENO_OPTIONS,
                                                     allow_family_mismatch=allow).result[0]
        with pytest.raises(LatentFamilyMismatch, match=both) if not allow else contextlib.nullcontext():
            guided_sample(model, sampler, positive, torch.randn(1, 4, 16, 16))
    lines = sampler.text.shown.splitlines()
    assert lines[0].startswith("⚠ Latent-CLIP: this Latent-CLIP reads SDXL") and "is set" in lines[0]
    assert lines[-1].startswith("ReNO 2/2: reward loss")
    with torch.inference_mode():
        latent = {"samples": torch.zeros(1, 4, 16, 16)}
        with pytest.raises(LatentFamilyMismatch, match=both):
            reno.LatentCLIPReno.execute(model, positive, sdxl, "a red apple", latent, seed=0, iterations=2, lr=5.0,
                                        steps=1, cfg=1.0)
        reno.LatentCLIPReno.execute(model, positive, sdxl, "a red apple", latent, seed=0, iterations=2, lr=5.0,
                                    steps=1, cfg=1.0, allow_family_mismatch=True)
        with pytest.raises(LatentFamilyMismatch, match=both):
            guidance.LatentCLIPAvoidGuider.execute(model, positive, negative, 2.0, sdxl, "gore", 0.5, 0.0, 1.0)
        guidance.LatentCLIPAvoidGuider.execute(model, positive, negative, 2.0, sdxl, "gore", 0.5, 0.0, 1.0,
                                               allow_family_mismatch=True)
    flux = tiny_latent_clip_patcher(comfy_inprocess, "flux", 16)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(flux, "a red apple", 0.01).result[0]
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=2, allow_family_mismatch=True)
    with pytest.raises(LatentContractError, match="reads 16-channel FLUX.1 VAE latents.*makes 4-channel"):
        guided_sample(model, sampler, positive, torch.randn(1, 4, 16, 16))


def test_a_latent_of_another_channel_count_gets_the_packs_message(comfy_inprocess, reno, reward_nodes):
    """A 16-channel latent (SD3/FLUX) into the ReNO sampler on a 4-channel model: the pack's
    message, not the first conv's "expected 4 channels"."""
    import comfy.samplers

    LatentContractError, _ = pack_errors(comfy_inprocess)
    model = tiny_model_patcher("eps")
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(tiny_latent_clip_patcher(comfy_inprocess), "a cat", 0.01).result[0]
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=2)
    positive, _ = conds()
    message = (r"ReNO: this diffusion model makes SD 1.x / 2.x / SD-Turbo VAE latents \('sd15'\); start from an "
               r"empty latent of this model, got 16 channels — a SD3 / SD3.5 VAE or FLUX.1 VAE latent\?")
    with pytest.raises(LatentContractError, match=message):
        guided_sample(model, sampler, positive, torch.randn(1, 16, 16, 16), torch.randn(1, 16, 16, 16))


def test_reno_all_in_one_and_chained_rewards(comfy_inprocess, reno, reward_nodes):
    model = tiny_model_patcher("eps")
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    positive, _ = conds()
    with torch.inference_mode():
        latent = {"samples": torch.zeros(1, 4, 16, 16), "batch_index": [0]}
        out = reno.LatentCLIPReno.execute(model, positive, lclip, "a red apple", latent, seed=3, iterations=2,
                                          lr=5.0, steps=2, cfg=1.0).result[0]
        r = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a cat", 1.0).result[0]
        r = reward_nodes.LatentCLIPRewardAvoid.execute(lclip, "gore", 0.5, reward=r).result[0]
        both = reward_nodes.LatentCLIPRewardCombine.execute(r, r).result[0]
    assert out["samples"].shape == (1, 4, 16, 16) and out["batch_index"] == [0]
    assert [t.kind for t in both] == ["prompt", "avoid", "prompt", "avoid"]


def test_reno_stops_cleanly_on_interrupt(comfy_inprocess, reno, reward_nodes):
    import comfy.model_management as mm
    import comfy.samplers

    model = tiny_model_patcher("eps")
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a red apple", 1.0).result[0]
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=50)
    positive, negative = conds()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            guided_sample(model, sampler, positive, torch.randn(1, 4, 16, 16), negative=negative)
    finally:
        mm.interrupt_current_processing(False)
    # the model still samples afterwards (weights were replaced by equal normal tensors)
    out = guided_sample(model, comfy.samplers.ksampler("euler"), positive, torch.randn(1, 4, 16, 16), negative=negative)
    assert torch.isfinite(out).all()


def test_comfy_training_paths_are_on_only_while_reno_optimises(comfy_inprocess, reno, reward_nodes):
    """ComfyUI's ``in_training`` flag (from ComfyUI 0.14) is set for every model call of the optimisation and
    not for the final sample, and is back to its previous value after a run, an error (NaN at the first
    iterate) and an interrupt; a ComfyUI without the flag does not get one."""
    import comfy.model_management as mm
    import comfy.samplers

    has_flag = hasattr(mm, "in_training")
    on, off = (True, False) if has_flag else (None, None)
    unet = tiny_model_patcher("eps")
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a cat", 1.0).result[0]
    positive, _ = conds()

    def run(previous: bool, nan: bool = False, interrupt: bool = False) -> tuple:
        """(the flag after 3 ReNO iterations and the sample, the flag at each model call), from ``previous``."""
        seen = []

        def wrapper(apply_model, args):
            seen.append(getattr(mm, "in_training", None))
            out = apply_model(args["input"], args["timestep"], **args["c"])
            return out * float("nan") if nan else out

        model = unet.clone()
        model.set_model_unet_function_wrapper(wrapper)
        error = ValueError if nan else mm.InterruptProcessingException if interrupt else None
        if has_flag:
            mm.in_training = previous
        mm.interrupt_current_processing(interrupt)
        try:
            with pytest.raises(error) if error else contextlib.nullcontext():
                guided_sample(model, reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=3),
                              positive, torch.randn(1, 4, 16, 16))
            return getattr(mm, "in_training", None), seen
        finally:
            mm.interrupt_current_processing(False)
            if has_flag:
                mm.in_training = False

    assert run(False) == (off, [on, on, on, off])
    assert run(True) == (on, [on] * 4)
    assert run(False, nan=True) == (off, [on])  # the first iterate is NaN: an error
    assert run(False, interrupt=True) == (off, [on])  # interrupted at the first progress update


@pytest.mark.parametrize("kind", ["eps", "flow", "flux", "flux2"])
def test_safety_guider_moves_away_from_the_concept(comfy_inprocess, guidance, kind):
    """Guided 4-step sampling ends further from the concept than unguided, on the SD1.5 UNet (eps, flow)
    and FLUX.1 / FLUX.2 (the guidance gradient goes through Latent-CLIP only, never through the model)."""
    import comfy.samplers

    family = kind if kind.startswith("flux") else "sd15"
    model = tiny_model_patcher(family=family) if family != "sd15" else tiny_model_patcher(kind)
    channels = LATENT_CHANNELS[family]
    lclip = tiny_latent_clip_patcher(comfy_inprocess, family, channels)
    positive, negative = conds() if family == "sd15" else (flux_conds(family, seed=1), flux_conds(family, seed=2))
    shape = (1, channels, 16, 16) if family == "sd15" else (1, channels, 8, 8)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    outs = {}
    for strength in (0.0, 0.5):
        with torch.inference_mode():
            guider = guidance.LatentCLIPAvoidGuider.execute(model, positive, negative, 2.0, lclip, "a red apple",
                                                            strength, 0.0, 1.0).result[0]
            sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
            outs[strength] = guider.sample(noise, torch.zeros(shape), comfy.samplers.ksampler("euler"),
                                           sigmas, seed=0, disable_pbar=True)
        if strength:
            assert len(guider.last_losses) == 4
    avoid = latent_avoid(lclip.model.clip, "a red apple")
    assert avoid(outs[0.5].clone()) < avoid(outs[0.0].clone())


@pytest.mark.slow
def test_pixel_reward_term_through_a_comfy_vae(comfy_inprocess, reno, reward_nodes):
    """The comparison path: ComfyUI VAE decode (with gradient; a random full-size SD VAE, as only
    that config is detected) at 64 px + a tiny open_clip model."""
    import comfy.samplers
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import tokenize

    from fixtures import SD15_VAE

    torch.manual_seed(0)
    with torch.inference_mode():
        sd = {k: (torch.randn_like(v) / v[0].numel() ** 0.5 if v.ndim > 1 else
                  torch.ones_like(v) if "norm" in k and k.endswith("weight") else torch.zeros_like(v))
              for k, v in AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4).state_dict().items()}  # created uninitialised
        vae = comfy.sd.VAE(sd=sd)
    clip = CLIP(16, CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                CLIPTextCfg(width=32, heads=1, layers=1)).eval().requires_grad_(False)
    model = tiny_model_patcher("eps")
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    reward = (reward_nodes.PixelTerm(1.0, vae, clip, tokenize, "a red apple"),
              reward_nodes.PromptTerm(0.5, lclip, "a red apple"))
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=3)
    positive, _ = conds()
    out = guided_sample(model, sampler, positive, torch.randn(1, 4, 8, 8))
    assert torch.isfinite(out).all() and sampler.last_result.history.shape == (3, 1)
    assert (sampler.last_result.best_loss <= sampler.last_result.initial_loss).all()


def test_progress_bar_shows_iterations_and_latent_previews(comfy_inprocess, reno, monkeypatch, reward_nodes):
    import comfy.samplers
    import comfy.utils
    import latent_preview

    monkeypatch.setattr(latent_preview.args, "preview_method", latent_preview.LatentPreviewMethod.Latent2RGB)
    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        seen.append((value, total, preview)))
    model = tiny_model_patcher("eps")
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a red apple", 1.0).result[0]
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=3)
    positive, _ = conds()
    guided_sample(model, sampler, positive, torch.randn(1, 4, 16, 16))
    assert [(v, t) for v, t, _ in seen[:3]] == [(1, 3), (2, 3), (3, 3)]
    assert all(p is not None and p[0] == "JPEG" for _, _, p in seen[:3])


@pytest.mark.parametrize("family", ["flux", "flux2"])
def test_reno_sampler_on_a_flux_model(comfy_inprocess, reno, reward_nodes, family):
    """FLUX.1-schnell and FLUX.2 in ComfyUI: 16 or 128-channel latents, flow sampling, the family's latent
    format (FLUX.1: scale 0.3611, shift 0.1159; FLUX.2: identity) between model space and the raw latents
    Latent-CLIP reads; the 1-step result is the best iterate, and a 4-step render from the optimised noise
    also runs. From ComfyUI 0.8 the gradient only exists on ComfyUI's training paths (RenoSampler sets them)."""
    import comfy.samplers
    model = tiny_model_patcher(family=family)
    channels = LATENT_CHANNELS[family]
    lclip = tiny_latent_clip_patcher(comfy_inprocess, family, channels)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a red apple", 1.0).result[0]
    sampler = reno.LatentCLIPRenoSampler.execute(reward, iterations=5, **RENO_OPTIONS).result[0]
    positive = flux_conds(family, batch=2)
    ms = model.get_model_object("model_sampling")
    latent = torch.zeros(2, channels, 8, 8)
    noise = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    out = guided_sample(model, sampler, positive, noise, latent)
    result = sampler.last_result
    assert float(ms.sigma_max) == 1.0 and out.shape == (2, channels, 8, 8) and torch.isfinite(out).all()
    assert (result.best_loss < result.initial_loss).all()
    fmt = model.model.latent_format
    scale, shift = (0.3611, 0.1159) if family == "flux" else (1.0, 0.0)
    assert fmt.scale_factor == pytest.approx(scale) and getattr(fmt, "shift_factor", 0.0) == pytest.approx(shift)
    assert torch.allclose(out, fmt.process_out(result.best_latent).float(), atol=1e-4)
    with torch.no_grad():  # the reward saw raw latents: model space / scale + shift
        raw = result.best_latent.float() / scale + shift
        assert torch.allclose(latent_alignment(lclip.model.clip, "a red apple")(raw), result.best_loss, atol=1e-4)
    # ReNO's multi-apply: the optimised noise rendered with 4 steps
    four = guided_sample(model, comfy.samplers.sampler_object("euler"), positive, result.best_noise, latent, steps=4)
    assert torch.isfinite(four).all() and not torch.allclose(four, out, atol=1e-3)


@pytest.mark.parametrize("family", ["flux", "flux2"])
def test_comfy_flux_needs_private_saved_tensors_and_the_unet_is_unchanged_by_them(comfy_inprocess, autograd_nodes,
                                                                                  family):
    """ComfyUI's FLUX.1 and FLUX.2 cannot be differentiated as they are (their blocks add residuals in place
    after saving them), even on ComfyUI's training paths; under private_saved_tensors they can, and on a
    model without in-place updates (the SD1.5 UNet) the gradient is the same with and without."""
    def grad_of_model(patcher, shape, context, wrap):
        model = patcher.model
        autograd_nodes.autograd_safe_(model)
        e = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        with wrap(), autograd_nodes.comfy_training_paths():
            out = model.apply_model(e, torch.tensor([0.9]), c_crossattn=context[0], **context[1])
        return torch.autograd.grad(out.square().sum(), e)[0]

    flux = tiny_model_patcher(family=family)
    [[context, extra]] = flux_conds(family, seed=1)
    flux_ctx, flux_shape = (context, {"y": extra["pooled_output"]}), (1, LATENT_CHANNELS[family], 8, 8)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        grad_of_model(flux, flux_shape, flux_ctx, contextlib.nullcontext)
    assert torch.isfinite(grad_of_model(flux, flux_shape, flux_ctx, private_saved_tensors)).all()
    unet = tiny_model_patcher()
    unet_ctx = (torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {})
    torch.testing.assert_close(grad_of_model(unet, (1, 4, 16, 16), unet_ctx, private_saved_tensors),
                               grad_of_model(unet, (1, 4, 16, 16), unet_ctx, contextlib.nullcontext))


def schema_defaults(node) -> dict:
    """{input id: default} of a V3 node, as the canvas fills a fresh node."""
    return {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}


def test_default_objective_gradient_and_first_step_are_renos(comfy_inprocess, reno, reward_nodes, autograd_nodes):
    """The nodes' defaults against one ReNO step written out as ExplainableML/ReNO does it
    (training/trainer.py, training/optim.py, rewards/clip.py, arguments.py): loss
    0.01 * (100 - exp(logit_scale) * cos) + 0.01 * (0.5 |e|^2 - (d - 1) log |e|), backward,
    clip_grad_norm_(0.1), SGD(lr 5, momentum 0.9, nesterov). The generator is the model's one-step
    x0 (what ReNO's pipeline computes before decoding), read as raw latents."""
    import math

    import comfy.sample
    import torch.nn.functional as F

    sampler_defaults = schema_defaults(reno.LatentCLIPRenoSampler)
    reward_defaults = schema_defaults(reward_nodes.LatentCLIPRewardPrompt)
    renos = {"iterations": 50, "lr": 5.0, "grad_clip": 0.1, "reg_weight": 0.01, "momentum": 0.9}
    assert {k: sampler_defaults[k] for k in renos} == renos and reward_defaults["weight"] == 0.01
    all_in_one = schema_defaults(reno.LatentCLIPReno)
    assert (all_in_one["iterations"], all_in_one["lr"]) == (50, 5.0)

    model = tiny_model_patcher("eps", seed=2)
    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    positive, _ = conds(seed=3)
    prompt, seed = "a red apple", 7
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    noise = comfy.sample.prepare_noise(latent["samples"], seed)  # what the all-in-one node draws

    # one ReNO step, by hand
    base, clip = model.model, lclip.model.clip
    ms = base.model_sampling
    with torch.inference_mode(False):
        autograd_nodes.autograd_safe_(base)
        autograd_nodes.autograd_safe_(clip)
        sigma, cond = ms.sigma_max.clone().reshape(1), positive[0][0].clone()
        text = F.normalize(clip.encode_text([prompt]), dim=-1).detach()

        def one_step(e):
            x = ms.noise_scaling(sigma, e, torch.zeros_like(e), max_denoise=True)
            return base.process_latent_out(base.apply_model(x, sigma, c_crossattn=cond))

        def clip_loss(e):  # rewards/clip.py CLIPLoss.compute_loss, features normalised by BaseRewardLoss
            features = F.normalize(clip.encode_latents(one_step(e), normalize=False), dim=-1)
            return 100 - (features @ text.T).mean() * clip.logit_scale.exp()

        latents = torch.nn.Parameter(noise.clone(), requires_grad=True)
        optimizer = torch.optim.SGD([latents], lr=5.0, nesterov=True, momentum=0.9)
        latent_dim = math.prod(latents.shape[1:])
        optimizer.zero_grad()
        total_loss = clip_loss(latents) * 0.01
        first_loss = total_loss.item()
        latent_norm = torch.linalg.vector_norm(latents).to(torch.float32)
        total_loss = total_loss + 0.01 * (0.5 * latent_norm ** 2 - (latent_dim - 1) * torch.log(latent_norm))
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(latents, 0.1)
        clipped = latents.grad.detach().clone()
        optimizer.step()
        stepped = latents.detach().clone()
        second_loss = (clip_loss(stepped) * 0.01).item()
        expected_out = one_step(stepped).detach()
    assert second_loss < first_loss, "test setup: the first step must improve, so the best iterate is the stepped one"

    # the ReNO sampler built from its nodes' defaults
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, prompt, reward_defaults["weight"]).result[0]
    options = {k: sampler_defaults[k] for k in ("lr", "grad_clip", "reg_weight", "momentum")}
    sampler = reno.LatentCLIPRenoSampler.execute(reward, iterations=2, **options).result[0]
    out = guided_sample(model, sampler, positive, noise, latent["samples"])
    result = sampler.last_result
    assert result.best_iteration.item() == 1
    torch.testing.assert_close(result.history[:, 0], torch.tensor([first_loss, second_loss]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((noise - result.best_noise) / (5.0 * (1 + 0.9)), clipped, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.best_noise, stepped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4)
    # the all-in-one node with its defaults (2 evaluations to see the first step)
    with torch.inference_mode():
        node_out = reno.LatentCLIPReno.execute(model, positive, lclip, prompt, latent, seed=seed, iterations=2,
                                               lr=all_in_one["lr"], steps=all_in_one["steps"],
                                               cfg=all_in_one["cfg"]).result[0]
    torch.testing.assert_close(node_out["samples"], expected_out, rtol=1e-4, atol=1e-4)


def test_a_nan_iterate_is_skipped_with_a_warning_on_the_node_and_a_nan_start_is_an_error(comfy_inprocess, reno, reward_nodes):
    """The UNet (through ComfyUI's own unet wrapper hook) returns NaN for one sample at one
    evaluation: the run ends with the best finite iterate, the output is finite, and the warning is
    on the node text above the progress line; NaN at the first evaluation is a clear error."""
    import comfy.samplers

    def nan_at(calls: set[int]):
        seen = []

        def wrapper(apply_model, args):
            out = apply_model(args["input"], args["timestep"], **args["c"])
            seen.append(None)
            if len(seen) - 1 in calls:
                out = out.clone()
                out[1] = float("nan")
            return out
        return wrapper

    lclip = tiny_latent_clip_patcher(comfy_inprocess)
    positive, _ = conds(batch=2)
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a red apple", 1.0).result[0]
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    model = tiny_model_patcher("eps").clone()
    model.set_model_unet_function_wrapper(nan_at({2}))  # evaluation 2 of 4 (the final 1-step sample is call 4)
    sampler = reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=4)
    out = guided_sample(model, sampler, positive, noise)
    result = sampler.last_result
    assert torch.isfinite(out).all() and result.nonfinite.tolist() == [0, 1]
    assert torch.isnan(result.history[2, 1]) and result.best_iteration[1] != 2
    lines = sampler.text.shown.splitlines()
    assert lines[0].startswith("⚠ ReNO: NaN/Inf latents, rewards or gradients") and "{1: 1} of 4" in lines[0]
    assert lines[-1].startswith("ReNO 4/4:")
    model = tiny_model_patcher("eps").clone()
    model.set_model_unet_function_wrapper(nan_at({0}))
    with pytest.raises(ValueError, match=r"first iterate's latent or reward loss is NaN/Inf for batch items \[1\]"):
        guided_sample(model, reno.RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=4), positive, noise)
