"""The pack's example latents (``latent_clip.examples``): one tiny-world sample of every colour and shape,
encoded by the embedded VAE, with the labels and templates the embedded Latent-CLIP classifies them by.

    python -m train tinyworld --write-examples [--weights latent_clip/assets/tinyworld]

Labels are the object's colour: the embedded Latent-CLIP tells colours apart (zero-shot 0.997-1.0 on 300
held-out colour samples each of world seeds 1, 7 and 100 with these templates) but not shapes (0.30-0.35,
chance 0.33), so the captions name both and the graph asks for the colour.
"""
from __future__ import annotations

from pathlib import Path

from latent_clip import build_classifier, classify, load_model
from latent_clip.config import DEMO_WEIGHTS
from latent_clip.examples import EXAMPLES_FILE, Examples, save_examples

from . import vae as tiny_vae
from .world import COLOURS, SHAPES, images_tensor, make_sample

SEED = 5  # a world seed of its own: the study trains on 0 and measures on 1-4
TEMPLATES = [f"a {{}} {shape}" for shape in SHAPES]


def example_samples(seed: int = SEED) -> list:
    """The first sample of each (colour, shape) in the world ``seed``'s colour samples, in world order."""
    found = {}
    index = 0
    while len(found) < len(COLOURS) * len(SHAPES):
        sample = make_sample(seed, index, "colors")
        query = sample.spec.queries[0]
        found.setdefault((query.colour, query.shape), sample)
        index += 1
    return list(found.values())


def build_examples(weights: Path, seed: int = SEED) -> Examples:
    """The examples of world ``seed``, encoded by the VAE in ``weights`` (raw latents, posterior mean)."""
    samples = example_samples(seed)
    latents = tiny_vae.encode(tiny_vae.load(weights / "vae"), images_tensor(samples)).float()
    return Examples(latents, [s.caption for s in samples], [s.spec.queries[0].colour for s in samples],
                    list(COLOURS), TEMPLATES, family="tinyworld")


def accuracy(examples: Examples, weights_file: Path = DEMO_WEIGHTS) -> float:
    """Zero-shot top-1 accuracy of the Latent-CLIP in ``weights_file`` on ``examples``' answers."""
    model = load_model(weights_file)
    probs = classify(model, examples.latents, build_classifier(model, examples.labels, examples.templates))
    return sum(examples.labels[k] == a for k, a in zip(probs.argmax(-1).tolist(), examples.answers)) / len(probs)


def write_examples(weights: Path, out: Path = EXAMPLES_FILE) -> Examples:
    """Build the examples from the VAE in ``weights``, write them to ``out`` and print the embedded Latent-CLIP's
    zero-shot accuracy on them."""
    examples = build_examples(weights)
    save_examples(examples, out)
    print(f"[tinyworld] wrote {len(examples.captions)} example latents to {out} ({out.stat().st_size:,} bytes); "
          f"zero-shot accuracy of {weights / DEMO_WEIGHTS.name} on their colours: "
          f"{accuracy(examples, weights / DEMO_WEIGHTS.name):.2f} (chance {1 / len(examples.labels):.2f})")
    return examples
