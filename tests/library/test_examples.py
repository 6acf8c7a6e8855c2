"""The example latents that ship with the pack (latent_clip/examples.py): small, bounded, checked on reading, and
classified right by the embedded demo model."""
from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import latent_clip
from latent_clip.config import DEMO_WEIGHTS
from latent_clip.examples import EXAMPLES_FILE, MAX_EXAMPLES_BYTES, Examples, example_latents, save_examples
from latent_clip.filebounds import FileLimitError


@pytest.fixture(scope="module")
def shipped() -> Examples:
    return example_latents()


def test_shipped_file_is_small_and_complete(shipped):
    """One latent of every colour and shape (18), raw 8x8x4 tiny-world latents, in 19,400 bytes."""
    assert EXAMPLES_FILE.stat().st_size <= MAX_EXAMPLES_BYTES < 100_000
    assert shipped.latents.shape == (18, 4, 8, 8) and shipped.latents.dtype == torch.float32
    assert shipped.family == "tinyworld" and len(shipped.captions) == len(shipped.answers) == 18
    assert sorted(set(shipped.answers)) == sorted(shipped.labels) and len(shipped.labels) == 6
    for caption, answer in zip(shipped.captions, shipped.answers):
        assert f"a {answer} " in caption, caption
    shapes = [c.split()[-1] for c in shipped.captions]
    assert sorted(zip(shipped.answers, shapes)) == sorted({(a, s) for a, s in zip(shipped.answers, shapes)})
    # raw latents of the family: the VAE is rescaled to std 1 / scaling_factor (4) on 256 samples; 3.87 on these 18
    target = 1 / latent_clip.get_latent_family("tinyworld").scaling_factor
    assert 0.8 * target < shipped.latents.std() < 1.2 * target


def test_embedded_model_classifies_every_example(shipped):
    """Zero-shot with the shipped labels and templates: 18/18, the top label at p >= 0.80 (runner-up <= 0.19).
    On 300 held-out colour samples of each of world seeds 1, 7 and 100 the same classifier scored 0.997-1.0;
    the bound below leaves 0.2 of the measured 0.80."""
    model = latent_clip.load_model(DEMO_WEIGHTS)
    probs = latent_clip.classify(model, shipped.latents, latent_clip.build_classifier(model, shipped.labels,
                                                                                     shipped.templates))
    assert [shipped.labels[k] for k in probs.argmax(-1).tolist()] == shipped.answers
    assert probs.max(-1).values.min() >= 0.6


def test_round_trip(tmp_path, shipped):
    path = tmp_path / "examples.safetensors"
    save_examples(shipped, path)
    again = example_latents(path)
    assert again.captions == shipped.captions and again.labels == shipped.labels
    torch.testing.assert_close(again.latents, shipped.latents, rtol=0, atol=0)


def _write(path, tensors: dict, metadata: dict) -> None:
    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})


@pytest.mark.parametrize("change, message", [
    ({"answers": ["red"] * 17 + ["black"]}, "are not among the labels"),
    ({"captions": ["a red circle"] * 17}, "one caption and one answer each"),
    ({"family": "sd3"}, "float32 (N, 16, H, W)"),
    ({"labels": {"red": 1}}, "labels must be a list of texts, got dict"),
    ({"answers": ["red"] * 17 + [3]}, "answers 18 must be text"),
    ({"family": "nope"}, "unknown latent family"),
    ({"templates": ["a {0} circle"]}, "must each contain '{}'"),
    ({"latents": torch.full((18, 4, 8, 8), float("nan"))}, "NaN or Inf"),
    ({"latents": torch.zeros(18, 4, 8, 8, dtype=torch.float16)}, "float32"),
])
def test_inconsistent_files_are_refused(tmp_path, shipped, change, message):
    path = tmp_path / "bad.safetensors"
    fields = {"captions": shipped.captions, "answers": shipped.answers, "labels": shipped.labels,
              "templates": shipped.templates, "family": shipped.family, "latents": shipped.latents} | change
    _write(path, {"latents": fields.pop("latents")}, fields)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")
                       .replace("}", r"\}")):
        example_latents(path)


def test_refused_before_parsing(tmp_path):
    """Over the size bound, not safetensors, or missing fields: one line naming the file."""
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (MAX_EXAMPLES_BYTES + 1))
    with pytest.raises(FileLimitError, match="more than 65,536 bytes"):
        example_latents(big)
    header = json.dumps({"latents": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    for name, data in {"junk": b"not a safetensors file", "no_metadata": struct.pack("<Q", len(header)) + header
                       + b"\0" * 4}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FileLimitError, match=f"{name}: not an example latents file") as err:
            example_latents(tmp_path / name)
        assert "\n" not in str(err.value)


def test_save_refuses_what_it_could_not_read(tmp_path, shipped):
    with pytest.raises(ValueError, match="not among the labels"):
        save_examples(replace(shipped, labels=["red"]), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
