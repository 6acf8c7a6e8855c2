"""Diffusers one-step / few-step generators from local files, as differentiable callables.

Pipelines run under ``no_grad``, so the generators here call the denoiser (UNet or transformer)
and the noise-schedule maths directly. Every family is written in one view: a noisy latent ``x`` at
noise level ``sigma``, a denoiser that predicts the clean latent ``x0``, and the deterministic Euler
step ``x <- x0 + sigma_next * (x - x0) / sigma``, which is the scheduler's own step both for
DDPM-trained UNets in the k-diffusion parameterisation and for flow matching.

- :class:`UNetGenerator` (SD 1/2, SD-Turbo, SDXL, SDXL-Turbo): ``x = x0 + sigma eps`` with
  ``sigma = sqrt((1 - a) / a)`` from the scheduler's ``alphas_cumprod``; input scaled by
  ``1 / sqrt(sigma^2 + 1)``; epsilon, v or sample prediction. The first latent is
  ``noise * scheduler.init_noise_sigma`` as in ReNO's ``RewardStableDiffusion`` (Euler schedulers
  with trailing spacing: sigma_max, t = 999; VP schedulers (init sigma 1): ``noise * sqrt(sigma^2 + 1)``,
  the same x_t in the sigma parameterisation).
- :class:`FluxGenerator` (FLUX.1-schnell / -dev) and :class:`SD3Generator` (SD3 / SD3.5, incl. the
  Turbo variants): flow matching, ``x = (1 - sigma) x0 + sigma noise``, the transformer predicts the
  velocity ``v = noise - x0``, so ``x0 = x - sigma v``; sigma = timestep / 1000 from the pipeline's
  own schedule (FLUX: ``linspace(1, 1/n, n)`` with its resolution shift; SD3: the scheduler's shift).
  FLUX's transformer reads 2x2-packed tokens: latents are packed on the way in and unpacked on the
  way out, so everything outside this module sees ordinary (B, 16, h, w) latents.

Outputs are RAW VAE latents (``scaled / vae.config.scaling_factor + shift_factor``), which is
what Latent-CLIP reads. Time spent in the denoiser (forward and backward) is booked as ``unet`` for
every family.
"""
from __future__ import annotations

import inspect
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latent_clip.factory import DTYPES

MODULES = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def load_pipeline(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32, config: str | None = None):
    """A diffusers text-to-image pipeline from local files only: a diffusers folder
    (``model_index.json``) or a single-file checkpoint plus ``config``, the model's diffusers folder
    holding its configs (its ``model_index.json`` names the pipeline class). Parameters are frozen;
    the VAE is kept in fp32 when ``dtype`` is fp16 (SDXL's VAE overflows in fp16 unless it is the
    fp16-fix one)."""
    import diffusers

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pipeline {path}: no such file or folder (expected a diffusers folder with "
                                "model_index.json, or a single-file checkpoint)")
    if path.is_dir():
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    elif config is None:
        raise ValueError(f"{path} is a single-file checkpoint: offline, diffusers needs its configs; pass "
                         "--pipeline-config FOLDER (the model's diffusers folder without weights: model_index.json, "
                         "unet|transformer/, vae/, text_encoder*/, tokenizer*/, scheduler/ configs)")
    elif not (Path(config) / "model_index.json").is_file():
        raise FileNotFoundError(f"--pipeline-config {config}: no model_index.json there (expected the model's "
                                "diffusers folder; its weights are not needed)")
    else:
        cls = getattr(diffusers, json.loads((Path(config) / "model_index.json").read_text())["_class_name"])
        pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True, torch_dtype=dtype)
    generator_class(pipe)  # unsupported families fail here, before anything is moved to the device
    pipe.set_progress_bar_config(disable=True)
    for name in MODULES:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    if dtype == torch.float16:
        pipe.vae.to(torch.float32)
    return pipe


class Timer:
    """Seconds per section, synchronising CUDA so times are not just launch times.

    :meth:`section` books the time spent inside it minus that of sections opened within it, so
    nested sections never count twice and no section's time is negative. ``marks`` holds named
    instants that autograd hooks read to book backward time (:meth:`DiffusersGenerator.one_step`)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self._inner: list[float] = []  # per open section: seconds spent in the sections nested in it

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def section(self, name: str):
        start = self.now()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = self.now() - start
            self.add(name, elapsed - self._inner.pop())
            if self._inner:
                self._inner[-1] += elapsed

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        self.marks.clear()
        return out


@dataclass
class Conditioning:
    """Text conditioning for one prompt, batch 1 (expanded per call). ``added``: the denoiser's
    other conditioning inputs (SDXL's ``added_cond_kwargs``, FLUX/SD3 pooled projections, ...);
    ``uncond`` / ``uncond_added`` for CFG."""

    text: torch.Tensor
    added: dict | None = None
    uncond: torch.Tensor | None = None
    uncond_added: dict | None = None


class DiffusersGenerator:
    """A pipeline as tensor maths: conditioning, x0 denoiser, samplers, latent <-> image.

    Subclasses give the family's denoiser call (:meth:`_model`) and x0 (:meth:`_denoise`), its noise levels
    (:meth:`timesteps`, :meth:`sigma`), how noise enters (:meth:`noise_scale`, :meth:`start`)
    and :meth:`condition`."""

    def __init__(self, pipe, denoiser: torch.nn.Module, device="cpu", resolution: int | None = None,
                 timer: Timer | None = None):
        self.pipe, self.denoiser, self.vae = pipe, denoiser, pipe.vae
        self.device = torch.device(device)
        self.dtype = denoiser.dtype
        self.scheduler = pipe.scheduler
        self.resolution = resolution or self.native_resolution()
        multiple = self.pixel_multiple()
        if self.resolution % multiple:
            raise ValueError(f"resolution {self.resolution} px: {type(pipe).__name__} needs a multiple of {multiple}")
        self.timer = timer or Timer(self.device)
        self.shift = getattr(self.vae.config, "shift_factor", None) or 0.0  # the VAE's (SD/SDXL have none)

    def native_resolution(self) -> int:
        return self.denoiser.config.sample_size * self.pipe.vae_scale_factor

    def pixel_multiple(self) -> int:
        return self.pipe.vae_scale_factor

    # -- shapes and latent spaces
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        return (self.vae.config.latent_channels, self.resolution // f, self.resolution // f)

    def noise(self, seeds: list[int]) -> torch.Tensor:
        """Unit Gaussian noise, one CPU generator per seed (same noise on every device)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(self.device, self.dtype)

    def to_raw(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.float() / self.vae.config.scaling_factor + self.shift

    def to_scaled(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw.float() - self.shift) * self.vae.config.scaling_factor).to(self.dtype)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in [-1, 1] (differentiable)."""
        return self.vae.decode(raw.to(self.vae.dtype)).sample.float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> raw latents (posterior mean)."""
        return self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean.float()

    # -- family-specific
    def condition(self, prompt: str, guidance_scale: float = 0.0, negative_prompt: str | None = None) -> Conditioning:
        raise NotImplementedError

    def timesteps(self, steps: int, denoise: float = 1.0) -> list[float]:
        """Denoiser timesteps of a ``steps``-step schedule from the pipeline's own spacing (turbo models
        ship ``trailing``, so 1 step is t = 999). ``denoise < 1`` runs the last ``steps`` of a
        ``round(steps / denoise)``-step schedule (ComfyUI's KSampler denoise)."""
        total = max(steps, round(steps / denoise))
        self.scheduler.set_timesteps(total, device="cpu", **self._schedule_kwargs(total))
        return [float(t) for t in self.scheduler.timesteps[-steps:]]

    def _schedule_kwargs(self, total: int) -> dict:
        return {}

    def sigma(self, t) -> float:
        raise NotImplementedError

    def _denoise(self, x: torch.Tensor, t, sigma: float, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """x0 (model space, fp32) from ``x`` at ``sigma``."""
        raise NotImplementedError

    def _model(self, x_in: torch.Tensor, t, text: torch.Tensor, added: dict | None) -> torch.Tensor:
        """The denoiser's raw output (epsilon / v / sample, or velocity) for the batch ``x_in``."""
        raise NotImplementedError

    def _guided(self, x_in: torch.Tensor, t, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """:meth:`_model` on ``cond``, with CFG (``uncond + scale (cond - uncond)``) when ``guidance_scale > 1``."""
        out = self._model(x_in, t, cond.text, cond.added)
        if cond.uncond is None or guidance_scale <= 1.0:
            return out
        out_u = self._model(x_in, t, cond.uncond, cond.uncond_added)
        return out_u + guidance_scale * (out - out_u)

    @staticmethod
    def _expand(tensor: torch.Tensor, n: int) -> torch.Tensor:
        """A batch-1 conditioning tensor as a batch of ``n`` (a view), for :meth:`_model`."""
        return tensor.expand(n, *tensor.shape[1:])

    def noise_scale(self, timesteps: list) -> float:
        """What unit noise is multiplied by to start at timesteps[0] (call after :meth:`timesteps`)."""
        raise NotImplementedError

    def start(self, noise: torch.Tensor, timesteps: list, clean: torch.Tensor | None = None) -> torch.Tensor:
        """The first sampler state: pure noise (scaled as the pipeline does), or a clean
        model-space latent noised to sigma(timesteps[0]) (img2img / ComfyUI denoise)."""
        raise NotImplementedError

    # -- shared samplers
    def predict_x0(self, x: torch.Tensor, t, cond: Conditioning, guidance_scale: float = 0.0) -> torch.Tensor:
        """x0 (model space, fp32) from ``x`` at timestep ``t``; the time is booked as ``unet``."""
        with self.timer.section("unet"):
            return self._denoise(x, t, self.sigma(t), cond, guidance_scale)

    def one_step(self, cond: Conditioning, guidance_scale: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
        """``generate(noise) -> raw x0 latent`` with gradients to the noise (ReNO's generator).

        The denoiser's backward time is measured by a hook on the noise and added to ``timer['unet']``;
        a hook on the output books the reward's backward, from ``timer.marks['reward_end']`` (set by
        the reward's wrapper, :func:`train.benchmarks.runner.timed`), to ``timer['reward']``."""
        steps = self.timesteps(1)
        t, scale, timer = steps[0], self.noise_scale(steps), self.timer

        def on_latent_grad(grad):
            now = timer.marks["latent_grad"] = timer.now()
            timer.add("reward", now - timer.marks.pop("reward_end", now))

        def on_noise_grad(grad):
            now = timer.now()
            timer.add("unet", now - timer.marks.pop("latent_grad", now))

        def generate(noise: torch.Tensor) -> torch.Tensor:
            x = noise.view_as(noise)
            if x.requires_grad:
                x.register_hook(on_noise_grad)
            raw = self.to_raw(self.predict_x0(x.float() * scale, t, cond, guidance_scale))
            if raw.requires_grad:
                raw.register_hook(on_latent_grad)
            return raw

        return generate

    def sample(self, x: torch.Tensor, timesteps: list, cond: Conditioning, guidance_scale: float = 0.0,
               x0_hook: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
        """Deterministic Euler over ``timesteps`` from ``x`` (at sigma(timesteps[0]));
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


class UNetGenerator(DiffusersGenerator):
    """SD 1/2, SD-Turbo, SDXL, SDXL-Turbo: a DDPM-trained UNet in the k-diffusion view."""

    def __init__(self, pipe, device="cpu", resolution: int | None = None, timer: Timer | None = None):
        super().__init__(pipe, pipe.unet, device, resolution, timer)
        self.unet = pipe.unet
        self.alphas = self.scheduler.alphas_cumprod.to(torch.float64)
        self.prediction = self.scheduler.config.get("prediction_type", "epsilon")
        self.sdxl = getattr(self.unet.config, "addition_embed_type", None) == "text_time"

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

    def sigma(self, t: float) -> float:
        a = self.alphas[int(t)]
        return float(((1 - a) / a).sqrt())

    def _model(self, x_in, t, text, added):
        n = x_in.shape[0]
        added = None if added is None else {k: self._expand(v, n) for k, v in added.items()}
        t_in = torch.full((n,), int(t), device=self.device, dtype=torch.long)
        return self.unet(x_in, t_in, encoder_hidden_states=self._expand(text, n), added_cond_kwargs=added).sample

    def _denoise(self, x, t, sigma, cond, guidance_scale):
        c_in = 1.0 / (sigma ** 2 + 1) ** 0.5
        x_in = (x * c_in).to(self.dtype)
        out = self._guided(x_in, t, cond, guidance_scale)
        if self.prediction == "v_prediction":
            return c_in * x_in.float() - sigma * c_in * out.float()
        if self.prediction == "sample":
            return out.float()
        return x.float() - sigma * out.float()

    def noise_scale(self, timesteps: list) -> float:
        init = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        if getattr(self.scheduler, "sigmas", None) is not None and init != 1.0:
            return init   # Euler family: sigma_max (trailing/linspace) or sqrt(sigma_max^2 + 1)
        return (self.sigma(timesteps[0]) ** 2 + 1) ** 0.5

    def start(self, noise, timesteps, clean=None):
        if clean is None:
            return noise.float() * self.noise_scale(timesteps)
        return clean.float() + self.sigma(timesteps[0]) * noise.float()


class FlowMatchGenerator(DiffusersGenerator):
    """Flow-matching transformers: ``x = (1 - sigma) x0 + sigma noise``, velocity prediction."""

    def __init__(self, pipe, device="cpu", resolution: int | None = None, timer: Timer | None = None,
                 max_sequence_length: int = 256):
        super().__init__(pipe, pipe.transformer, device, resolution, timer)
        self.transformer = pipe.transformer
        self.train_steps = self.scheduler.config.num_train_timesteps
        self.max_sequence_length = max_sequence_length  # T5 tokens of a prompt

    def sigma(self, t: float) -> float:
        return float(t) / self.train_steps

    def _denoise(self, x, t, sigma, cond, guidance_scale):
        v = self._guided(x.to(self.dtype), t, cond, guidance_scale)  # velocity: noise - x0
        return x.float() - sigma * v.float()

    def _shift(self, patch: int, max_shift: float) -> float:
        """The pipelines' resolution-dependent schedule shift ``mu`` (FLUX's and SD3's ``calculate_shift``,
        the same code) for ``patch``-sized image tokens; ``max_shift``: the pipeline's default."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c, (h, w) = self.scheduler.config, self.latent_shape[1:]
        return calculate_shift((h // patch) * (w // patch), c.get("base_image_seq_len", 256),
                               c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                               c.get("max_shift", max_shift))

    def noise_scale(self, timesteps: list) -> float:
        return 1.0   # the pipelines start from unit noise whatever the first sigma

    def start(self, noise, timesteps, clean=None):
        if clean is None:
            return noise.float()
        sigma = self.sigma(timesteps[0])
        return (1 - sigma) * clean.float() + sigma * noise.float()


class FluxGenerator(FlowMatchGenerator):
    """FLUX.1 (schnell, dev): T5 + CLIP-pooled conditioning, 2x2-packed latent tokens, optional
    guidance embedding (``embedded_guidance``, for guidance-distilled models such as -dev);
    ``guidance_scale > 1`` is true CFG against ``negative_prompt`` (or the empty prompt)."""

    def __init__(self, pipe, device="cpu", resolution: int | None = None, timer: Timer | None = None,
                 max_sequence_length: int = 256, embedded_guidance: float = 3.5):
        super().__init__(pipe, device, resolution, timer, max_sequence_length)
        self.embedded_guidance = embedded_guidance
        h, w = self.latent_shape[1:]
        self.image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)

    def native_resolution(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def pixel_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2

    @torch.no_grad()
    def condition(self, prompt: str, guidance_scale: float = 0.0, negative_prompt: str | None = None) -> Conditioning:
        def encode(text: str) -> tuple[torch.Tensor, dict]:
            embeds, pooled, text_ids = self.pipe.encode_prompt(text, None, device=self.device,
                                                               max_sequence_length=self.max_sequence_length)
            return embeds, {"pooled_projections": pooled, "txt_ids": text_ids}

        text, added = encode(prompt)
        if guidance_scale <= 1.0:
            return Conditioning(text, added)
        return Conditioning(text, added, *encode(negative_prompt or ""))

    def _schedule_kwargs(self, total: int) -> dict:
        return {"sigmas": np.linspace(1.0, 1 / total, total), "mu": self._shift(2, max_shift=1.15)}

    def _model(self, x, t, text, added):
        n, c, h, w = x.shape
        packed = self.pipe._pack_latents(x, n, c, h, w)
        guidance = torch.full((n,), self.embedded_guidance, device=self.device, dtype=torch.float32) \
            if self.transformer.config.guidance_embeds else None
        out = self.transformer(hidden_states=packed, timestep=torch.full((n,), t / 1000, device=self.device,
                                                                         dtype=x.dtype),
                               guidance=guidance, pooled_projections=self._expand(added["pooled_projections"], n),
                               encoder_hidden_states=self._expand(text, n), txt_ids=added["txt_ids"],
                               img_ids=self.image_ids, return_dict=False)[0]
        return self.pipe._unpack_latents(out, h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor,
                                         self.pipe.vae_scale_factor)


class SD3Generator(FlowMatchGenerator):
    """Stable Diffusion 3 / 3.5 (incl. Large-Turbo): two CLIPs + T5, pooled projections, patchified
    inside the transformer; ``guidance_scale > 1`` is CFG as in the pipeline."""

    def pixel_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.denoiser.config.patch_size

    @torch.no_grad()
    def condition(self, prompt: str, guidance_scale: float = 0.0, negative_prompt: str | None = None) -> Conditioning:
        cfg = guidance_scale > 1.0
        text, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt, None, None, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt, max_sequence_length=self.max_sequence_length)
        return Conditioning(text, {"pooled_projections": pooled}, uncond if cfg else None,
                            {"pooled_projections": uncond_pooled} if cfg else None)

    def _schedule_kwargs(self, total: int) -> dict:
        if not self.scheduler.config.get("use_dynamic_shifting"):
            return {}
        return {"mu": self._shift(self.transformer.config.patch_size, max_shift=1.16)}

    def _model(self, x, t, text, added):
        n = x.shape[0]
        return self.transformer(hidden_states=x, timestep=torch.full((n,), t, device=self.device, dtype=x.dtype),
                                encoder_hidden_states=self._expand(text, n),
                                pooled_projections=self._expand(added["pooled_projections"], n),
                                return_dict=False)[0]


GENERATORS: dict[str, type[DiffusersGenerator]] = {
    "StableDiffusionPipeline": UNetGenerator,
    "StableDiffusionXLPipeline": UNetGenerator,
    "FluxPipeline": FluxGenerator,
    "StableDiffusion3Pipeline": SD3Generator,
}


def generator_class(pipe) -> type[DiffusersGenerator]:
    """The :class:`DiffusersGenerator` for ``pipe``'s family (see :data:`GENERATORS`)."""
    cls = GENERATORS.get(type(pipe).__name__)
    if cls is None:
        raise NotImplementedError(f"{type(pipe).__name__} is not supported; supported pipelines: "
                                  f"{', '.join(sorted(GENERATORS))}")
    return cls


def make_generator(pipe, device="cpu", resolution: int | None = None, timer: Timer | None = None,
                   **options) -> DiffusersGenerator:
    """The generator for ``pipe``'s family; ``options`` go to its constructor (FLUX:
    ``max_sequence_length``, ``embedded_guidance``; SD3: ``max_sequence_length``). ``None`` means the
    family's default; an option the family does not take is dropped with a warning."""
    cls = generator_class(pipe)
    accepted = inspect.signature(cls.__init__).parameters
    given = {k: v for k, v in options.items() if v is not None}
    for name in sorted(set(given) - set(accepted)):
        warnings.warn(f"{name} does not apply to {type(pipe).__name__}; ignored", stacklevel=2)
    return cls(pipe, device, resolution, timer, **{k: v for k, v in given.items() if k in accepted})


def add_pipeline_args(group) -> None:
    """The generator options every benchmark command shares (an argparse parser or group)."""
    group.add_argument("--pipeline", required=True,
                       help="diffusers folder or single-file checkpoint (local): SD/SD-Turbo, SDXL/SDXL-Turbo, "
                            "FLUX.1-schnell/-dev, SD3/SD3.5")
    group.add_argument("--pipeline-config", help="diffusers config folder for a single-file checkpoint")
    group.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    group.add_argument("--device", default="auto")
    group.add_argument("--max-sequence-length", type=int,
                       help="T5 tokens for FLUX / SD3 prompts (default 256, as FLUX-schnell)")
    group.add_argument("--flux-guidance", type=float,
                       help="embedded guidance of guidance-distilled FLUX models such as -dev (default 3.5)")


@dataclass(frozen=True)
class GeneratorSettings:
    """The options of :func:`add_pipeline_args`: which pipeline, in which dtype, on which device."""

    pipeline: str                        # diffusers folder or single-file checkpoint
    pipeline_config: str | None          # the diffusers config folder of a single-file checkpoint
    dtype: str                           # a key of latent_clip.factory.DTYPES
    device: str                          # train.distributed.rank_device's spec
    max_sequence_length: int | None      # T5 tokens (FLUX / SD3; None: the family's)
    flux_guidance: float | None          # FLUX's embedded guidance (None: 3.5)


def load_generator(settings: GeneratorSettings, device: torch.device, resolution: int | None,
                   grad_checkpointing: bool = False) -> DiffusersGenerator:
    """Load ``settings.pipeline`` onto ``device`` and wrap it for its family."""
    pipe = load_pipeline(settings.pipeline, device, DTYPES[settings.dtype], settings.pipeline_config)
    generator = make_generator(pipe, device, resolution, Timer(device),
                               max_sequence_length=settings.max_sequence_length,
                               embedded_guidance=settings.flux_guidance)
    if grad_checkpointing:
        generator.denoiser.enable_gradient_checkpointing()
    return generator
