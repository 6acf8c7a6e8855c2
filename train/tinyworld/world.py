"""The tiny world: seeded flat-colour shapes on grey backgrounds, with captions and specs.

A sample is drawn in three steps: a GenEval category and a :class:`Spec` (what the caption asks
for), a :class:`Scene` that satisfies it (placed objects, background), and the caption, a
template filled from the spec. Every sample is a pure function of ``(seed, index)``, so the
world is unlimited and any split is reproducible: train and held-out data differ in seed.

Sizes are chosen for CPU training: 64 x 64 px images, i.e. 8 x 8 latents with a factor-8 VAE.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 200, 30), "purple": (150, 60, 200), "cyan": (30, 190, 200),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
BACKGROUNDS = (235, 205, 170, 70)          # grey levels; neutral so any chroma is an object
PREFIXES = ("", "a photo of ", "an image of ")
OBJECT_SIZE = (7, 10)                      # half-extent in px
MIN_SHIFT = 14                             # px along the relation's axis in position scenes


@dataclass(frozen=True)
class Query:
    """One thing the caption asks for: ``count`` objects of ``shape`` (any colour when None)."""

    shape: str
    colour: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Spec:
    """A prompt's structure: the judge checks an image against it. ``relation`` relates query 0
    (the subject) to query 1 ("a circle left of a square"); counts are exact only in counting."""

    category: str
    queries: tuple[Query, ...]
    relation: str | None = None

    def phrase(self) -> str:
        q = self.queries
        if self.category in ("single_object", "colors", "counting"):
            return noun_phrase(q[0])
        if self.category == "position":
            return f"{noun_phrase(q[0])} {self.relation} {noun_phrase(q[1])}"
        return f"{noun_phrase(q[0])} and {noun_phrase(q[1])}"


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    x: float
    y: float
    size: float


@dataclass
class Scene:
    objects: list[Obj]
    background: int = BACKGROUNDS[0]
    texture: str = "plain"                 # plain | stripes | noise
    texture_seed: int = 0


@dataclass
class Sample:
    spec: Spec
    scene: Scene
    caption: str
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8


def noun_phrase(q: Query) -> str:
    words = [NUMBERS[q.count]]
    if q.colour:
        words.append(q.colour)
    words.append(q.shape + ("s" if q.count > 1 else ""))
    return " ".join(words)


# ---------------------------------------------------------------- specs

def sample_spec(rng: random.Random, category: str | None = None) -> Spec:
    """A random spec of ``category`` (uniform over GenEval's six when None)."""
    category = category or rng.choice(CATEGORIES)
    colour = lambda: rng.choice(list(COLOURS))  # noqa: E731
    if category == "single_object":
        return Spec(category, (Query(rng.choice(SHAPES)),))
    if category == "colors":
        return Spec(category, (Query(rng.choice(SHAPES), colour()),))
    if category == "counting":
        return Spec(category, (Query(rng.choice(SHAPES), colour() if rng.random() < 0.5 else None,
                                     rng.choice((2, 3, 4))),))
    s1, s2 = rng.sample(SHAPES, 2)
    if category == "two_object":
        return Spec(category, (Query(s1), Query(s2)))
    if category == "color_attr":
        c1, c2 = rng.sample(list(COLOURS), 2)
        return Spec(category, (Query(s1, c1), Query(s2, c2)))
    if category == "position":
        coloured = rng.random() < 0.5
        c1, c2 = rng.sample(list(COLOURS), 2) if coloured else (None, None)
        return Spec(category, (Query(s1, c1), Query(s2, c2)), rng.choice(RELATIONS))
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


# ---------------------------------------------------------------- scenes

def _place(rng: random.Random, placed: list[Obj], size: float) -> tuple[float, float] | None:
    lo, hi = size + 2, SIZE - 3 - size
    for _ in range(200):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all(np.hypot(x - o.x, y - o.y) >= 1.3 * (size + o.size) + 3 for o in placed):  # clear of the others
            return x, y
    return None


def _position_pair(rng: random.Random, relation: str, s1: float, s2: float) -> tuple[tuple, tuple] | None:
    """Centres of subject and object with the relation clear on its axis and small off-axis."""
    for _ in range(200):
        shift = rng.uniform(max(MIN_SHIFT, 1.3 * (s1 + s2) + 3), SIZE - 6 - s1 - s2)
        off = rng.uniform(-5, 5)
        sign = -1 if relation in ("left of", "above") else 1
        d = (sign * shift, off) if relation in ("left of", "right of") else (off, sign * shift)
        lo1, hi1, lo2, hi2 = s1 + 2, SIZE - 3 - s1, s2 + 2, SIZE - 3 - s2
        x1, y1 = rng.uniform(lo1, hi1), rng.uniform(lo1, hi1)
        x2, y2 = x1 - d[0], y1 - d[1]
        if lo2 <= x2 <= hi2 and lo2 <= y2 <= hi2:
            return (x1, y1), (x2, y2)
    return None


def sample_scene(rng: random.Random, spec: Spec) -> Scene | None:
    """A scene satisfying ``spec`` (unspecified colours random), or None if placement failed."""
    sizes = lambda n: [rng.uniform(*OBJECT_SIZE) for _ in range(n)]  # noqa: E731
    pick = lambda q: q.colour or rng.choice(list(COLOURS))  # noqa: E731
    objects: list[Obj] = []
    if spec.category == "position":
        (q1, q2), (z1, z2) = spec.queries, sizes(2)
        pair = _position_pair(rng, spec.relation, z1, z2)
        if pair is None:
            return None
        (x1, y1), (x2, y2) = pair
        objects = [Obj(q1.shape, pick(q1), x1, y1, z1), Obj(q2.shape, pick(q2), x2, y2, z2)]
    else:
        for q in spec.queries:
            colour = pick(q)  # counted objects share one colour
            for size in (z if q.count < 4 else min(z, 8.5) for z in sizes(q.count)):  # four need smaller ones
                at = _place(rng, objects, size)
                if at is None:
                    return None
                objects.append(Obj(q.shape, colour, *at, size))
    texture = rng.choice(("plain", "plain", "stripes", "noise"))
    return Scene(objects, rng.choice(BACKGROUNDS), texture, rng.randrange(2 ** 31))


# ---------------------------------------------------------------- rendering

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE] + 0.5


def shape_mask(shape: str, x: float, y: float, size: float) -> np.ndarray:
    if shape == "circle":
        return (_XX - x) ** 2 + (_YY - y) ** 2 <= size ** 2
    if shape == "square":
        h = 0.9 * size
        return (np.abs(_XX - x) <= h) & (np.abs(_YY - y) <= h)
    if shape == "triangle":  # apex up, base at the bottom, width = height = 2 * size
        top, bottom = y - size, y + size
        t = (_YY - top) / (bottom - top)
        return (t >= 0) & (t <= 1) & (np.abs(_XX - x) <= t * size)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8."""
    base = np.full((SIZE, SIZE), float(scene.background))
    if scene.texture == "stripes":
        base += 5 * np.sign(np.sin((_XX + _YY) * 0.6 + scene.texture_seed % 7))
    elif scene.texture == "noise":
        base += np.random.default_rng(scene.texture_seed).normal(0, 4, (SIZE, SIZE))
    image = np.repeat(base[..., None], 3, axis=-1)
    for o in scene.objects:
        image[shape_mask(o.shape, o.x, o.y, o.size)] = COLOURS[o.colour]
    return image.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- samples

def make_sample(seed: int, index: int, category: str | None = None, prefix: bool = True) -> Sample:
    """Sample ``index`` of the world with ``seed``: a pure function of its arguments."""
    rng = random.Random(f"tinyworld/{seed}/{index}")
    while True:
        spec = sample_spec(rng, category)
        scene = sample_scene(rng, spec)
        if scene is not None:
            break
    caption = (rng.choice(PREFIXES) if prefix else "") + spec.phrase()
    return Sample(spec, scene, caption, render(scene))


def twin_spec(rng: random.Random, spec: Spec) -> Spec:
    """``spec`` with the one attribute its category tests changed (another shape, colour, count, object, the
    opposite relation, the colours swapped): its caption is the hardest negative for ``spec``'s image."""
    q = spec.queries
    other = lambda values, value: rng.choice([v for v in values if v != value])  # noqa: E731
    if spec.category == "single_object":
        return Spec(spec.category, (Query(other(SHAPES, q[0].shape)),))
    if spec.category == "colors":
        return Spec(spec.category, (Query(q[0].shape, other(list(COLOURS), q[0].colour)),))
    if spec.category == "counting":
        return Spec(spec.category, (Query(q[0].shape, q[0].colour, other((2, 3, 4), q[0].count)),))
    if spec.category == "two_object":
        third = next(s for s in SHAPES if s not in (q[0].shape, q[1].shape))
        return Spec(spec.category, (q[0], Query(third)) if rng.random() < 0.5 else (Query(third), q[1]))
    if spec.category == "position":
        flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return Spec(spec.category, q, flipped[spec.relation])
    if spec.category == "color_attr":
        return Spec(spec.category, (Query(q[0].shape, q[1].colour), Query(q[1].shape, q[0].colour)))
    raise ValueError(f"unknown category {spec.category!r}; known: {', '.join(CATEGORIES)}")


def make_pair(seed: int, index: int) -> tuple[Sample, Sample]:
    """Sample ``index`` of the world ``seed`` and its twin (:func:`twin_spec`), with the same caption prefix:
    two images whose captions differ in one attribute. A pure function of its arguments."""
    first = make_sample(seed, index)
    rng = random.Random(f"tinyworld/{seed}/{index}/twin")
    spec = twin_spec(rng, first.spec)
    scene = sample_scene(rng, spec)
    while scene is None:
        scene = sample_scene(rng, spec)
    prefix = first.caption[:len(first.caption) - len(first.spec.phrase())]
    return first, Sample(spec, scene, prefix + spec.phrase(), render(scene))


def make_samples(seed: int, n: int, category: str | None = None, start: int = 0,
                 prefix: bool = True) -> list[Sample]:
    return [make_sample(seed, i, category, prefix) for i in range(start, start + n)]


def images_tensor(samples: list[Sample]):
    """(N, 3, H, W) float in [-1, 1], as a VAE reads images."""
    import torch
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1
