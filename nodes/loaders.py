"""Loader node: Latent-CLIP weights from models/latent_clip -> LATENT_CLIP wire."""
from __future__ import annotations

from comfy_api.latest import io

from . import _convert

LatentClip = io.Custom("LATENT_CLIP")


class LatentCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = _convert.model_choices()
        return io.Schema(
            node_id="LatentCLIPLoader", display_name="Load Latent-CLIP", category="latent_clip/loaders",
            description="Loads Latent-CLIP weights (official .pt or safetensors export) from models/latent_clip.",
            inputs=[
                io.Combo.Input("model_name", options=choices, default=_convert.default_model(choices),
                               tooltip="Weights file in models/latent_clip (or a latent_clip: folder of "
                                       "extra_model_paths.yaml): an official epoch_*.pt or a .safetensors export. "
                                       "'tinyworld (embedded demo)' is the small model trained on the pack's "
                                       "procedural shapes world: it runs anywhere, but only knows that world "
                                       "(the default only while the folder holds no weights)."),
                io.Combo.Input("dtype", options=_convert.DTYPE_CHOICES, default="auto",
                               tooltip="Weight precision. auto: fp32 on CPU, ComfyUI's text-encoder dtype on GPU."),
                io.Combo.Input("device", options=_convert.DEVICE_CHOICES, default="default",
                               tooltip="default: ComfyUI's device, offloaded when others need the memory. "
                                       "cpu: always run on the CPU."),
            ],
            outputs=[LatentClip.Output(display_name="LATENT_CLIP")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        return _convert.file_choice(model_name, _convert.model_choices(), _convert.FOLDER, "Latent-CLIP weights")

    @classmethod
    def execute(cls, model_name: str, dtype: str, device: str) -> io.NodeOutput:
        return io.NodeOutput(_convert.load_patcher(model_name, dtype, device))


NODES = [LatentCLIPLoader]
