"""Rewards for ReNO as a LATENT_CLIP_REWARD wire: a tuple of weighted terms, one small type per
kind of term, each turned into a reward on raw VAE latents by :func:`build_reward`, and the four
nodes that build the wire (prompt, avoid concepts, pixel CLIP for comparisons, combine)."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io
from torch import nn

from . import loaders
from ..latent_clip import rewards, safety
from ..latent_clip.fields import check_texts, finite
from ..latent_clip.reno import RENO
from ._autograd import autograd_safe_
from ._schema import search_aliases
from ._ui import NodeText
from .loaders import OPEN_CLIP_FOLDER, LatentClip

Reward = io.Custom("LATENT_CLIP_REWARD")
NO_OPEN_CLIP = "(no weights in models/open_clip)"  # the only choice while that folder is empty


@dataclass(frozen=True)
class PromptTerm:
    """Latent-CLIP alignment with ``prompt`` (ReNO's CLIPScore loss); ``latent_clip`` the wire."""

    kind = "prompt"  # a class attribute (not a field): the term's name in the summed reward
    weight: float
    latent_clip: object
    prompt: str

    def build(self, latent_format, allow_mismatch: bool, text: NodeText) -> rewards.RewardFn:
        model = loaders.paired_model(self.latent_clip, latent_format, allow_mismatch, text)
        return rewards.latent_alignment(model, self.prompt)


@dataclass(frozen=True)
class AvoidTerm:
    """Latent-CLIP concept loss for ``concepts`` (one per line, as in the safety filter)."""

    kind = "avoid"
    weight: float
    latent_clip: object
    concepts: str

    def build(self, latent_format, allow_mismatch: bool, text: NodeText) -> rewards.RewardFn:
        model = loaders.paired_model(self.latent_clip, latent_format, allow_mismatch, text)
        return rewards.latent_avoid(model, self.concepts)


@dataclass(frozen=True)
class PixelTerm:
    """ReNO's pixel CLIPScore for comparisons: ComfyUI ``vae`` decode, then an open_clip ``clip``
    (normal, non-inference tensors) with its ``tokenizer``."""

    kind = "pixel"
    weight: float
    vae: object
    clip: nn.Module
    tokenizer: object
    prompt: str

    def build(self, latent_format, allow_mismatch: bool, text: NodeText) -> rewards.RewardFn:
        vae = self.vae
        mm.load_models_gpu([vae.patcher], force_full_load=True)
        autograd_safe_(vae.first_stage_model)

        def decode(z):  # raw latents -> [-1, 1] images, with gradient (VAE.decode has none)
            return vae.first_stage_model.decode(z.to(vae.device, vae.vae_dtype)).float()

        return rewards.pixel_alignment(self.clip, self.tokenizer, self.prompt, decode)


def build_reward(terms: tuple, latent_format, allow_mismatch: bool = False,
                 text: NodeText | None = None) -> rewards.RewardFn:
    """The weighted sum of ``terms`` on raw latents of a model with ``latent_format`` (each term's
    ``build`` checks its pairing, loads its model autograd-safe). Call under ``inference_mode(False)``."""
    text = text or NodeText()
    named = {f"{i}:{t.kind}": t for i, t in enumerate(terms)}
    return rewards.weighted_sum({n: t.build(latent_format, allow_mismatch, text) for n, t in named.items()},
                                {n: t.weight for n, t in named.items()})


WEIGHT_TIP = (f"Weight of this term in the summed loss. {rewards.CLIP_SCORE_WEIGHT} (default) is ReNO's CLIPScore "
              f"weight: with the noise-norm regulariser at {RENO.reg_weight} that is ReNO's objective. The gradient "
              "is clipped after the terms and the regulariser are summed, so larger weights loosen the hold on the "
              "noise norm (the regulariser is one of the terms).")
CHAIN_TIP = "Optional reward to add this term to (chain reward nodes to combine them)."


def chained(reward: tuple | None, term) -> io.NodeOutput:
    """The node output of a chainable reward node: the incoming ``reward`` wire's terms, then ``term``."""
    return io.NodeOutput((*(reward or ()), term))


class LatentCLIPRewardPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardPrompt", display_name="Latent-CLIP Reward: Prompt", category="latent_clip/reno",
            **search_aliases("reward", "clip reward", "clip score", "reno", "latent clip"),
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
        check_texts(prompt, "prompt")  # bad text fails here, before sampling
        return chained(reward, PromptTerm(finite(weight, "weight"), latent_clip, prompt.strip()))


class LatentCLIPRewardAvoid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardAvoid", display_name="Latent-CLIP Reward: Avoid Concepts",
            **search_aliases("reward", "negative reward", "nsfw", "safety", "reno", "latent clip"),
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
        safety.parse_concepts(concepts)  # bad concepts fail here, before sampling
        return chained(reward, AvoidTerm(finite(weight, "weight"), latent_clip, concepts))


class LatentCLIPRewardPixelCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loaders.register_model_folder(OPEN_CLIP_FOLDER, folder_paths.supported_pt_extensions)
        files = folder_paths.get_filename_list(OPEN_CLIP_FOLDER)
        return io.Schema(
            node_id="LatentCLIPRewardPixelCLIP", display_name="Pixel CLIP Reward (decode, for comparison)",
            **search_aliases("reward", "clip reward", "clip score", "open clip", "reno"),
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
        return loaders.file_choice(clip_name, folder_paths.get_filename_list(OPEN_CLIP_FOLDER), OPEN_CLIP_FOLDER,
                                   "open_clip weights")

    @classmethod
    def execute(cls, vae, clip_name: str, architecture: str, prompt: str, weight: float, reward=None) -> io.NodeOutput:
        check_texts(prompt, "prompt")
        finite(weight, "weight")
        clip, tokenizer = loaders.load_open_clip(architecture,
                                                 folder_paths.get_full_path_or_raise(OPEN_CLIP_FOLDER, clip_name))
        return chained(reward, PixelTerm(weight, vae, clip, tokenizer, prompt.strip()))


class LatentCLIPRewardCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPRewardCombine", display_name="Latent-CLIP Reward: Combine", category="latent_clip/reno",
            **search_aliases("reward", "combine rewards", "sum rewards", "reno", "latent clip"),
            description="Sums two rewards (all their weighted terms).",
            inputs=[Reward.Input("reward_a", tooltip="First reward."), Reward.Input("reward_b", tooltip="Second reward.")],
            outputs=[Reward.Output(display_name="reward", tooltip="All terms of both rewards.")])

    @classmethod
    def execute(cls, reward_a, reward_b) -> io.NodeOutput:
        return io.NodeOutput((*reward_a, *reward_b))


NODES = [LatentCLIPRewardPrompt, LatentCLIPRewardAvoid, LatentCLIPRewardPixelCLIP, LatentCLIPRewardCombine]
