"""ReNO nodes: optimise the initial noise against Latent-CLIP rewards, never decoding.

* ``LatentCLIPRenoSampler`` is a SAMPLER for ``SamplerCustomAdvanced``: it optimises the noise
  through the guider's one-step x0 prediction (any guider: CFG, basic, ours), then samples the
  best noise with an inner sampler (1-step or few-step).
* ``LatentCLIPRewardPrompt`` / ``LatentCLIPRewardAvoid`` / ``LatentCLIPRewardCombine`` build a
  LATENT_CLIP_REWARD wire: a tuple of weighted terms, evaluated on raw VAE latents.
  ``LatentCLIPRewardPixelCLIP`` adds ReNO's pixel path (decode + open_clip) for comparisons.
* ``LatentCLIPReno`` ("ReNO with this prompt") wires all of it for one prompt.

The loop itself is ``latent_clip.reno.optimize_noise``; here is only the ComfyUI glue:
model space -> raw latents through the model's ``latent_format``, the pairing rule
(``latent_clip.check_family``: a Latent-CLIP of another latent family is an error unless
``allow_family_mismatch``), autograd-safe weights once per run (ComfyUI loads weights as
inference tensors; made usable in place, never copied), progress, previews, interrupts and the
warnings shown on the node (``nodes._ui``). Defaults are ReNO's objective
(``latent_clip.reno.RENO`` and ``latent_clip.rewards.CLIP_SCORE_WEIGHT``).

Nothing of a run outlives it but ``RenoSampler.last_result`` (best noise/latent and the loss
history, a few KB): the reward closures and the loop's autograd graphs are released when the
sampler returns, and the weights keep their own storage.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io
from torch import nn

from . import _convert
from ..latent_clip import rewards
from ..latent_clip.contract import channel_error, check_family, describe_latents
from ..latent_clip.reno import RENO, RenoProgress, optimize_noise, private_saved_tensors
from ._ui import NodeText
from .loaders import LatentClip

Reward = io.Custom("LATENT_CLIP_REWARD")
log = logging.getLogger(__name__)

MEMORY_NOTE = (
    "Memory: one UNet forward+backward at the image size per iteration plus the small Latent-CLIP tower "
    "(measured at 512 px, batch 1, fp32 on the CPU: +3.1 GB over a plain sample's peak for SDXL-Turbo, +1.6 GB "
    "for SD-Turbo, with --use-pytorch-cross-attention; ComfyUI's default CPU attention needs about 2x more); the "
    "diffusion model's weights are used in place, not copied, and nothing is kept between runs. No VAE decode: "
    "the reward reads latents.")
OVERRIDE = "allow_family_mismatch"
OVERRIDE_TIP = ("Run even when the Latent-CLIP was trained on another VAE's latents than the diffusion model makes "
                "(an experiment: its rewards then read an unknown latent space). Off: such a pairing is an error.")


OPEN_CLIP_FOLDER = "open_clip"
NO_OPEN_CLIP = "(no weights in models/open_clip)"  # the only choice while that folder is empty


@dataclass(frozen=True)
class RewardTerm:
    """One weighted term of a LATENT_CLIP_REWARD: ``kind`` "prompt" (Latent-CLIP alignment, ReNO's
    CLIPScore loss), "avoid" (Latent-CLIP concept loss) or "pixel" (VAE decode + open_clip
    CLIPScore, for comparisons); ``text`` the prompt or the concept lines. ``source`` is the
    LATENT_CLIP wire (a ModelPatcher), or for "pixel" a :class:`PixelClip`."""

    kind: str
    weight: float
    source: object
    text: str


@dataclass(frozen=True)
class PixelClip:
    vae: object        # comfy.sd.VAE
    clip: nn.Module    # open_clip CLIP, normal (non-inference) tensors
    tokenizer: object


def register_open_clip_folder() -> None:
    import os

    import folder_paths
    if OPEN_CLIP_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(OPEN_CLIP_FOLDER, os.path.join(folder_paths.models_dir, OPEN_CLIP_FOLDER))
        paths, _ = folder_paths.folder_names_and_paths[OPEN_CLIP_FOLDER]
        folder_paths.folder_names_and_paths[OPEN_CLIP_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def load_open_clip(arch: str, path: str | None) -> tuple[nn.Module, object]:
    """An open_clip model from a local file (never downloads), as normal tensors on ComfyUI's device."""
    import open_clip
    device = mm.get_torch_device()
    dtype = torch.float32 if mm.is_device_cpu(device) else torch.float16
    with torch.inference_mode(False):
        model = open_clip.create_model(arch, pretrained=path, device=device, precision="fp32")
    return model.to(dtype).eval().requires_grad_(False), open_clip.get_tokenizer(arch)


def pixel_reward(source: PixelClip, prompt: str) -> rewards.RewardFn:
    vae = source.vae
    mm.load_models_gpu([vae.patcher], force_full_load=True)
    autograd_safe_(vae.first_stage_model)

    def decode(z):  # raw latents -> [-1, 1] images, with gradient (VAE.decode has none)
        return vae.first_stage_model.decode(z.to(vae.device, vae.vae_dtype)).float()

    return rewards.pixel_alignment(source.clip, source.tokenizer, prompt, decode)


def autograd_safe_(module: nn.Module) -> int:
    """Make ``module``'s inference-tensor parameters and buffers usable by autograd, in place and
    without copying: each is replaced by a normal tensor on the same storage, and the module is
    frozen. (ComfyUI loads weights under inference mode, and autograd refuses to save inference
    tensors for backward.) Tensor subclasses (quantised weights) are cloned instead. Call once per
    run; returns how many tensors were replaced."""
    replaced = 0
    with torch.inference_mode(False):
        for m in module.modules():
            for tensors, wrap in ((m._parameters, lambda t: nn.Parameter(t, requires_grad=False)),
                                  (m._buffers, lambda t: t)):
                for key, t in tensors.items():
                    if t is not None and t.is_inference():
                        tensors[key] = wrap(_normal_view(t))
                        replaced += 1
    module.requires_grad_(False)
    return replaced


def _normal_view(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor on ``t``'s storage (a clone for tensor subclasses). Call outside inference mode."""
    data = t.data if isinstance(t, nn.Parameter) else t
    if type(data) is not torch.Tensor:
        return data.clone()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.shape,
                                                               t.stride())


def clone_tensors_(obj):
    """Clone every tensor inside nested conds (dicts/lists), in place where possible, so none is an
    inference tensor (what ComfyUI's TrainSampler does with ``process_cond_list``)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = clone_tensors_(v)
    elif isinstance(obj, list):
        obj[:] = [clone_tensors_(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(clone_tensors_(v) for v in obj)
    elif hasattr(obj, "cond") and isinstance(getattr(obj, "cond"), torch.Tensor):
        obj.cond = obj.cond.clone()  # comfy.conds.CONDRegular and friends
    return obj


def check_pairing(latent_clip, latent_format, allow_mismatch: bool, text: NodeText) -> None:
    """The pack's pairing rule (:func:`latent_clip.check_family`) between a LATENT_CLIP wire and a
    ComfyUI model's ``latent_format``: raises on a mismatch; an allowed one becomes a node warning."""
    family = latent_clip.model.clip.config.vision.family
    message = check_family(family, latent_format.latent_channels, latent_format.scale_factor,
                           getattr(latent_format, "shift_factor", 0.0), allow_mismatch=allow_mismatch,
                           override=OVERRIDE)
    if message:
        text.warn(f"Latent-CLIP: {message}")


def build_reward(terms: tuple[RewardTerm, ...], latent_format, allow_mismatch: bool = False,
                 text: NodeText | None = None) -> rewards.RewardFn:
    """The weighted sum of ``terms`` on raw latents of a model with ``latent_format``: checks each
    Latent-CLIP's pairing, loads it and makes it autograd-safe. Call under ``inference_mode(False)``."""
    text = text or NodeText()
    fns, weights = {}, {}
    for i, term in enumerate(terms):
        if term.kind == "pixel":
            fns[f"{i}:pixel"], weights[f"{i}:pixel"] = pixel_reward(term.source, term.text), term.weight
            continue
        check_pairing(term.source, latent_format, allow_mismatch, text)
        model = _convert.model_of(term.source)
        autograd_safe_(model)
        make = rewards.latent_alignment if term.kind == "prompt" else rewards.latent_avoid
        fns[f"{i}:{term.kind}"], weights[f"{i}:{term.kind}"] = make(model, term.text), term.weight
    return rewards.weighted_sum(fns, weights)


class RenoSampler(comfy.samplers.KSAMPLER):
    """Optimises the noise with ReNO through the guider's one-step x0, then runs ``inner``."""

    def __init__(self, inner: comfy.samplers.KSAMPLER, reward: tuple[RewardTerm, ...],
                 iterations: int = RENO.iterations, lr: float = RENO.lr, momentum: float = RENO.momentum,
                 grad_clip: float = RENO.grad_clip, reg_weight: float = RENO.reg_weight,
                 allow_family_mismatch: bool = False):
        super().__init__(inner.sampler_function, inner.extra_options, inner.inpaint_options)
        self.inner, self.reward = inner, tuple(reward)
        self.options = dict(iterations=iterations, lr=lr, momentum=momentum, grad_clip=grad_clip,
                            reg_weight=reg_weight)
        self.allow_family_mismatch = allow_family_mismatch
        self.last_result = None
        self.text: NodeText | None = None  # the last run's node text (warnings + progress)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.reward and self.options["iterations"] > 0 and len(sigmas) > 1:
            noise = self.optimise(model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask)
        return self.inner.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                                 disable_pbar)

    def optimise(self, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask) -> torch.Tensor:
        base = model_wrap.inner_model  # comfy.model_base.BaseModel
        fmt = base.latent_format
        self.text = NodeText()  # the node executing now (SamplerCustomAdvanced, or ReNO with this prompt)
        if noise.shape[1] != fmt.latent_channels:
            raise channel_error("ReNO: this diffusion model makes " + describe_latents(
                fmt.latent_channels, fmt.scale_factor, getattr(fmt, "shift_factor", 0.0)) + "; start from an "
                "empty latent of this model", noise.shape[1])
        with torch.inference_mode(False):
            reward = build_reward(self.reward, fmt, self.allow_family_mismatch, self.text)
            replaced = autograd_safe_(base)
            clone_tensors_(model_wrap.conds)
            sigmas, noise, latent_image = sigmas.clone(), noise.clone(), latent_image.clone()
            args = {**extra_args, "denoise_mask": None if denoise_mask is None else denoise_mask.clone()}
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        sigma, max_denoise = sigmas[0], self.max_denoise(model_wrap, sigmas)
        s_in = noise.new_ones(noise.shape[0])

        def generate(e):  # model-space x0 of one step from sigma_max, CFG included
            with private_saved_tensors():
                x = base.model_sampling.noise_scaling(sigma, e, latent_image, max_denoise)
                return model_k(x, sigma * s_in, **args)

        def score(x0):  # raw latents; a pixel term decodes with ComfyUI's VAE, which may write in place too
            with private_saved_tensors():
                return reward(base.process_latent_out(x0))

        with self.text.forward_warnings():
            result = optimize_noise(generate, score, noise, callback=self._progress(model_wrap), **self.options)
        self.last_result = result
        log.info("ReNO: %d iterations in %.1f s (%d weight tensors made autograd-safe); reward loss %s -> %s",
                 len(result.history), result.seconds, replaced, _fmt(result.initial_loss), _fmt(result.best_loss))
        return result.best_noise.to(noise.dtype)

    def _progress(self, model_wrap):
        patcher = model_wrap.model_patcher
        previewer = latent_preview.get_previewer(patcher.load_device, patcher.model.latent_format)
        bar = comfy.utils.ProgressBar(self.options["iterations"])

        def progress(p: RenoProgress) -> None:
            mm.throw_exception_if_processing_interrupted()
            preview = previewer.decode_latent_to_preview_image("JPEG", p.best_latent) if previewer else None
            bar.update_absolute(p.iteration + 1, p.iterations, preview)
            self.text.status(f"ReNO {p.iteration + 1}/{p.iterations}: reward loss {_fmt(p.loss)}, "
                             f"best {_fmt(p.best_loss)}")

        return progress


def _fmt(losses: torch.Tensor) -> str:
    return ", ".join(f"{v:.3f}" for v in losses.tolist())


def reno_sample(model, positive, negative, reward, latent: dict, seed: int, iterations: int, steps: int,
                cfg: float, lr: float, allow_family_mismatch: bool = False, sampler_name: str = "euler") -> dict:
    """What SamplerCustomAdvanced does, with a ReNO sampler and the "simple" schedule."""
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": positive} if negative is None else {"positive": positive, "negative": negative})
    guider.set_cfg(cfg if negative is not None else 1.0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).cpu()
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sampler = RenoSampler(comfy.samplers.ksampler(sampler_name), reward, iterations=iterations, lr=lr,
                          allow_family_mismatch=allow_family_mismatch)
    callback = latent_preview.prepare_callback(model, steps)
    samples = guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=latent.get("noise_mask"),
                            callback=callback, disable_pbar=True, seed=seed)
    out = latent.copy()
    out.pop("downscale_ratio_spacial", None)
    out["samples"] = samples.to(mm.intermediate_device())
    return out


WEIGHT_TIP = (f"Weight of this term in the summed loss. {rewards.CLIP_SCORE_WEIGHT} (default) is ReNO's CLIPScore "
              f"weight: with the noise-norm regulariser at {RENO.reg_weight} that is ReNO's objective. The gradient "
              "is clipped after the terms and the regulariser are summed, so larger weights loosen the hold on the "
              "noise norm (the regulariser is one of the terms).")
CHAIN_TIP = "Optional reward to add this term to (chain reward nodes to combine them)."


class LatentCLIPRewardPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardPrompt", display_name="Latent-CLIP Reward: Prompt", category="latent_clip/reno",
            description="Reward for ReNO: alignment of the latent with a prompt, read by Latent-CLIP without "
                        "decoding (ReNO's CLIPScore loss 100 - logit_scale * cos).",
            inputs=[LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model from Load Latent-CLIP, of the "
                                                             "diffusion model's latent family."),
                    io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                    tooltip="What the image should show (usually the generation prompt)."),
                    io.Float.Input("weight", default=rewards.CLIP_SCORE_WEIGHT, min=-100.0, max=100.0, step=0.001,
                                   tooltip=WEIGHT_TIP),
                    Reward.Input("reward", optional=True, tooltip=CHAIN_TIP)],
            outputs=[Reward.Output(display_name="reward", tooltip="Weighted reward terms for the ReNO nodes.")])

    @classmethod
    def execute(cls, latent_clip, prompt: str, weight: float, reward=None) -> io.NodeOutput:
        return io.NodeOutput((*(reward or ()), RewardTerm("prompt", weight, latent_clip, prompt.strip())))


class LatentCLIPRewardAvoid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardAvoid", display_name="Latent-CLIP Reward: Avoid Concepts",
            category="latent_clip/reno",
            description="Reward for ReNO: penalises latents that Latent-CLIP finds closer to a concept than to its "
                        "counter-prompt (-log p(counter), summed over concepts), without decoding.",
            inputs=[LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model from Load Latent-CLIP."),
                    io.String.Input("concepts", multiline=True, default="nudity\nviolence",
                                    tooltip="One concept per line: 'name' or 'name | counter-prompt' (as in the "
                                            "safety filter node)."),
                    io.Float.Input("weight", default=rewards.CLIP_SCORE_WEIGHT, min=0.0, max=100.0, step=0.001,
                                   tooltip=WEIGHT_TIP + " The concept loss is a logit_scale * cos difference like "
                                                        "CLIPScore, so the same weight pushes as hard."),
                    Reward.Input("reward", optional=True, tooltip=CHAIN_TIP)],
            outputs=[Reward.Output(display_name="reward", tooltip="Weighted reward terms for the ReNO nodes.")])

    @classmethod
    def execute(cls, latent_clip, concepts: str, weight: float, reward=None) -> io.NodeOutput:
        _convert.lines(concepts, "concepts")
        return io.NodeOutput((*(reward or ()), RewardTerm("avoid", weight, latent_clip, concepts)))


class LatentCLIPRewardPixelCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_open_clip_folder()
        import folder_paths
        files = folder_paths.get_filename_list(OPEN_CLIP_FOLDER)
        return io.Schema(
            node_id="LatentCLIPRewardPixelCLIP", display_name="Pixel CLIP Reward (decode, for comparison)",
            category="latent_clip/reno",
            description="ReNO's pixel-space CLIPScore: VAE-decodes every iterate and scores it with an open_clip "
                        "model from models/open_clip. For side-by-side comparisons with the latent reward: the "
                        "decode forward+backward costs more than the UNet step itself and its "
                        "activations dominate memory (~6 GiB at 512 px fp32).",
            inputs=[io.Vae.Input("vae", tooltip="The VAE of the diffusion model (decodes each iterate, with gradient)."),
                    io.Combo.Input("clip_name", options=files or [NO_OPEN_CLIP],
                                   tooltip="open_clip weights in models/open_clip (e.g. open_clip_pytorch_model.bin "
                                           "of laion/CLIP-ViT-L-14-laion2B-s32B-b82K)."),
                    io.String.Input("architecture", default="ViT-L-14",
                                    tooltip="open_clip architecture name of those weights (open_clip.list_models())."),
                    io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                    tooltip="What the image should show."),
                    io.Float.Input("weight", default=rewards.CLIP_SCORE_WEIGHT, min=-100.0, max=100.0, step=0.001,
                                   tooltip=WEIGHT_TIP),
                    Reward.Input("reward", optional=True, tooltip=CHAIN_TIP)],
            outputs=[Reward.Output(display_name="reward", tooltip="Weighted reward terms for the ReNO nodes.")])

    @classmethod
    def validate_inputs(cls, clip_name: str) -> bool | str:
        import folder_paths
        return _convert.file_choice(clip_name, folder_paths.get_filename_list(OPEN_CLIP_FOLDER), OPEN_CLIP_FOLDER,
                                    "open_clip weights")

    @classmethod
    def execute(cls, vae, clip_name: str, architecture: str, prompt: str, weight: float, reward=None) -> io.NodeOutput:
        import folder_paths
        clip, tokenizer = load_open_clip(architecture.strip(),
                                         folder_paths.get_full_path_or_raise(OPEN_CLIP_FOLDER, clip_name))
        term = RewardTerm("pixel", weight, PixelClip(vae, clip, tokenizer), prompt.strip())
        return io.NodeOutput((*(reward or ()), term))


class LatentCLIPRewardCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardCombine", display_name="Latent-CLIP Reward: Combine", category="latent_clip/reno",
            description="Sums two rewards (all their weighted terms).",
            inputs=[Reward.Input("reward_a", tooltip="First reward."), Reward.Input("reward_b", tooltip="Second reward.")],
            outputs=[Reward.Output(display_name="reward", tooltip="All terms of both rewards.")])

    @classmethod
    def execute(cls, reward_a, reward_b) -> io.NodeOutput:
        return io.NodeOutput((*reward_a, *reward_b))


def _reno_inputs() -> list:
    return [io.Int.Input("iterations", default=RENO.iterations, min=1, max=1000,
                         tooltip="ReNO evaluations (the last is evaluated, not stepped). Each costs one UNet "
                                 "forward+backward."),
            io.Float.Input("lr", default=RENO.lr, min=0.0, max=100.0, step=0.1,
                           tooltip="SGD learning rate on the noise: 5 at 512 px, ReNO uses 10 at 1024 px.")]


def override_input() -> io.Boolean.Input:
    return io.Boolean.Input(OVERRIDE, default=False, optional=True, tooltip=OVERRIDE_TIP)


class LatentCLIPRenoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRenoSampler", display_name="ReNO Sampler (Latent-CLIP)", category="latent_clip/reno",
            description="SAMPLER for SamplerCustomAdvanced: optimises the initial noise for the reward through the "
                        "guider's one-step prediction (ReNO: Nesterov SGD, per-sample gradient clipping, noise-norm "
                        "regulariser, best iterate by reward), then samples it with the inner sampler. Works for "
                        "eps, v-prediction and flow models. " + MEMORY_NOTE,
            inputs=[Reward.Input("reward", tooltip="Reward terms from the Latent-CLIP Reward nodes."),
                    io.Sampler.Input("sampler", optional=True,
                                     tooltip="Sampler run on the optimised noise (default euler; with 1 step it "
                                             "returns the one-step image that was optimised)."),
                    *_reno_inputs(),
                    io.Float.Input("grad_clip", default=RENO.grad_clip, min=0.0, max=10.0, step=0.01,
                                   tooltip="Gradient-norm clip per sample, applied to the summed loss (ReNO: 0.1)."),
                    io.Float.Input("reg_weight", default=RENO.reg_weight, min=0.0, max=10.0, step=0.001,
                                   tooltip="Weight of the noise-norm regulariser that keeps the noise Gaussian-"
                                           "looking (ReNO: 0.01, next to reward weights of 0.01)."),
                    io.Float.Input("momentum", default=RENO.momentum, min=0.0, max=0.999, step=0.01,
                                   tooltip="Nesterov momentum (ReNO: 0.9)."),
                    override_input()],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustomAdvanced.")])

    @classmethod
    def execute(cls, reward, iterations: int, lr: float, grad_clip: float, reg_weight: float, momentum: float,
                sampler=None, allow_family_mismatch: bool = False) -> io.NodeOutput:
        inner = sampler or comfy.samplers.ksampler("euler")
        return io.NodeOutput(RenoSampler(inner, reward, iterations=iterations, lr=lr, momentum=momentum,
                                         grad_clip=grad_clip, reg_weight=reg_weight,
                                         allow_family_mismatch=allow_family_mismatch))


class LatentCLIPReno(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPReno", display_name="ReNO with this prompt (Latent-CLIP)", category="latent_clip/reno",
            description="One node: optimise the initial noise so that Latent-CLIP finds the prompt in the result, "
                        "then sample it (1 step for SD-Turbo/SDXL-Turbo, a few for FLUX-schnell). " + MEMORY_NOTE,
            inputs=[io.Model.Input("model", tooltip="A one-step or few-step model (SD-Turbo, SDXL-Turbo, "
                                                     "FLUX-schnell...)."),
                    io.Conditioning.Input("positive", tooltip="The encoded prompt."),
                    LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model of the model's latent family."),
                    io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                    tooltip="Text the reward compares the latent with (usually the same prompt)."),
                    io.Latent.Input("latent", tooltip="The empty latent to generate into (sets size and batch)."),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                                 tooltip="Seed of the initial noise."),
                    *_reno_inputs(),
                    io.Int.Input("steps", default=1, min=1, max=50,
                                 tooltip="Sampling steps for the final image (the optimisation uses one step)."),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="CFG scale; 1 (off) for turbo models. Above 1 needs negative."),
                    io.Conditioning.Input("negative", optional=True, tooltip="Negative prompt, used when cfg > 1."),
                    override_input()],
            outputs=[io.Latent.Output(tooltip="The sampled latent from the best noise.")])

    @classmethod
    def execute(cls, model, positive, latent_clip, prompt: str, latent: dict, seed: int, iterations: int,
                lr: float, steps: int, cfg: float, negative=None, allow_family_mismatch: bool = False
                ) -> io.NodeOutput:
        reward = (RewardTerm("prompt", rewards.CLIP_SCORE_WEIGHT, latent_clip, prompt.strip()),)
        return io.NodeOutput(reno_sample(model, positive, negative, reward, latent, seed, iterations, steps, cfg, lr,
                                         allow_family_mismatch))


NODES = [LatentCLIPRewardPrompt, LatentCLIPRewardAvoid, LatentCLIPRewardPixelCLIP, LatentCLIPRewardCombine,
         LatentCLIPRenoSampler, LatentCLIPReno]
