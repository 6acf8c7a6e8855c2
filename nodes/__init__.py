"""ComfyUI adapters over ``latent_clip`` (V3 API). Import through the pack, never standalone."""
