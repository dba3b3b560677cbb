"""A procedurally generated image-classification dataset in ImageNet layout (root/{train,val}/<class>/*.png).

One object per image (`objects=1`, the default): ten classes of shapes and textures, each drawn with a random
foreground and background colour, position, scale, rotation and pixel noise, so the task is learnable from a few
thousand images but not trivial (colour says nothing about the class; textures and outlines must be told apart).

Two objects per image (`objects=2`): the class is the unordered pair of two of four clearly different shapes
(PAIR_SHAPES: filled round, filled angular, strokes, hollow round; 10 classes, `circle+cross`, `ring+ring`, ...),
each in its own colour, scale, rotation and place, never overlapping. Telling the pair needs both objects
recognised and combined across the image (and `ring+ring` told from one ring), a compositional task for which
depth should matter more than for one object. (A first version with all six shapes, 21 classes and smaller
objects was too hard for the small ViT: 13% top-1 after 1,800 steps.)

Image k of class c in a split is a pure function of (seed, split, c, k): the same seed writes the same files on
every machine.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lit_hc.io import fsync_folder

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
CLASSES = (*SHAPES, "stripes", "checker", "dots", "zigzag")
VERSION = 1  # bump when drawing changes, so cached folders are regenerated
PAIR_SHAPES = ("circle", "triangle", "cross", "ring")
PAIRS_VERSION = 2


def classes(objects: int = 1) -> tuple[str, ...]:
    """The class names of the dataset with `objects` objects per image (1: shapes and textures; 2: shape pairs)."""
    if objects == 1:
        return CLASSES
    if objects == 2:
        return tuple(f"{a}+{b}" for i, a in enumerate(PAIR_SHAPES) for b in PAIR_SHAPES[i:])
    raise ValueError(f"synthetic_objects={objects} is not supported: use 1 (one shape or texture per image) "
                     "or 2 (a pair of shapes per image)")


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Foreground and background colours at least 120 apart (summed over RGB), so the shape is visible."""
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(fg - bg).sum() > 120:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def _foreground(rng: np.random.Generator, bg: tuple[int, ...]) -> tuple[int, ...]:
    """A foreground colour at least 120 from `bg` (summed over RGB)."""
    while True:
        fg = rng.integers(0, 256, 3)
        if np.abs(fg - np.asarray(bg)).sum() > 120:
            return tuple(int(v) for v in fg)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    k = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * i / k), cy + r * math.sin(angle + 2 * math.pi * i / k))
            for i, r in enumerate(radii)]


def draw(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `label`, size x size RGB. Drawn at 4x and downsampled for smooth edges."""
    s = 4 * size
    fg, bg = _colours(rng)
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    r = s * rng.uniform(0.18, 0.38)  # scale
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)  # position, shape fully inside
    angle = rng.uniform(0, 2 * math.pi)
    w = max(2, int(r * rng.uniform(0.15, 0.3)))  # line / stroke width
    if label in SHAPES:
        _shape(d, label, cx, cy, r, angle, w, fg)
    elif label in ("stripes", "checker", "dots", "zigzag"):  # textures fill the whole image
        period = int(s * rng.uniform(0.1, 0.2))
        tex = Image.new("RGB", (2 * s, 2 * s), bg)
        t = ImageDraw.Draw(tex)
        for i in range(0, 2 * s, period):
            if label == "stripes":
                t.rectangle([i, 0, i + period // 2, 2 * s], fill=fg)
            for j in range(0, 2 * s, period):
                if label == "checker" and (i // period + j // period) % 2:
                    t.rectangle([i, j, i + period, j + period], fill=fg)
                elif label == "dots":
                    t.ellipse([i, j, i + period // 2, j + period // 2], fill=fg)
            if label == "zigzag":
                points = [(x, i + (period // 2 if (x // period) % 2 else 0)) for x in range(0, 2 * s + period, period)]
                t.line(points, fill=fg, width=max(2, period // 4))
        tex = tex.rotate(math.degrees(angle), resample=Image.BILINEAR)
        img = tex.crop((s // 2, s // 2, s // 2 + s, s // 2 + s))
    return _finish(img, size, rng)


def _shape(d: ImageDraw.ImageDraw, label: str, cx: float, cy: float, r: float, angle: float, w: int,
           fg: tuple[int, ...]) -> None:
    """Draw shape `label` (one of SHAPES) of radius r centred at (cx, cy), rotated by `angle`."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if label == "circle":
        d.ellipse(box, fill=fg)
    elif label == "square":
        d.polygon(_polygon(cx, cy, [r * 1.2] * 4, angle), fill=fg)
    elif label == "triangle":
        d.polygon(_polygon(cx, cy, [r * 1.2] * 3, angle), fill=fg)
    elif label == "star":
        d.polygon(_polygon(cx, cy, [r * 1.2, r * 0.5] * 5, angle), fill=fg)
    elif label == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fg, width=2 * w)
    elif label == "ring":
        d.ellipse(box, outline=fg, width=w)


def _finish(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Downsample the 4x drawing to size x size and add pixel noise of a random strength."""
    img = img.resize((size, size), Image.LANCZOS)
    noise = rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def draw_pair(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of pair class `label` ('a+b', both in PAIR_SHAPES): the two shapes in random order, each in its
    own colour, scale, rotation and place, kept apart by a gap of at least 3% of the side (so they never touch)."""
    s = 4 * size
    names = label.split("+")
    if len(names) != 2 or not set(names) <= set(PAIR_SHAPES):
        raise ValueError(f"{label!r} is not a pair class: expected 'a+b' with a and b in {PAIR_SHAPES}")
    if rng.random() < 0.5:
        names.reverse()
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    fgs = [_foreground(rng, bg) for _ in names]
    radii = s * rng.uniform(0.14, 0.21, 2)
    while True:  # both places at once, by rejection (placing one first could leave the other no room)
        centres = [rng.uniform(1.2 * r, s - 1.2 * r, 2) for r in radii]
        if math.dist(*centres) > 1.2 * radii.sum() + 0.03 * s:
            break
    for name, fg, r, (cx, cy) in zip(names, fgs, radii, centres):
        angle = rng.uniform(0, 2 * math.pi)
        _shape(d, name, cx, cy, r, angle, max(2, int(r * rng.uniform(0.15, 0.3))), fg)
    return _finish(img, size, rng)


def write_dataset(root: str | Path, train_per_class: int = 500, val_per_class: int = 100, size: int = 32,
                  seed: int = 0, objects: int = 1) -> Path:
    """Write the dataset under root unless a complete copy is already there; returns root.

    Writes into a temporary sibling folder and renames it at the end, so an interrupted run never leaves a
    half-written dataset that looks complete.
    """
    root = Path(root)
    if (root / ".complete").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    names, paint = classes(objects), (draw if objects == 1 else draw_pair)
    for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for c, label in enumerate(names):
            folder = tmp / split / label
            folder.mkdir(parents=True)
            for k in range(count):
                rng = np.random.default_rng((seed, split_id, c, k))
                paint(label, size, rng).save(folder / f"{label}_{k:05d}.png")
    version = VERSION if objects == 1 else PAIRS_VERSION
    (tmp / ".complete").write_text(f"version={version} objects={objects} seed={seed} size={size} "
                                   f"train_per_class={train_per_class} val_per_class={val_per_class}\n")
    os.sync()  # every image on the disk before the folder takes its final name (a power loss cannot reorder them)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    fsync_folder(root.parent)
    return root


def default_root(data_dir: str | Path, train_per_class: int, val_per_class: int, size: int, seed: int,
                 objects: int = 1) -> Path:
    """Folder name that identifies the generated dataset, so different settings never share a folder."""
    kind = f"shapes-v{VERSION}" if objects == 1 else f"pairs-v{PAIRS_VERSION}"
    name = f"{kind}-{size}px-{train_per_class}x{val_per_class}-s{seed}"
    return Path(data_dir).expanduser() / name
