"""Latent safety guidance: a GUIDER that steers multi-step sampling away from concepts.

At each step inside a sigma window, the CFG prediction of the clean latent x0 is moved down the
gradient of Latent-CLIP's "avoid these concepts" loss (``latent_clip.rewards.step_away``). The
gradient is taken w.r.t. x0 only, through the Latent-CLIP tower: no UNet backward, no decode.
The Latent-CLIP must read the model's latent family (``nodes.loaders.check_pairing``).
"""
from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from . import loaders
from ..latent_clip import rewards, safety
from ._schema import advanced, search_aliases
from ._ui import NodeText
from .loaders import LatentClip


class AvoidGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose x0 prediction takes a guidance step away from ``concepts``."""

    def __init__(self, model_patcher, latent_clip, concepts: str, strength: float, start_percent: float,
                 end_percent: float):
        super().__init__(model_patcher)
        self.latent_clip, self.concepts, self.strength = latent_clip, concepts, strength
        self.window = (start_percent, end_percent)
        self.loss, self.last_losses = None, []

    def sample(self, *args, **kwargs):
        self.loss, self.last_losses = None, []  # rebuilt once per run, on the model's device
        return super().sample(*args, **kwargs)

    def _active(self, sigma: float) -> bool:
        ms = self.model_patcher.get_model_object("model_sampling")
        high, low = (float(ms.percent_to_sigma(p)) for p in self.window)
        return self.strength > 0 and low <= sigma <= high

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        x0 = super().predict_noise(x, timestep, model_options, seed)
        if not self._active(float(timestep.max())):
            return x0
        if self.loss is None:
            with torch.inference_mode(False):
                self.loss = rewards.latent_avoid(loaders.model_of(self.latent_clip, autograd=True), self.concepts)
        to_raw = self.inner_model.process_latent_out  # model space -> raw VAE latents, per latent_format
        guided, loss = rewards.step_away(x0, lambda z: self.loss(to_raw(z)), self.strength)
        self.last_losses.append(loss.float().cpu())
        return guided


class LatentCLIPAvoidGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPAvoidGuider", display_name="Latent-CLIP Safety Guider", category="latent_clip/guidance",
            **search_aliases("nsfw", "safety", "safe guidance", "negative guidance", "steer away", "latent clip"),
            description="CFG guider for SamplerCustomAdvanced that, inside a sigma window, moves each step's "
                        "predicted clean latent away from the given concepts along the gradient of Latent-CLIP's "
                        "concept loss. Never decodes. Cost per guided step: one Latent-CLIP forward+backward "
                        "(a few % of a UNet step); memory: the Latent-CLIP tower's activations only.",
            inputs=[io.Model.Input("model", tooltip="The diffusion model."),
                    io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                    io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, tooltip="CFG scale."),
                    LatentClip.Input("latent_clip", tooltip="A Latent-CLIP model of the model's latent family."),
                    io.String.Input("concepts", multiline=True, default="nudity\nviolence",
                                    tooltip="One concept per line: 'name' or 'name | counter-prompt'."),
                    io.Float.Input("strength", default=rewards.GUIDANCE_STRENGTH, min=0.0, max=2.0, step=0.01,
                                   tooltip="Step per sampling step, in units of the latent's RMS, scaled by the "
                                           "probability of the concepts (so it fades once they are gone). 0 = off."),
                    advanced(io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                                            tooltip="Start of the guided window, as a fraction of the schedule "
                                                    "(0 = first, noisiest step).")),
                    advanced(io.Float.Input("end_percent", default=0.8, min=0.0, max=1.0, step=0.01,
                                            tooltip="End of the guided window (1 = last step).")),
                    loaders.override_input()],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced.")])

    @classmethod
    def execute(cls, model, positive, negative, cfg: float, latent_clip, concepts: str, strength: float,
                start_percent: float, end_percent: float, allow_family_mismatch: bool = False) -> io.NodeOutput:
        safety.parse_concepts(concepts)  # bad concepts fail here, before sampling
        loaders.check_pairing(latent_clip, model.get_model_object("latent_format"), allow_family_mismatch, NodeText())
        guider = AvoidGuider(model, latent_clip, concepts, strength, start_percent, end_percent)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


NODES = [LatentCLIPAvoidGuider]
