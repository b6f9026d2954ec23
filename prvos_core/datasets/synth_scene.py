"""Scenes of the synthetic RVOS dataset: planning a video, rendering its frames, describing its objects.

A scene is a panning noise texture with 3-4 flat-coloured shapes that move in straight lines at constant
speed and are drawn back to front, so a nearer shape hides part of a farther one. Every video holds a colour
distractor (two objects of one colour) and a shape distractor (two objects of one shape), so a segmenter
must read the expression: "the small red circle moving left" vs "the large red square moving right".
Two objects are set on crossing paths, so occlusion happens in (nearly) every video. All randomness comes from the
`numpy.random.Generator` passed in; the same generator state gives the same scene, pixel for pixel.

Dynamics: "linear" (the default) is the above, where every frame of an object looks like every other, so a few
labelled frames hold all there is to learn about it. "varied" adds what real videos have between their labelled
frames: each object sways across its path, grows and shrinks, turns (all but circles) and goes lighter and darker,
each as a sine of its own period (4-11 frames) and phase. Sizes stay apart (small <= 0.092, large >= 0.11 of the
side), squares and diamonds turn at most 10 degrees (they stay 25 degrees apart), triangles up to 26, the colour
keeps its name, and the sway is a fraction of the travel, so every expression stays true on every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {  # saturated RGB, far from the muted background
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 0.08, "large": 0.13}  # half-size as a fraction of the shorter image side
MOTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DYNAMICS = ("linear", "varied")

# Every shape fits in a box of half-side EXTENT * half_size; positions keep that box inside the frame.
_EXTENT = 1.2
_SUBPIXEL_BITS = 4  # cv2 drawing in 1/16 pixel steps, so slow objects move smoothly
_PLAN_ATTEMPTS = 50
_MIN_FIRST_FRAME_VISIBLE = 0.5  # each object at least half visible on frame 0, where propagation starts
_MIN_MEAN_VISIBLE = 0.65  # objects "mostly visible": occlusion is an event, not the normal state

# (attributes named, phrasing). The first is the canonical description; each phrasing is used only where its
# attribute values pick out exactly one object of the video.
_PHRASINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("size", "colour", "shape", "motion"), "the {size} {colour} {shape} moving {motion}"),
    (("size", "colour", "shape"), "the {size} {colour} {shape}"),
    (("size", "colour", "shape"), "a {size} {colour} {shape}"),
    (("colour", "shape", "motion"), "the {colour} {shape} that is moving {motion}"),
    (("colour", "shape", "motion"), "{colour} {shape} going {motion}"),
    (("colour", "shape"), "the {colour} {shape}"),
    (("size", "shape", "motion"), "the {size} {shape} moving {motion}"),
    (("size", "shape"), "the {size} {shape}"),
    (("size", "colour"), "the {size} {colour} object"),
    (("colour", "motion"), "the {colour} object moving {motion}"),
    (("shape", "motion"), "the {shape} that moves {motion}"),
    (("shape",), "the {shape}"),
    (("colour",), "the {colour} object"),
)


@dataclass(frozen=True)
class Wave:
    """amplitude * sin(2 pi t / period + phase); the zero wave (amplitude 0) is the "linear" dynamics."""

    amplitude: float = 0.0
    period: float = 1.0  # frames
    phase: float = 0.0  # radians

    def at(self, t: float) -> float:
        if not self.amplitude:
            return 0.0
        return self.amplitude * math.sin(2.0 * math.pi * t / self.period + self.phase)


@dataclass(frozen=True)
class SceneObject:
    """One moving shape. Positions are in pixels (x right, y down), pixel centres at integer coordinates."""

    object_id: int  # 1..n, the pixel value in the annotation PNGs
    colour: str
    shape: str
    size: str
    motion: str  # a key of MOTIONS
    half_size: float  # pixels
    start: tuple[float, float]  # centre (x, y) on frame 0
    velocity: tuple[float, float]  # pixels per frame
    depth: int  # drawing order: 0 is farthest, drawn first
    sway: Wave = Wave()  # pixels, across the direction of motion
    pulse: Wave = Wave()  # relative change of half_size
    turn: Wave = Wave()  # radians
    shade: Wave = Wave()  # relative change of the colour's brightness

    def centre(self, t: float) -> tuple[float, float]:
        x, y = self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t
        offset = self.sway.at(t)
        return (x, y + offset) if MOTIONS[self.motion][0] else (x + offset, y)

    def half_size_at(self, t: float) -> float:
        return self.half_size * (1.0 + self.pulse.at(t))

    def colour_at(self, t: float) -> np.ndarray:
        return np.clip(np.array(COLOURS[self.colour], dtype=np.float64) * (1.0 + self.shade.at(t)), 0, 255)

    def attribute(self, name: str) -> str:
        return {"colour": self.colour, "shape": self.shape, "size": self.size, "motion": self.motion}[name]


@dataclass(frozen=True, eq=False)
class VideoScene:
    """Everything needed to render every frame of one video."""

    height: int
    width: int
    frames: int
    objects: tuple[SceneObject, ...]  # objects[i].object_id == i + 1
    texture: np.ndarray  # (H + pad_y, W + pad_x, 3) uint8 RGB background, larger than a frame so it can pan
    pan_start: tuple[float, float]  # top-left (x, y) of the frame window in the texture on frame 0
    pan_velocity: tuple[float, float]  # pixels per frame


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8 object ids of the visible objects, 0 = background
    shapes: np.ndarray  # (n, H, W) bool, each object's whole shape including its hidden parts


def plan_video(rng: np.random.Generator, frames: int, size: tuple[int, int], dynamics: str = "linear") -> VideoScene:
    """Draw a scene: attributes with distractors, motions with one crossing, depth order and background
    (and, with `dynamics="varied"`, each object's sway, pulse, turn and shade).

    Motions are redrawn (up to a fixed number of times) until every object is at least half visible on
    frame 0 and, on average over a few frames spread across the video, mostly visible.
    """
    height, width = size
    attributes = _draw_attributes(rng)
    texture, pan_start, pan_velocity = _draw_background(rng, frames, height, width)
    probe_frames = np.unique(np.linspace(0, frames - 1, min(frames, 8)).round().astype(int))
    for _ in range(_PLAN_ATTEMPTS):
        objects = _draw_objects(rng, attributes, frames, height, width)
        if dynamics == "varied":
            objects = tuple(_vary(obj, rng, min(height, width)) for obj in objects)
        scene = VideoScene(height, width, frames, objects, texture, pan_start, pan_velocity)
        visible = np.stack([_visible_fraction(render_frame(scene, int(t))) for t in probe_frames])
        if visible[0].min() >= _MIN_FIRST_FRAME_VISIBLE and visible.mean(axis=0).min() >= _MIN_MEAN_VISIBLE:
            break
    return scene


def render_frame(scene: VideoScene, t: int) -> RenderedFrame:
    """Render frame `t`: background window, then each shape back to front over the label canvas."""
    height, width = scene.height, scene.width
    shapes = np.zeros((len(scene.objects), height, width), dtype=bool)
    labels = np.zeros((height, width), dtype=np.uint8)
    canvas = np.zeros((height, width), dtype=np.uint8)
    for obj in sorted(scene.objects, key=lambda o: o.depth):
        canvas[:] = 0
        _draw_shape(canvas, obj.shape, obj.centre(t), obj.half_size_at(t), obj.turn.at(t))
        shapes[obj.object_id - 1] = canvas > 0
        labels[canvas > 0] = obj.object_id
    x0 = round(scene.pan_start[0] + scene.pan_velocity[0] * t)
    y0 = round(scene.pan_start[1] + scene.pan_velocity[1] * t)
    background = scene.texture[y0 : y0 + height, x0 : x0 + width]
    lookup = np.zeros((len(scene.objects) + 1, 3), dtype=np.uint8)
    for obj in scene.objects:
        lookup[obj.object_id] = obj.colour_at(t).round().astype(np.uint8)
    image = np.where(labels[..., None] > 0, lookup[labels], background)
    return RenderedFrame(image=image, labels=labels, shapes=shapes)


def _visible_fraction(frame: RenderedFrame) -> np.ndarray:
    """(n,) visible pixels / whole-shape pixels of each object."""
    visible = np.bincount(frame.labels.ravel(), minlength=len(frame.shapes) + 1)[1:]
    return visible / np.maximum(frame.shapes.sum(axis=(1, 2)), 1)


def describe_objects(objects: tuple[SceneObject, ...], rng: np.random.Generator) -> dict[int, tuple[str, ...]]:
    """2-3 referring expressions per object id, each matching that object alone among `objects`.

    The first is always the canonical "the {size} {colour} {shape} moving {motion}"; the others are drawn
    from the phrasings whose attribute values are unique in the video.
    """
    descriptions = {}
    for obj in objects:
        unique = []
        for names, phrasing in _PHRASINGS:
            values = tuple(obj.attribute(name) for name in names)
            matches = [o for o in objects if tuple(o.attribute(name) for name in names) == values]
            if len(matches) == 1:
                unique.append(phrasing.format(**{name: obj.attribute(name) for name in names}))
        # (size, colour, shape) is unique by construction, so the canonical text and its two variants exist.
        assert len(unique) >= 3, unique
        extra = rng.choice(len(unique) - 1, size=int(rng.integers(1, 3)), replace=False) + 1
        descriptions[obj.object_id] = (unique[0],) + tuple(unique[i] for i in sorted(extra))
    return descriptions


def _draw_attributes(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(colour, shape, size) per object, all triples distinct, with a colour and a shape distractor."""
    colour_a, colour_b = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
    shape_a, shape_b = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
    pairs = [(colour_a, shape_a), (colour_a, shape_b), (colour_b, shape_a)]
    if rng.random() < 0.5:
        pairs.append((str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))))
    attributes: list[tuple[str, str, str]] = []
    for colour, shape in pairs:
        # The fourth pair may repeat one of the first three; a different size (or redraw) keeps triples unique.
        while True:
            triple = (colour, shape, str(rng.choice(list(SIZES))))
            if triple not in attributes:
                break
            colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        attributes.append(triple)
    order = rng.permutation(len(attributes))
    return [attributes[i] for i in order]


def _draw_objects(
    rng: np.random.Generator, attributes: list[tuple[str, str, str]], frames: int, height: int, width: int
) -> tuple[SceneObject, ...]:
    """Straight-line motions that stay inside the frame; objects 1 and 2 cross each other mid-video."""
    side = min(height, width)
    margin = _EXTENT * SIZES["large"] * side
    low = np.array([margin, margin])
    high = np.array([width - margin, height - margin])
    span = high - low  # (x, y) room for a centre
    steps = frames - 1
    horizontal, vertical = str(rng.choice(["left", "right"])), str(rng.choice(["up", "down"]))
    motions = [horizontal, vertical] + [str(rng.choice(list(MOTIONS))) for _ in attributes[2:]]
    speeds = []  # pixels per frame along the motion axis; the whole path fits in `span`
    for motion in motions:
        axis = 0 if MOTIONS[motion][0] else 1
        speeds.append(rng.uniform(0.35, 1.0) * span[axis] / steps)
    directions = [np.array(MOTIONS[m], dtype=float) for m in motions]
    starts = []
    for index in range(len(motions)):
        axis = 0 if directions[index][0] else 1
        travel = speeds[index] * steps
        start = rng.uniform(low, high)
        lowest = low[axis] + (travel if directions[index][axis] < 0 else 0.0)
        start[axis] = rng.uniform(lowest, lowest + span[axis] - travel)
        starts.append(start)
    # Make the first two paths cross: the vertical mover reaches the horizontal mover's centre at t_cross.
    t_cross = rng.uniform(0.3, 0.7) * steps
    crossing_x = starts[0][0] + directions[0][0] * speeds[0] * t_cross
    before, after = speeds[1] * t_cross, speeds[1] * (steps - t_cross)  # path length on each side of the crossing
    above, below = (before, after) if directions[1][1] > 0 else (after, before)
    lowest, highest = low[1] + above, high[1] - below
    crossing_y = rng.uniform(lowest, highest)
    starts[0][1] = crossing_y
    starts[1] = np.array([crossing_x, crossing_y - directions[1][1] * speeds[1] * t_cross])
    depths = rng.permutation(len(attributes))
    return tuple(
        SceneObject(
            object_id=index + 1,
            colour=colour,
            shape=shape,
            size=size_name,
            motion=motions[index],
            half_size=SIZES[size_name] * side,
            start=(float(starts[index][0]), float(starts[index][1])),
            velocity=(float(directions[index][0] * speeds[index]), float(directions[index][1] * speeds[index])),
            depth=int(depths[index]),
        )
        for index, (colour, shape, size_name) in enumerate(attributes)
    )


# Turn amplitudes (radians) of squares and diamonds (at most 10 degrees: they stay 25 degrees apart) and of triangles.
_TURN = ((0.08, 0.17), (0.2, 0.45))


def _vary(obj: SceneObject, rng: np.random.Generator, side: int) -> SceneObject:
    """`obj` with the waves of the "varied" dynamics (bounds in the module docstring)."""

    def wave(low: float, high: float) -> Wave:
        return Wave(float(rng.uniform(low, high)), float(rng.uniform(4.0, 11.0)), float(rng.uniform(0, 2 * math.pi)))

    return replace(
        obj,
        sway=wave(0.03 * side, 0.07 * side),
        pulse=wave(0.08, 0.15),
        turn=Wave() if obj.shape == "circle" else wave(*_TURN[obj.shape == "triangle"]),
        shade=wave(0.12, 0.25),
    )


def _draw_background(
    rng: np.random.Generator, frames: int, height: int, width: int
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """A muted two-octave noise texture, padded so the frame window can pan by up to 12 % of the side."""
    side = min(height, width)
    # Slower than any object (at least 0.35 * 0.69 * side over the video), so object motion stays the cue.
    pan_speed = rng.uniform(0.0, 0.12) * side / max(frames - 1, 1)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    pan_velocity = (pan_speed * math.cos(angle), pan_speed * math.sin(angle))
    pad_x = math.ceil(abs(pan_velocity[0]) * (frames - 1)) + 1
    pad_y = math.ceil(abs(pan_velocity[1]) * (frames - 1)) + 1
    texture_h, texture_w = height + pad_y, width + pad_x
    texture = np.zeros((texture_h, texture_w, 3), dtype=np.float32)
    for cell, weight in ((max(side // 6, 2), 0.65), (max(side // 24, 1), 0.35)):
        coarse = rng.random((texture_h // cell + 2, texture_w // cell + 2, 3)).astype(np.float32)
        grey = coarse.mean(axis=2, keepdims=True)
        # Mostly grey noise with a little colour: textured, but never as saturated as an object.
        mixed = 0.75 * grey + 0.25 * coarse
        texture += weight * cv2.resize(mixed, (texture_w, texture_h), interpolation=cv2.INTER_CUBIC)
    tint = rng.uniform(-15.0, 15.0, size=3)
    texture = 120.0 + tint + 140.0 * (texture - 0.5)
    texture = np.clip(texture, 60, 185).astype(np.uint8)
    pan_start = (
        float(pad_x - 1 if pan_velocity[0] < 0 else 0),
        float(pad_y - 1 if pan_velocity[1] < 0 else 0),
    )
    return texture, pan_start, pan_velocity


def _draw_shape(
    canvas: np.ndarray, shape: str, centre: tuple[float, float], half_size: float, angle: float = 0.0
) -> None:
    """Fill `shape`, turned by `angle` radians, with value 1 on the (H, W) uint8 canvas (subpixel positions)."""
    scale = 1 << _SUBPIXEL_BITS
    cx, cy = centre
    if shape == "circle":
        centre_fixed = (round(cx * scale), round(cy * scale))
        cv2.circle(canvas, centre_fixed, round(half_size * scale), 1, thickness=-1, shift=_SUBPIXEL_BITS)
        return
    if shape == "square":
        h = 0.9 * half_size  # about the area of the circle
        corners = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        r = _EXTENT * half_size  # point up, circumradius chosen so its box stays within the extent
        corners = [(r * math.cos(a), -r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    elif shape == "diamond":
        r = _EXTENT * half_size
        corners = [(0.0, -r), (r, 0.0), (0.0, r), (-r, 0.0)]
    else:
        raise AssertionError(f"unknown shape {shape}")
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        corners = [(dx * cos - dy * sin, dx * sin + dy * cos) for dx, dy in corners]
    points = np.array([[round((cx + dx) * scale), round((cy + dy) * scale)] for dx, dy in corners], dtype=np.int32)
    cv2.fillPoly(canvas, [points], 1, shift=_SUBPIXEL_BITS)
