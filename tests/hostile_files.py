"""Hostile weight files, generated: one builder per attack of the reliability table (README,
"Reliability"). Each builder writes its file into a folder and returns the path to load; the
expected outcome (a clear error, or a clean load) lives with it in :data:`CASES`."""
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import latent_clip
from fixtures import tiny_model
from latent_clip import LatentCLIP, get_model_config

# Bounds, per load, in a process that already imported torch. Before, the attacks cost 3.8 GB / 9 s (numpy
# void bomb), 4.8 GB / 128 s (block 99999) and +1 GB (16,000-token context). Measured over 3 runs on a shared
# 2-core machine: the valid tiny load +24 MB in 0.09..0.15 s; the worst hostile file +17 MB
# (text-context-16000), the slowest 0.16 s.
MEMORY_BOUND = 128 << 20
TIME_BOUND = 5.0

MARKER = "pwned"  # what an exploit would create beside the file if anything in it ran


def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_model().state_dict().items()}


def torch_zip_with_pickle(path: Path, pickled: bytes) -> Path:
    """A torch zip checkpoint whose ``data.pkl`` is ``pickled`` (the rest as torch.save writes it)."""
    buf = io.BytesIO()
    torch.save({}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, pickled if info.filename.endswith("/data.pkl") else src.read(info))
    return path


def numpy_void_bomb(folder: Path) -> Path:
    """Under 1 KB on disk, 3 GB in memory under the old allow-list: ``scalar(dtype('V1000000000'))``
    three times in the optimizer, written opcode by opcode (numpy's pickler would add the data bytes)."""
    dtype = b"cnumpy\ndtype\n" + pickle.dumps("V1000000000", 2)[2:-1] + b"\x89\x88\x87R"  # dtype(spec, False, True)
    scalar = b"cnumpy.core.multiarray\nscalar\n" + dtype + b"\x85R"                     # scalar(dtype)
    pickled = b"\x80\x02}(X\x0a\x00\x00\x00state_dict}X\x09\x00\x00\x00optimizer(" + scalar * 3 + b"lu."
    return torch_zip_with_pickle(folder / "void_bomb.pt", pickled)


class Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def exploit_in_state_dict(folder: Path) -> Path:
    torch.save({"epoch": 1, "state_dict": {"x": Exploit(folder / MARKER)}}, folder / "exploit_state.pt")
    return folder / "exploit_state.pt"


def exploit_in_optimizer(folder: Path) -> Path:
    torch.save({"epoch": 1, "state_dict": tiny_state(), "optimizer": {"state": Exploit(folder / MARKER)}},
               folder / "exploit_optimizer.pt")
    return folder / "exploit_optimizer.pt"


def exploit_legacy_format(folder: Path) -> Path:
    torch.save({"state_dict": {"x": Exploit(folder / MARKER)}}, folder / "exploit_legacy.pt",
               _use_new_zipfile_serialization=False)
    return folder / "exploit_legacy.pt"


def block_99999(folder: Path) -> Path:
    """A tiny export plus one text block numbered 99999: a 100,000-layer model if counted by max index."""
    state = tiny_state()
    state.update({k.replace("resblocks.0.", "resblocks.99999."): v.clone() for k, v in state.items()
                  if k.startswith("transformer.resblocks.0.")})
    torch.save(state, folder / "block_99999.pt")
    return folder / "block_99999.pt"


def sidecar(name: str, edit: Callable[[dict], object]) -> Callable[[Path], Path]:
    """The builder of a tiny export ``<name>.safetensors`` whose sidecar is ``edit(sidecar)`` as JSON, or
    written as it is when ``edit`` returns a str."""
    def build(folder: Path) -> Path:
        path = latent_clip.save_export(tiny_model(), folder / f"{name}.safetensors")
        meta = edit(json.loads(path.with_suffix(".json").read_text()))
        path.with_suffix(".json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
        return path
    return build


def vision(key: str, value) -> Callable[[dict], dict]:
    """A sidecar edit setting ``model_cfg.vision_cfg[key]`` to ``value``."""
    def edit(meta: dict) -> dict:
        meta["model_cfg"]["vision_cfg"][key] = value
        return meta
    return edit


def text_context_16000(folder: Path) -> Path:
    """A text positional embedding of 16,000 tokens (4 MB): its causal mask would be 1 GB."""
    state = tiny_state()
    state["positional_embedding"] = torch.randn(16000, state["positional_embedding"].shape[1]) * 0.01
    torch.save(state, folder / "context_16000.pt")
    return folder / "context_16000.pt"


def stride_0(folder: Path) -> Path:
    """Every tensor of a full-size Latent-ViT-B-8-512 as a stride-0 view of one number: a few KB on
    disk, 150 M parameters once materialised."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LatentCLIP(get_model_config("Latent-ViT-B-8-512")).state_dict().items()}
    torch.save({k: torch.zeros(1).expand(s) if len(s) else torch.zeros(()) for k, s in shapes.items()},
               folder / "stride_0.pt")
    return folder / "stride_0.pt"


def nan_weights(folder: Path) -> Path:
    state = tiny_state()
    state["visual.latent_vit.proj"][0, 0] = float("nan")
    torch.save(state, folder / "nan_weights.pt")
    return folder / "nan_weights.pt"


def empty(folder: Path) -> Path:
    (folder / "empty.pt").write_bytes(b"")
    return folder / "empty.pt"


def truncated(name: str, save: Callable[[Path], object]) -> Callable[[Path], Path]:
    """The builder of the file ``name`` as ``save`` writes it, cut to its first half (a sidecar kept whole)."""
    def build(folder: Path) -> Path:
        save(folder / name)
        truncate(folder / name)
        return folder / name
    return build


def int_keys(folder: Path) -> Path:
    torch.save({i: v for i, v in enumerate(tiny_state().values())}, folder / "int_keys.pt")
    return folder / "int_keys.pt"


def meta_tensors(folder: Path) -> Path:
    torch.save({k: v.to("meta") for k, v in tiny_state().items()}, folder / "meta.pt")
    return folder / "meta.pt"


def safetensors_named_pt(folder: Path) -> Path:
    """A valid export renamed to .pt (with its sidecar): read by content, not refused as a pickle."""
    return latent_clip.save_export(tiny_model(), folder / "renamed.safetensors").rename(folder / "renamed.pt")


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    error: str | None  # regex the one-line error must match; None: the file loads


CASES = {
    "numpy-void-bomb": Case(numpy_void_bomb, r"^refusing to load .*numpy dtype 'V1000000000' refused"),
    "exploit-in-state-dict": Case(exploit_in_state_dict, r"^refusing to load .*nothing in it was run"),
    "exploit-in-optimizer": Case(exploit_in_optimizer, r"^refusing to load .*nothing in it was run"),
    "exploit-legacy-format": Case(exploit_legacy_format, r"^refusing to load .*nothing in it was run"),
    "block-index-99999": Case(block_99999, r"transformer\.resblocks\.\*: block indices run to 99999 over 3 "
                                           r"distinct blocks; expected blocks 0\.\.n-1 with n <= 64"),
    "sidecar-layers-100000": Case(sidecar("layers_100000", vision("layers", 100000)),
                                  r"layers_100000\.json: config .*vision_cfg\.layers is 100000, above the limit of 64"),
    "text-context-16000": Case(text_context_16000, r"context_16000\.pt: .*text_cfg\.context_length is 16000, "
                                                   r"above the limit of 1024"),
    "stride-0-views": Case(stride_0, r"stride_0\.pt: tensor .* \(strides \(0[,)].*\) brings the tensors' data to "
                                     r"more than the file's [\d,]+ bytes: expanded or overlapping views are refused"),
    "nan-weights": Case(nan_weights, r"nan_weights\.pt: tensor visual\.latent_vit\.proj contains NaN or Inf"),
    "empty-file": Case(empty, r"cannot read .*empty\.pt: the file is empty \(0 bytes\)"),
    "truncated-zip": Case(truncated("truncated.pt", lambda p: torch.save(tiny_state(), p)),
                          r"cannot read .*truncated\.pt: truncated or not a PyTorch checkpoint"),
    "truncated-legacy": Case(truncated("truncated_legacy.pt",
                                       lambda p: torch.save(tiny_state(), p, _use_new_zipfile_serialization=False)),
                             r"cannot read .*truncated_legacy\.pt: truncated or not a PyTorch checkpoint"),
    "truncated-safetensors": Case(truncated("truncated.safetensors",
                                            lambda p: latent_clip.save_export(tiny_model(), p)),
                                  r"cannot read .*truncated\.safetensors: not a valid safetensors file"),
    "int-keys": Case(int_keys, r"int_keys\.pt: state dict key 0 is not a string \(int\); expected parameter names"),
    "meta-tensors": Case(meta_tensors, r"meta\.pt: tensor \S+ is a meta strided tensor, expected dense weights with data"),
    "sidecar-list": Case(sidecar("sidecar_list", lambda meta: [meta]),
                         r"sidecar_list\.json: config sidecar must be a JSON object"),
    "sidecar-invalid-json": Case(sidecar("sidecar_bad_json", lambda meta: '{"model_cfg": {"embed_dim": 32,'),
                                 r"sidecar_bad_json\.json: config sidecar is not valid JSON"),
    "sidecar-patch-size-0": Case(sidecar("patch_0", vision("patch_size", 0)),
                                 r"patch_0\.json: config .*vision_cfg\.patch_size must be a positive int, got 0"),
    "sidecar-width-string": Case(sidecar("width_str", vision("width", "64")),
                                 r"width_str\.json: config .*vision_cfg\.width must be a positive int, got '64' "
                                 r"\(str\)"),
    "safetensors-named-pt": Case(safetensors_named_pt, None),
}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
