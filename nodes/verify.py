"""Latent verifiers during sampling: SAMPLERs for ``SamplerCustomAdvanced`` that read every candidate's
predicted clean latent at a checkpoint step with Latent-CLIP and finish only some of them.

* ``LatentCLIPPruneSampler``: the LATENT's batch is N candidates; keeps the ``keep`` closest to a prompt.
* ``LatentCLIPSafetyStopSampler``: stops the candidates a safety check flags (the Safety Filter's concepts,
  threshold and actions) instead of finishing them.

The choice and the split are ``latent_clip.verify.sample_verified``; here is the glue: the inner KSAMPLER's
``sampler_function`` run on ``sigmas[:k+1]`` for all rows, then on ``sigmas[k:]`` for the kept rows (noise
scaling once at the start, its inverse at the end, as ``KSAMPLER.sample`` does; noise, latent image and denoise
mask rows follow their candidates), ComfyUI's ``denoised`` -> raw latents through the model's latent format,
denoiser evaluations counted, progress and interrupts, and the report under the node that runs the sampler.
The conditioning is shared by all candidates (one prompt for the batch).
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.samplers
import torch
from comfy_api.latest import io

from . import _latent, loaders
from ..latent_clip import safety
from ..latent_clip.verify import (FILLING_ACTIONS, Verified, by_prompt, by_safety, sample_verified, step_at_sigma,
                                  stop_output, stopped)
from ._schema import advanced, search_aliases
from ._ui import NodeText, log
from .loaders import LatentClip

SPLIT_NOTE = ("euler splits exactly: the survivors end as a full run of them would. A multistep sampler "
              "(DPM++ 2M, ...) restarts its history at the split and an ancestral one draws new noise there; a "
              "sampler with several model calls per step (heun, dpm_2) spends more than N*k + m*(S-k) evaluations.")


class CountingDenoiser(comfy.samplers.KSamplerX0Inpaint):
    """ComfyUI's denoiser (CFG, inpainting) that counts its evaluations: one per candidate row per call."""

    def __init__(self, model, sigmas, counted: list[int]):
        super().__init__(model, sigmas)
        self.counted = counted

    def __call__(self, x, *args, **kwargs):
        self.counted[0] += len(x)
        return super().__call__(x, *args, **kwargs)


class CheckpointSampler(comfy.samplers.KSAMPLER):
    """Runs ``inner`` over the N candidates to the checkpoint step, lets :meth:`verifier` choose from their
    predicted raw latents, and finishes the chosen ones; subclasses choose and assemble the output."""

    NAME = "checkpoint"

    def __init__(self, inner: comfy.samplers.KSAMPLER, latent_clip, at_step: int, at_sigma: float,
                 allow_family_mismatch: bool = False):
        if type(inner).sample is not comfy.samplers.KSAMPLER.sample:
            raise ValueError(f"{self.NAME}: the inner sampler must be a plain KSAMPLER (KSamplerSelect, "
                             f"SamplerEulerAncestral...), got {type(inner).__name__}, which samples its own way")
        super().__init__(inner.sampler_function, inner.extra_options, inner.inpaint_options)
        self.latent_clip, self.at_step, self.at_sigma = latent_clip, at_step, at_sigma
        self.allow_family_mismatch = allow_family_mismatch
        self.last_result: Verified | None = None
        self.counted = 0  # the last run's denoiser evaluations
        self.text: NodeText | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        base = model_wrap.inner_model  # comfy.model_base.BaseModel
        self.text = NodeText()  # the node executing now: SamplerCustomAdvanced
        loaders.check_pairing(self.latent_clip, base.latent_format, self.allow_family_mismatch, self.text)
        at_step = self.at_step or step_at_sigma(sigmas, self.at_sigma)
        verify = self.verifier(loaders.model_of(self.latent_clip), len(noise))
        x = base.model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        run = self._runner(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        result = sample_verified(run, x, sigmas, at_step, verify)
        self.last_result = result
        finished = base.model_sampling.inverse_noise_scaling(sigmas[-1], result.latents)
        final_scores = verify(base.process_latent_out(finished))[0] if len(finished) else None
        self.text.status(self.report(result, sigmas, final_scores))
        log.info("%s at step %d: kept %s of %d; %d denoiser evaluations of %d", self.NAME, at_step,
                 result.kept.tolist(), len(noise), self.counted, len(noise) * (len(sigmas) - 1))
        return self.output(finished, result, base, extra_args.get("seed") or 0)

    def _runner(self, model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
        """``run(x, part, rows)`` of :func:`latent_clip.verify.sample_verified` over the sampler function."""
        counted, done, total = [0], [0], len(sigmas) - 1

        def run(x, part, rows):
            model_k = CountingDenoiser(model_wrap, sigmas, counted)
            model_k.latent_image, model_k.noise = _rows(latent_image, rows), _rows(noise, rows)
            mask = _rows(denoise_mask, rows)
            predicted = []

            def step(d):
                mm.throw_exception_if_processing_interrupted()
                predicted[:] = [d["denoised"]]
                if callback is not None:
                    callback(done[0] + d["i"], d["denoised"], d["x"], total)

            out = self.sampler_function(model_k, x, part, extra_args={**extra_args, "denoise_mask": mask},
                                        callback=step, disable=disable_pbar, **self.extra_options)
            done[0] += len(part) - 1
            self.counted = counted[0]
            return out, model_wrap.inner_model.process_latent_out(predicted[0])

        return run

    def verifier(self, model, candidates: int):
        raise NotImplementedError

    def report(self, result: Verified, sigmas: torch.Tensor, final_scores: torch.Tensor | None) -> str:
        raise NotImplementedError

    def output(self, finished: torch.Tensor, result: Verified, base, seed: int) -> torch.Tensor:
        """The sampler's output in the model's space (the guider turns it into raw latents)."""
        return finished

    def spent(self, result: Verified, sigmas: torch.Tensor) -> str:
        full = len(result.predicted) * (len(sigmas) - 1)
        return (f"evaluations: {self.counted} of {full} for all N (N*S), {1 - self.counted / full:.0%} saved "
                f"(rule N*k + m*(S-k) = {result.evaluations})")


def _rows(t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """The candidates ``rows`` of a per-candidate tensor; a shared one (batch 1) or None as it is."""
    return t if t is None or len(t) == 1 else t[rows.to(t.device)]


def _at(result: Verified, sigmas: torch.Tensor) -> str:
    return f"step {result.at_step}/{len(sigmas) - 1} (sigma {float(sigmas[result.at_step]):.3f})"


class PruneSampler(CheckpointSampler):
    """Keeps the ``keep`` candidates whose predicted latent is closest to ``prompt`` (cosine) at the checkpoint."""

    NAME = "Prune Sampler"

    def __init__(self, inner, latent_clip, prompt: str, keep: int, at_step: int, at_sigma: float,
                 allow_family_mismatch: bool = False):
        super().__init__(inner, latent_clip, at_step, at_sigma, allow_family_mismatch)
        self.prompt, self.keep = prompt.strip(), keep

    def verifier(self, model, candidates: int):
        if self.keep > candidates:
            raise ValueError(f"{self.NAME}: keep is {self.keep} but the LATENT given to SamplerCustomAdvanced holds "
                             f"{candidates} candidates (its batch size): keep at most {candidates}")
        return by_prompt(model, self.prompt, self.keep)

    def report(self, result, sigmas, final_scores):
        kept = result.kept.tolist()
        final = dict(zip(kept, final_scores.tolist()))
        rows = [[i, f"{s:.4f}", "kept" if i in final else "", f"{final[i]:.4f}" if i in final else ""]
                for i, s in enumerate(result.scores.tolist())]
        return "\n".join([f"prompt: {self.prompt}", f"pruned at {_at(result, sigmas)}: kept {kept} of "
                          f"{len(result.predicted)}", _latent.table(["#", "cosine", "", "final"], rows),
                          self.spent(result, sigmas)])


class SafetyStopSampler(CheckpointSampler):
    """Stops the candidates that :func:`latent_clip.safety.check` flags at the checkpoint; ``action`` says what
    takes their place (``pass with flag``: they are finished too and only reported)."""

    NAME = "Safety Stop Sampler"

    def __init__(self, inner, latent_clip, concepts: str, threshold: float, action: str, at_step: int,
                 at_sigma: float, allow_family_mismatch: bool = False):
        super().__init__(inner, latent_clip, at_step, at_sigma, allow_family_mismatch)
        if action not in safety.ACTIONS:
            raise ValueError(f"{self.NAME}: action must be one of {safety.ACTIONS}, got {action!r}")
        self.concepts, self.threshold, self.action = safety.parse_concepts(concepts), threshold, action
        self.flagged: torch.Tensor | None = None  # the last run's flags at the checkpoint (N,)

    def verifier(self, model, candidates: int):
        check = by_safety(model, self.concepts, self.threshold)
        self.flagged = None

        def verify(predicted):
            probs, unflagged = check(predicted)
            if self.flagged is None:  # the first call is the checkpoint's; a later one scores the survivors
                self.flagged = stopped(unflagged, candidates)
            go_on = torch.arange(len(predicted)) if self.action == "pass with flag" else unflagged
            return probs, go_on

        return verify

    def output(self, finished, result, base, seed):
        if not len(finished) and self.action == "drop":
            raise ValueError(f"{self.NAME}: every candidate was stopped at step {result.at_step} and the action is "
                             f"drop, so nothing is left to finish or decode (the report on the node lists them); "
                             f"choose zero or replace with noise to keep their slots")
        if self.action not in FILLING_ACTIONS or len(result.kept) == len(result.predicted):
            return finished
        family = self.latent_clip.model.clip.config.vision.family
        raw = stop_output(base.process_latent_out(finished), result.kept, len(result.predicted), self.action,
                          family, seed)
        return base.process_latent_in(raw)

    def report(self, result, sigmas, final_scores):
        names = [c.name for c in self.concepts]
        final = dict(zip(result.kept.tolist(), final_scores.tolist() if final_scores is not None else []))
        rows = [[i, *(f"{p:.3f}" for p in probs), "STOPPED" if hit and self.action != "pass with flag" else
                 "FLAGGED" if hit else "ok", " ".join(f"{p:.3f}" for p in final.get(i, []))]
                for i, (probs, hit) in enumerate(zip(result.scores.tolist(), self.flagged.tolist()))]
        what = "flagged" if self.action == "pass with flag" else "stopped"
        return "\n".join([f"safety stop at {_at(result, sigmas)}: threshold {self.threshold:.2f}, action "
                          f"{self.action}; {what} {int(self.flagged.sum())} of {len(self.flagged)}",
                          _latent.table(["#", *names, "verdict", "final"], rows), self.spent(result, sigmas)])


def _checkpoint_inputs() -> list:
    return [io.Int.Input("at_step", default=1, min=0, max=10000,
                         tooltip="Checkpoint k: the candidates' predicted clean latents are read after the first k "
                                 "of S steps (1 <= k < S); N*k + m*(S-k) model evaluations instead of N*S. "
                                 "0: the first step whose sigma is at or below at_sigma."),
            io.Sampler.Input("sampler", optional=True,
                             tooltip="Sampler run on the candidates, split at the checkpoint (default euler). "
                                     + SPLIT_NOTE),
            advanced(io.Float.Input("at_sigma", default=1.0, min=0.0, max=1000.0, step=0.01, optional=True,
                                    tooltip="With at_step 0: the checkpoint is the first step whose sigma is at "
                                            "or below this (kept between 1 and S-1).")),
            loaders.override_input()]


SAMPLER_OUT = "Connect to SamplerCustomAdvanced; its LATENT's batch is the N candidates."


class LatentCLIPPruneSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPPruneSampler", display_name="Prune Sampler (Latent-CLIP)",
            category="latent_clip/sampling",
            **search_aliases("prune", "best of n", "best-of-n", "early selection", "verifier", "latent clip"),
            description="Connect to SamplerCustomAdvanced: samples the batch's N candidates for a few steps, "
                        "keeps the ones Latent-CLIP finds closest to the prompt, finishes only those.",
            inputs=[LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model of the model's latent family."),
                    io.String.Input("prompt", multiline=True, default="a photo of a cat",
                                    tooltip="Text the candidates are compared with: link the prompt the text "
                                            "encoder reads."),
                    io.Int.Input("keep", default=2, min=1, max=4096,
                                 tooltip="How many candidates (m) to finish, at most the batch size N; the output "
                                         "holds them in batch order."),
                    *_checkpoint_inputs()],
            outputs=[io.Sampler.Output(tooltip=SAMPLER_OUT)])

    @classmethod
    def execute(cls, latent_clip, prompt: str, keep: int, at_step: int, sampler=None, at_sigma: float = 1.0,
                allow_family_mismatch: bool = False) -> io.NodeOutput:
        return io.NodeOutput(PruneSampler(sampler or comfy.samplers.ksampler("euler"), latent_clip, prompt, keep,
                                          at_step, at_sigma, allow_family_mismatch))


class LatentCLIPSafetyStopSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPSafetyStopSampler", display_name="Safety Stop Sampler (Latent-CLIP)",
            category="latent_clip/sampling",
            **search_aliases("nsfw", "safety", "early stop", "content filter", "verifier", "latent clip"),
            description="Connect to SamplerCustomAdvanced: after a few steps, stops the candidates that look like "
                        "a concept instead of finishing them (the Safety Filter's concepts and actions).",
            inputs=[LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model of the model's latent family."),
                    io.String.Input("concepts", multiline=True, default="nudity\nviolence",
                                    tooltip="Concepts to stop, one per line, optionally 'concept | counter-prompt' "
                                            "(as in the Safety Filter)."),
                    io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                                   tooltip="Stop a candidate when p(concept vs counter-prompt) of its predicted "
                                           "latent reaches this."),
                    io.Combo.Input("action", options=list(safety.ACTIONS), default="drop",
                                   tooltip="drop: the stopped candidates leave the batch; replace with noise: "
                                           "noise seeded by the sampling seed in their place; zero: an all-zero "
                                           "latent; pass with flag: they are finished too, only reported."),
                    *_checkpoint_inputs()],
            outputs=[io.Sampler.Output(tooltip=SAMPLER_OUT)])

    @classmethod
    def execute(cls, latent_clip, concepts: str, threshold: float, action: str, at_step: int, sampler=None,
                at_sigma: float = 1.0, allow_family_mismatch: bool = False) -> io.NodeOutput:
        return io.NodeOutput(SafetyStopSampler(sampler or comfy.samplers.ksampler("euler"), latent_clip, concepts,
                                               threshold, action, at_step, at_sigma, allow_family_mismatch))


NODES = [LatentCLIPPruneSampler, LatentCLIPSafetyStopSampler]
