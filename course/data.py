"""Offline image data for the course: shapes drawn from a seed, no download needed.

Three tasks share one generator:

* ``source``     - 10 shape classes, used once to pre-train the course backbones;
* ``target``     - 5 *different but related* shape classes: the task students fine-tune on;
* ``dissimilar`` - 5 classes that differ by how many dots an image holds, a task far from
  "which shape is this", used to show when pre-training helps less.

Every image is 96x96 RGB: a filled shape of random colour, size, position and rotation on a
noisy, tinted background. Same seed, same bytes.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
SOURCE_CLASSES = ("circle", "square", "triangle", "star5", "plus",
                  "ring", "hexagon", "diamond", "arrow", "crescent")
TARGET_CLASSES = ("pentagon", "star6", "semicircle", "l_shape", "frame")
DISSIMILAR_CLASSES = ("one_dot", "two_dots", "three_dots", "four_dots", "five_dots")
TASKS = {"source": SOURCE_CLASSES, "target": TARGET_CLASSES, "dissimilar": DISSIMILAR_CLASSES}
SPLITS = ("train", "val", "test")
DEFAULT_PER_CLASS = {"train": 10, "val": 20, "test": 40}


def _regular(n, start=math.pi / 2):
    return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


def _star(points, inner=0.45):
    outer = _regular(2 * points)
    return [(x * (1 if k % 2 == 0 else inner), y * (1 if k % 2 == 0 else inner)) for k, (x, y) in enumerate(outer)]


def _arc(a0, a1, r=1.0, n=40, cx=0.0, cy=0.0):
    return [(cx + r * math.cos(a0 + (a1 - a0) * k / (n - 1)), cy + r * math.sin(a0 + (a1 - a0) * k / (n - 1))) for k in range(n)]


# Each shape is a list of (polygon, fill) parts in unit coordinates; fill 0 cuts a hole.
SHAPES = {
    "circle": [(_regular(48), 255)],
    "square": [([(-.8, -.8), (.8, -.8), (.8, .8), (-.8, .8)], 255)],
    "triangle": [(_regular(3), 255)],
    "star5": [(_star(5), 255)],
    "plus": [([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
               (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)], 255)],
    "ring": [(_regular(48), 255), ([(.55 * x, .55 * y) for x, y in _regular(48)], 0)],
    "hexagon": [(_regular(6), 255)],
    "diamond": [([(0, -1), (.5, 0), (0, 1), (-.5, 0)], 255)],
    "arrow": [([(-1, -.25), (.2, -.25), (.2, -.6), (1, 0), (.2, .6), (.2, .25), (-1, .25)], 255)],
    "crescent": [(_regular(48), 255), ([(x * .85 + .45, y * .85) for x, y in _regular(48)], 0)],
    "pentagon": [(_regular(5), 255)],
    "star6": [(_star(6, 0.55), 255)],
    "semicircle": [(_arc(0, math.pi) + [(1.0, 0.0)], 255)],
    "l_shape": [([(-.7, -1), (-.2, -1), (-.2, .5), (.8, .5), (.8, 1), (-.7, 1)], 255)],
    "frame": [([(-.85, -.85), (.85, -.85), (.85, .85), (-.85, .85)], 255),
              ([(-.5, -.5), (.5, -.5), (.5, .5), (-.5, .5)], 0)],
}


def _rng(seed, task, split):
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode())])


def _background(rng):
    size = IMAGE_SIZE
    base = rng.uniform(30, 225, size=3)
    ramp = np.linspace(-1, 1, size)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])[..., None]
    tint = rng.uniform(-40, 40, size=3)
    noise = rng.normal(0, rng.uniform(6, 22), size=(size, size, 3))
    return np.clip(base + gradient * tint + noise, 0, 255)


def _shape_colour(rng, background):
    mean = background.mean(axis=(0, 1))
    while True:  # keep the shape visible against its background
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - mean).sum() > 150:
            return colour


def _shape_mask(rng, name):
    size = IMAGE_SIZE
    scale = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(size * 0.3, size * 0.7, size=2)
    theta = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(theta), math.sin(theta)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, fill in SHAPES[name]:
        draw.polygon([(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in polygon], fill=fill)
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def _dots_mask(rng, count):
    size = IMAGE_SIZE
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    centres = []
    while len(centres) < count:  # non-overlapping dots
        c = rng.uniform(14, size - 14, size=2)
        if all(np.hypot(*(c - d)) > 20 for d in centres):
            centres.append(c)
    for x, y in centres:
        r = rng.uniform(5, 9)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def draw_image(rng, task, label):
    """One uint8 image (96, 96, 3) of class ``label`` of ``task``."""
    background = _background(rng)
    colour = _shape_colour(rng, background)
    name = TASKS[task][label]
    mask = _dots_mask(rng, label + 1) if task == "dissimilar" else _shape_mask(rng, name)
    image = background * (1 - mask) + colour * mask
    return np.clip(image, 0, 255).astype(np.uint8)


def load_task(task="target", split="train", per_class=None, seed=0):
    """Images ``X`` (N, 96, 96, 3) uint8 and labels ``y`` (N,) int64, classes balanced and shuffled.

    ``per_class`` defaults to 10 for train, 20 for val, 40 for test. Splits never share images.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    per_class = DEFAULT_PER_CLASS[split] if per_class is None else int(per_class)
    rng = _rng(seed, task, split)
    y = np.repeat(np.arange(len(TASKS[task])), per_class)
    rng.shuffle(y)
    X = np.stack([draw_image(rng, task, int(label)) for label in y]) if len(y) else np.zeros((0, 96, 96, 3), np.uint8)
    return X, y.astype(np.int64)


def augment(images, seed=0):
    """Data augmentation: a copy of ``images`` (N, H, W, 3) in which each image is turned by a random
    multiple of 90 degrees and mirrored half of the time (the same copy for the same seed).

    Neither changes how many dots an image holds, so on the dots task (``dissimilar``) every label stays
    valid and the network sees new variants of its training images for free. (A mirrored L shape is not
    an L any more: choose augmentations that keep the label of *your* task.)
    """
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image = np.rot90(image, k=int(rng.integers(4)))
        out[i] = image[:, ::-1] if rng.random() < 0.5 else image
    return out


def class_names(task="target"):
    return list(TASKS[task])


def write_image_folder(root, task="target", split="train", per_class=None, seed=0):
    """Write a split as PNG files in the class-per-folder layout (``root/<class>/<n>.png``)."""
    root = Path(root)
    X, y = load_task(task, split, per_class, seed)
    names = TASKS[task]
    for i, (image, label) in enumerate(zip(X, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root
