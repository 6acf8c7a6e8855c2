"""Paths to the repository's own test data (tests/data/README.md says where each file comes from)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
IMAGES = DATA / "images"              # 15 real labelled images (labels.tsv)
LAYOUT = DATA / "latent-clip-layout"  # key manifests of the official checkpoints
