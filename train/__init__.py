"""Headless training and evaluation for Latent-CLIP: ``python -m train {encode,fit,eval}``.

Imports :mod:`latent_clip` (never ``nodes/`` or ComfyUI). Every subcommand is a ``main(argv)``
callable from tests; multi-GPU runs use torchrun-style environment variables.
"""
