"""An exact, programmatic judge of tiny-world images (GenEval-style, no learned model).

Detection: pixels with chroma (max - min of RGB) above a threshold belong to objects (the
backgrounds are grey); each takes the nearest palette colour; connected components per colour
above a minimum area are objects. An object's shape comes from three geometric measures that
survive the VAE's blur (:func:`classify_shape`), and its centroid gives its position.

Scoring (:func:`judge`): every query of the spec must match a detected object (shape, and colour
when the query names one); counting needs exactly ``count`` matches; position needs a pair whose
centre offset is dominant on the relation's axis and at least :data:`MIN_OFFSET` px.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import COLOURS, Spec

CHROMA = 70
MIN_AREA = 14
MIN_OFFSET = 4.0
_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    x: float
    y: float
    area: int
    fill: float        # area / bounding-box area: square 1, circle pi/4, triangle 1/2
    roundness: float   # area / area of the circle through the farthest pixel: circle ~0.9, square 2/pi
    offset: float      # (centroid - box centre) / box height: apex-up triangle +1/6, others 0


def classify_shape(fill: float, roundness: float, offset: float) -> str:
    """Thresholds sit between ground-truth renders and VAE reconstructions of each shape: a
    triangle's mass sits low (or it is far from round); a square fills its box more than it
    fills its enclosing circle, a circle the reverse."""
    if offset > 0.045 or roundness < 0.55:
        return "triangle"
    return "square" if fill - roundness > 0.07 else "circle"


def colour_map(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: palette index, or -1 for background."""
    x = image.astype(np.float32)
    chroma = x.max(-1) - x.min(-1)
    nearest = ((x[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    return np.where(chroma >= CHROMA, nearest, -1)


def detect(image: np.ndarray) -> list[Detection]:
    labels = colour_map(image)
    found = []
    for k, name in enumerate(_NAMES):
        components, n = ndimage.label(labels == k)
        for i, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == i
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            reach = np.sqrt((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2).max() + 0.5
            fill = area / (mask.shape[0] * mask.shape[1])
            roundness = area / (np.pi * reach ** 2)
            offset = (cy - mask.shape[0] / 2) / mask.shape[0]
            found.append(Detection(name, classify_shape(fill, roundness, offset), float(cx + box[1].start),
                                   float(cy + box[0].start), area, fill, roundness, offset))
    return found


def _matches(query, found: list[Detection]) -> list[Detection]:
    return [d for d in found if d.shape == query.shape and (query.colour is None or d.colour == query.colour)]


def relation_holds(relation: str, a: Detection, b: Detection) -> bool:
    dx, dy = b.x - a.x, b.y - a.y  # a is `relation` b: "left of" means b is to the right of a
    if relation in ("left of", "right of"):
        d = dx if relation == "left of" else -dx
        return d >= MIN_OFFSET and d > abs(dy)
    d = dy if relation == "above" else -dy
    return d >= MIN_OFFSET and d > abs(dx)


def judge(image: np.ndarray, spec: Spec) -> bool:
    """Does ``image`` (H, W, 3 uint8) show what ``spec`` asks for?"""
    found = detect(image)
    matches = [_matches(q, found) for q in spec.queries]
    if spec.category == "counting":
        return len(matches[0]) == spec.queries[0].count
    if not all(matches):
        return False
    if spec.category == "position":
        return any(relation_holds(spec.relation, a, b) for a in matches[0] for b in matches[1] if a is not b)
    return True


def judge_batch(images: np.ndarray, specs: list[Spec]) -> np.ndarray:
    return np.array([judge(img, spec) for img, spec in zip(images, specs)], dtype=bool)


def to_uint8(images) -> np.ndarray:
    """(B, 3, H, W) torch in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()
