"""Diffusers one-step / few-step generators from local files, as differentiable callables.

Pipelines run under ``no_grad``, so the denoiser here calls the UNet and the noise-schedule maths
directly, in the k-diffusion view every DDPM-trained UNet shares (sigma = sqrt((1 - a) / a) from
the scheduler's ``alphas_cumprod``, input scaled by 1 / sqrt(sigma^2 + 1)):

1. the first latent is ``noise * scheduler.init_noise_sigma`` as in ReNO's ``RewardStableDiffusion``
   (Euler schedulers with trailing spacing: sigma_max, t = 999; VP schedulers (init sigma 1):
   ``noise * sqrt(sigma^2 + 1)``, the same x_t in the sigma parameterisation);
2. ``eps = unet(x / sqrt(sigma^2 + 1), t, text)`` (optional CFG);
3. ``x0 = x - sigma * eps`` (epsilon models) or ``sqrt(a) x_t - sqrt(1 - a) v`` (v models);
4. few steps: Euler ``x <- x0 + sigma_next * (x - x0) / sigma``.

Outputs are RAW VAE latents (``scaled / vae.config.scaling_factor + shift_factor``), which is
what Latent-CLIP reads. FLUX / SD3 (flow-matching transformers) are not wired here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_pipeline(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32, config: str | None = None):
    """A diffusers text-to-image pipeline from local files only: a diffusers folder
    (``model_index.json``) or a single-file checkpoint (``config``: a diffusers folder holding its
    configs, needed offline). Parameters are frozen; the VAE is kept in fp32 when ``dtype`` is fp16
    (SDXL's VAE overflows in fp16 unless it is the fp16-fix one)."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    if path.is_dir():
        pipe = AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    else:
        kwargs = {"config": config} if config else {}
        try:
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), local_files_only=True, torch_dtype=dtype,
                                                              **kwargs)
        except Exception:  # noqa: BLE001 - not an SDXL checkpoint: try SD 1/2
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True, torch_dtype=dtype,
                                                            **kwargs)
    if not hasattr(pipe, "unet"):
        raise NotImplementedError(f"{type(pipe).__name__}: only UNet pipelines (SD, SD-Turbo, SDXL, SDXL-Turbo) "
                                  "are supported; FLUX/SD3 transformers are not wired yet")
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    if dtype == torch.float16:
        pipe.vae.to(torch.float32)
    return pipe


class Timer:
    """Seconds per section, synchronising CUDA so times are not just launch times."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


@dataclass
class Conditioning:
    """Text conditioning for one prompt, batch 1 (repeated per call). ``uncond`` for CFG."""

    text: torch.Tensor
    added: dict | None = None
    uncond: torch.Tensor | None = None
    uncond_added: dict | None = None


class Generator:
    """A UNet pipeline as tensor maths: conditioning, denoiser, samplers, latent <-> image."""

    def __init__(self, pipe, device="cpu", resolution: int | None = None, timer: Timer | None = None):
        self.pipe, self.unet, self.vae = pipe, pipe.unet, pipe.vae
        self.device = torch.device(device)
        self.dtype = self.unet.dtype
        self.scheduler = pipe.scheduler
        self.resolution = resolution or self.unet.config.sample_size * pipe.vae_scale_factor
        self.timer = timer or Timer(self.device)
        self.alphas = self.scheduler.alphas_cumprod.to(torch.float64)
        self.prediction = self.scheduler.config.get("prediction_type", "epsilon")
        self.sdxl = getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    # -- shapes and latent spaces
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        return (self.unet.config.in_channels, self.resolution // f, self.resolution // f)

    def noise(self, seeds: list[int]) -> torch.Tensor:
        """Unit Gaussian noise, one CPU generator per seed (same noise on every device)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(self.device, self.dtype)

    def to_raw(self, scaled: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        return scaled.float() / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)

    def to_scaled(self, raw: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        return ((raw.float() - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor).to(self.dtype)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in [-1, 1] (differentiable)."""
        return self.vae.decode(raw.to(self.vae.dtype)).sample.float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> raw latents (posterior mean)."""
        return self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean.float()

    # -- conditioning
    @torch.no_grad()
    def condition(self, prompt: str, guidance_scale: float = 0.0, negative_prompt: str | None = None) -> Conditioning:
        cfg = guidance_scale > 1.0
        if self.sdxl:
            text, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
                prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                negative_prompt=negative_prompt)
            proj = self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None \
                else int(pooled.shape[-1])
            size = (self.resolution, self.resolution)
            ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=text.dtype,
                                              text_encoder_projection_dim=proj).to(self.device)
            added = {"text_embeds": pooled, "time_ids": ids}
            uncond_added = {"text_embeds": uncond_pooled, "time_ids": ids} if cfg else None
            return Conditioning(text, added, uncond if cfg else None, uncond_added)
        text, uncond = self.pipe.encode_prompt(prompt, self.device, 1, cfg, negative_prompt)
        return Conditioning(text, None, uncond if cfg else None, None)

    # -- the denoiser
    def timesteps(self, steps: int, denoise: float = 1.0) -> list[int]:
        """UNet timesteps of a ``steps``-step schedule from the scheduler's own spacing (turbo models
        ship ``trailing``, so 1 step is t = 999). ``denoise < 1`` runs the last ``steps`` of a
        ``round(steps / denoise)``-step schedule (ComfyUI's KSampler denoise)."""
        total = max(steps, round(steps / denoise))
        self.scheduler.set_timesteps(total, device="cpu")
        return [int(t) for t in self.scheduler.timesteps[-steps:]]

    def sigma(self, t: int) -> float:
        a = self.alphas[t]
        return float(((1 - a) / a).sqrt())

    def _unet(self, x_in: torch.Tensor, t: int, text: torch.Tensor, added: dict | None) -> torch.Tensor:
        n = x_in.shape[0]
        kwargs = {}
        if added is not None:
            kwargs["added_cond_kwargs"] = {k: v.expand(n, *v.shape[1:]) for k, v in added.items()}
        t_in = torch.full((n,), t, device=self.device, dtype=torch.long)
        return self.unet(x_in, t_in, encoder_hidden_states=text.expand(n, *text.shape[1:]), **kwargs).sample

    def predict_x0(self, x: torch.Tensor, t: int, cond: Conditioning, guidance_scale: float = 0.0) -> torch.Tensor:
        """x0 (model space) from ``x`` at sigma(t) in the sigma parameterisation (x = x0 + sigma eps)."""
        t0 = self.timer.now()
        sigma = self.sigma(t)
        c_in = 1.0 / (sigma ** 2 + 1) ** 0.5
        x_in = (x * c_in).to(self.dtype)
        out = self._unet(x_in, t, cond.text, cond.added)
        if cond.uncond is not None and guidance_scale > 1.0:
            out_u = self._unet(x_in, t, cond.uncond, cond.uncond_added)
            out = out_u + guidance_scale * (out - out_u)
        if self.prediction == "v_prediction":
            x0 = c_in * x_in.float() - sigma * c_in * out.float()
        elif self.prediction == "sample":
            x0 = out.float()
        else:
            x0 = x.float() - sigma * out.float()
        self.timer.add("unet", self.timer.now() - t0)
        return x0

    def one_step(self, cond: Conditioning, timestep: int | None = None, guidance_scale: float = 0.0
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``generate(noise) -> raw x0 latent`` with gradients to the noise (ReNO's generator).

        The UNet backward time is measured by a hook on the noise and added to ``timer['unet']``;
        the hook on the output marks where the reward's backward ends."""
        steps = self.timesteps(1) if timestep is None else [timestep]
        t, scale = steps[0], self.noise_scale(steps)
        timer = self.timer
        marks = {}

        def on_latent_grad(grad):
            marks["latent_grad"] = timer.now()
            timer.add("reward", marks["latent_grad"] - marks.pop("reward_end", marks["latent_grad"]))

        def on_noise_grad(grad):
            timer.add("unet", timer.now() - marks.pop("latent_grad", timer.now()))

        def generate(noise: torch.Tensor) -> torch.Tensor:
            x = noise.view_as(noise)
            if x.requires_grad:
                x.register_hook(on_noise_grad)
            raw = self.to_raw(self.predict_x0(x.float() * scale, t, cond, guidance_scale))
            if raw.requires_grad:
                raw.register_hook(on_latent_grad)
            return raw

        generate.marks = marks  # the reward wrapper sets marks["reward_end"]
        return generate

    def sample(self, x: torch.Tensor, timesteps: list[int], cond: Conditioning, guidance_scale: float = 0.0,
               x0_hook: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
        """Deterministic Euler over ``timesteps`` from ``x`` (sigma space, at sigma(timesteps[0]));
        ``x0_hook(x0_model, sigma)`` may replace each step's x0 prediction (safety guidance).
        Returns the final x0 in model space (scaled latents)."""
        x0 = x
        for i, t in enumerate(timesteps):
            sigma = self.sigma(t)
            with torch.no_grad():
                x0 = self.predict_x0(x, t, cond, guidance_scale)
            if x0_hook is not None:
                x0 = x0_hook(x0, sigma)
            if i + 1 < len(timesteps):
                x = x0 + self.sigma(timesteps[i + 1]) * (x.float() - x0) / sigma
        return x0

    def noise_scale(self, timesteps: list[int]) -> float:
        """What unit noise is multiplied by to start at timesteps[0] (call after :meth:`timesteps`)."""
        init = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        if getattr(self.scheduler, "sigmas", None) is not None and init != 1.0:
            return init   # Euler family: sigma_max (trailing/linspace) or sqrt(sigma_max^2 + 1)
        return (self.sigma(timesteps[0]) ** 2 + 1) ** 0.5

    def start(self, noise: torch.Tensor, timesteps: list[int], clean: torch.Tensor | None = None) -> torch.Tensor:
        """The first sampler state: pure noise (scaled as ReNO does), or a clean
        model-space latent noised to sigma(timesteps[0]) (img2img / ComfyUI denoise)."""
        if clean is None:
            return noise.float() * self.noise_scale(timesteps)
        return clean.float() + self.sigma(timesteps[0]) * noise.float()


def to_pil(images: torch.Tensor) -> list:
    """Images in [-1, 1] (B, 3, H, W) -> PIL images."""
    from PIL import Image

    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in x]
