"""ReNO nodes: optimise the initial noise against Latent-CLIP rewards, never decoding.

* ``LatentCLIPRenoSampler`` is a SAMPLER for ``SamplerCustomAdvanced``: it optimises the noise
  through the guider's one-step x0 prediction (any guider), then samples the best noise with an
  inner sampler; its reward is a LATENT_CLIP_REWARD wire (``nodes/rewards.py``).
* ``LatentCLIPReno`` ("ReNO with this prompt") wires all of it for one prompt.

The loop is ``latent_clip.reno.optimize_noise``; here is the glue: model space -> raw latents
through the model's ``latent_format``, autograd-safe weights and conds once per run (in place,
never copied), ComfyUI's differentiable model paths during the optimisation only, progress,
previews, interrupts and node warnings. Nothing of a run outlives it but
``RenoSampler.last_result`` (best noise/latent and the loss history, a few KB).
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

from . import loaders
from ..latent_clip import rewards
from ..latent_clip.contract import channel_error, describe_latents
from ..latent_clip.reno import RENO, RenoProgress, optimize_noise, private_saved_tensors
from ._autograd import autograd_safe_, clone_tensors_, comfy_training_paths
from ._schema import advanced, search_aliases
from ._ui import NodeText, log
from .loaders import LatentClip
from .rewards import PromptTerm, Reward, build_reward

MEMORY_NOTE = (  # in the iterations tooltip, not in the node's description (its preview in the node library)
    "Memory: one UNet forward+backward at the image size per iteration plus the small Latent-CLIP tower "
    "(measured at 512 px, batch 1, fp32 on the CPU: +3.1 GB over a plain sample's peak for SDXL-Turbo, +1.6 GB "
    "for SD-Turbo, with --use-pytorch-cross-attention; ComfyUI's default CPU attention needs about 2x more); the "
    "diffusion model's weights are used in place, not copied, and nothing is kept between runs. No VAE decode: "
    "the reward reads latents.")


class RenoSampler(comfy.samplers.KSAMPLER):
    """Optimises the noise with ReNO through the guider's one-step x0, then runs ``inner``."""

    def __init__(self, inner: comfy.samplers.KSAMPLER, reward: tuple,
                 iterations: int = RENO.iterations, lr: float = RENO.lr, momentum: float = RENO.momentum,
                 grad_clip: float = RENO.grad_clip, reg_weight: float = RENO.reg_weight,
                 allow_family_mismatch: bool = False):
        super().__init__(inner.sampler_function, inner.extra_options, inner.inpaint_options)
        self.inner, self.reward = inner, tuple(reward)
        self.options = dict(iterations=iterations, lr=lr, momentum=momentum, grad_clip=grad_clip, reg_weight=reg_weight)
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

        with self.text.forward_warnings(), comfy_training_paths():
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
                cfg: float, lr: float, allow_family_mismatch: bool = False) -> dict:
    """ComfyUI's own graph CFGGuider -> BasicScheduler ("simple", denoise 1) -> RandomNoise ->
    SamplerCustomAdvanced, called in code with a :class:`RenoSampler` around euler; returns
    SamplerCustomAdvanced's first output (the sampled LATENT)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": positive} if negative is None else {"positive": positive, "negative": negative})
    guider.set_cfg(cfg if negative is not None else 1.0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).cpu()
    sampler = RenoSampler(comfy.samplers.ksampler("euler"), reward, iterations=iterations, lr=lr,
                          allow_family_mismatch=allow_family_mismatch)
    return SamplerCustomAdvanced.execute(Noise_RandomNoise(seed), guider, sampler, sigmas, latent).result[0]


def _reno_inputs() -> list:
    return [io.Int.Input("iterations", default=RENO.iterations, min=1, max=1000,
                         tooltip="ReNO evaluations (the last is evaluated, not stepped). " + MEMORY_NOTE),
            io.Float.Input("lr", default=RENO.lr, min=0.0, max=100.0, step=0.1,
                           tooltip="SGD learning rate on the noise: 5 at 512 px, ReNO uses 10 at 1024 px.")]


class LatentCLIPRenoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRenoSampler", display_name="ReNO Sampler (Latent-CLIP)", category="latent_clip/reno",
            **search_aliases("reno", "reward", "noise optimization", "optimise noise", "initial noise", "latent clip"),
            description="Connect to SamplerCustomAdvanced: optimises the starting noise until the reward is high "
                        "(ReNO), then samples it with the inner sampler. For eps, v-prediction and flow models.",
            inputs=[Reward.Input("reward", tooltip="Reward terms from the Latent-CLIP Reward nodes."),
                    io.Sampler.Input("sampler", optional=True,
                                     tooltip="Sampler run on the optimised noise (default euler; with 1 step it "
                                             "returns the one-step image that was optimised)."),
                    *_reno_inputs(),
                    advanced(io.Float.Input("grad_clip", default=RENO.grad_clip, min=0.0, max=10.0, step=0.01,
                                            tooltip="Gradient-norm clip per sample, applied to the summed loss "
                                                    "(ReNO: 0.1).")),
                    advanced(io.Float.Input("reg_weight", default=RENO.reg_weight, min=0.0, max=10.0, step=0.001,
                                            tooltip="Weight of the noise-norm regulariser that keeps the noise "
                                                    "Gaussian-looking (ReNO: 0.01, next to reward weights of 0.01).")),
                    advanced(io.Float.Input("momentum", default=RENO.momentum, min=0.0, max=0.999, step=0.01,
                                            tooltip="Nesterov momentum (ReNO: 0.9).")),
                    loaders.override_input()],
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
            **search_aliases("reno", "reward", "noise optimization", "optimise noise", "clip score", "latent clip"),
            description="Optimises the starting noise until Latent-CLIP finds the prompt in the result, then "
                        "samples it. For one-step models (SD-Turbo, SDXL-Turbo).",
            inputs=[io.Model.Input("model", tooltip="A one-step or few-step model (SD-Turbo, SDXL-Turbo, "
                                                     "FLUX-schnell...)."),
                    io.Conditioning.Input("positive", tooltip="The encoded prompt."),
                    LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model of the model's latent family."),
                    io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                    tooltip="Text the reward compares the latent with: link the prompt the text "
                                            "encoder reads."),
                    io.Latent.Input("latent", tooltip="The empty latent to generate into (sets size and batch)."),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                                 tooltip="Seed of the initial noise."),
                    *_reno_inputs(),
                    io.Int.Input("steps", default=1, min=1, max=50,
                                 tooltip="Sampling steps for the final image (the optimisation uses one step)."),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="CFG scale; 1 (off) for turbo models. Above 1 needs negative."),
                    io.Conditioning.Input("negative", optional=True, tooltip="Negative prompt, used when cfg > 1."),
                    loaders.override_input()],
            outputs=[io.Latent.Output(tooltip="The sampled latent from the best noise.")])

    @classmethod
    def execute(cls, model, positive, latent_clip, prompt: str, latent: dict, seed: int, iterations: int,
                lr: float, steps: int, cfg: float, negative=None, allow_family_mismatch: bool = False
                ) -> io.NodeOutput:
        reward = (PromptTerm(rewards.CLIP_SCORE_WEIGHT, latent_clip, prompt.strip()),)
        return io.NodeOutput(reno_sample(model, positive, negative, reward, latent, seed, iterations, steps, cfg, lr,
                                         allow_family_mismatch))


NODES = [LatentCLIPRenoSampler, LatentCLIPReno]
