"""The pack's example latents are what the study's ``python -m train tinyworld --write-examples`` writes: one
tiny-world sample of every colour and shape, encoded by the embedded VAE."""
import torch

from latent_clip.config import DEMO_DIR
from latent_clip.examples import example_latents
from train.tinyworld import examples, study


def test_write_examples_reproduces_the_shipped_file(tmp_path, capsys):
    written = examples.write_examples(DEMO_DIR, tmp_path / "examples.safetensors")
    shipped = example_latents()
    assert (written.captions, written.answers, written.labels, written.templates) == (
        shipped.captions, shipped.answers, shipped.labels, shipped.templates)
    torch.testing.assert_close(example_latents(tmp_path / "examples.safetensors").latents, shipped.latents,
                               atol=1e-5, rtol=1e-5)
    out = capsys.readouterr().out
    assert "zero-shot accuracy" in out and ": 1.00 (chance 0.17)" in out, out


def test_command_offers_it():
    assert study.parse_args(["--write-examples"]).write_examples
