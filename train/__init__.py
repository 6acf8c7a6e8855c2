"""Headless training and evaluation for Latent-CLIP: ``python -m train {encode,fit,eval,bench,tinyworld}``.

Three parts over one library (:mod:`latent_clip`; never ``nodes/`` or ComfyUI): the trainer (this package's
modules), the generation benchmarks (:mod:`train.benchmarks`) and the tiny-world study
(:mod:`train.tinyworld`). The two others use the trainer only through the names below, never its modules,
and never each other (``tests/test_repository.py`` checks it). Every subcommand is a ``main(argv)`` callable
from tests; multi-GPU runs use torchrun-style environment variables.
"""
from .data import ImageTransform, SafetensorsShard, expand_shards, folder_rows, write_latent_shard, write_sizes, \
    write_tar
from .distributed import DistEnv
from .encode import main as encode_command
from .evaluate import load_classnames, main as eval_command
from .main import fit
from .params import FitConfig

__all__ = ["DistEnv", "FitConfig", "ImageTransform", "SafetensorsShard", "encode_command", "eval_command",
           "expand_shards", "fit", "folder_rows", "load_classnames", "write_latent_shard", "write_sizes", "write_tar"]
