"""Frames decoded once, and shared frame work in the teacher pool: the frame store's figures and P2.

    .venv/bin/python benchmarks/perf_frames.py [--videos 4 --frames 20 --frame-size 720 1280 --rounds 3]

Part 1, the frame store (stages/frames.py): bytes per frame on disk next to the JPEG, the frames stage's time, and
what a clip's frames cost to produce from the JPEG (decode at reduced scale + crop + resize, today's per-clip path)
vs from the store (read a chunk + crop + resize), per frame, median of interleaved rounds; projected over a run
of R rounds x E epochs (clips x frames per clip per epoch, plus every round's infer and evaluate reading every
frame once).

Part 2, P2: one teacher actor (the infer stage, 1 actor, 1 thread, anchored teacher) on videos with 4 expressions
each: (A) one expression at a time, frames from the JPEGs (`share_frames: false`, no frame store: the path
before this change, except that the anchored teacher's two passes already share one encoding); (B) the
expressions of a video together (`share_frames: true`); (C) B reading the frame store. Steady-state frames/s
(expression-frames written per second by the actor's own code, run in this process), interleaved A, B, C per
round, median;
the stores of A, B and C are compared byte for byte (A and B must be identical; C reads other pixels).
The model is `tiny` at 128x128 with the packaged weights.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import perf_setup  # noqa: F401
from perf_setup import LoadLog, command_line, make_workspace, median, write_part

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table  # noqa: E402
from prvos_core.config import FramesSection, InferSection, IngestSection  # noqa: E402
from prvos_core.data.clips import ClipSpec  # noqa: E402
from prvos_core.data.frame_store import FrameReader  # noqa: E402
from prvos_core.data.frames import Box, load_frame  # noqa: E402
from prvos_core.data.manifest import Manifest, read_manifest, write_manifest  # noqa: E402
from prvos_core.model.builders import build_model  # noqa: E402
from prvos_core.model.checkpoint import save_checkpoint  # noqa: E402
from prvos_core.inference.predict import predictor_identity  # noqa: E402
from stages import frames, infer, ingest  # noqa: E402
from stages._ray import work_units  # noqa: E402

SIZE = (128, 128)
REAL_SIZE = (320, 320)  # the r50 size's input (prvos_core.model.builders)
EXPRESSIONS_PER_VIDEO = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(720, 1280))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "r50"], help="model sizes for P2 (both at 128x128)")
    parser.add_argument(
        "--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ref_davis16_mini"
    )
    args = parser.parse_args()
    load = LoadLog()
    work = Path(tempfile.mkdtemp(prefix="prvos-perf-frames-"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        space = make_workspace(work, videos=args.videos, frames=args.frames, size=tuple(args.frame_size))
        manifest_dir = _four_per_video(space.manifest_dir, work / "manifest4")
        settings = [
            ("synthetic (the demo's model input)", manifest_dir, SIZE, f"{args.frame_size[0]}x{args.frame_size[1]}")
        ]
        if args.real.exists():
            real_manifest = work / "real-ingest"
            real_manifest.mkdir()
            ingest.run(ingest.IngestInputs(str(args.real), ("train", "valid"), str(real_manifest)), IngestSection())
            settings.append(("real clips (r50's input)", str(real_manifest), REAL_SIZE, "854x480"))
        store_figures, bodies, stores = {}, [], []
        for title, manifest, size, frame_size in settings:
            figures, body = _frame_store(work, manifest, size, title, frame_size, args, load)
            stores.append(figures.pop("store"))
            store_figures[title] = figures
            bodies.append(body)
        p2_figures, p2_body = {}, ""
        for model_size in args.sizes:
            figures, body = _shared(work, space, manifest_dir, stores[0], model_size, args, load)
            p2_figures[model_size], p2_body = figures, p2_body + body
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    body = _store_header() + "\n".join(bodies) + "\n" + p2_body
    print(body)
    print(write_part("frames_p2", "Frames decoded once, and shared frame work (P2)", command_line(), body,
                     {**store_figures, **p2_figures}, load))  # fmt: skip


def _four_per_video(manifest_dir: str, out: Path) -> str:
    """The train split's first EXPRESSIONS_PER_VIDEO expressions of each video (P2's setting)."""
    manifest = read_manifest(manifest_dir)
    kept, seen = [], {}
    for expression in manifest.split_expressions("train"):
        if seen.setdefault(expression.video_id, 0) < EXPRESSIONS_PER_VIDEO:
            seen[expression.video_id] += 1
            kept.append(expression)
    assert set(seen.values()) == {EXPRESSIONS_PER_VIDEO}, seen
    out.mkdir()
    write_manifest(str(out), Manifest(manifest.videos, tuple(kept), ()))
    return str(out)


def _store_header() -> str:
    return (
        "### The frame store\n\n"
        "Per setting: the frames stage over the manifest (2 tasks; Ray start excluded), then what one clip frame "
        "(a random crop of side >= 0.8, resized to the model input) costs from the JPEG (reduced decode + crop + "
        "resize, the per-clip path) and from the store (one chunk read + crop + resize), median of interleaved "
        "rounds of 20 picks per video. Projection: the demo's run reads 3 trainings x 12 epochs x 67 clips x 3 "
        "frames = 7,236 clip frames; a paper-scale run (Ref-YouTube-VOS: 3,471 videos, 1 clip per expression of "
        "~12,900 per epoch, 5 frames, 6 epochs x 3 trainings) reads ~1.16 M.\n\n"
    )


def _frame_store(work: Path, manifest_dir: str, size, title: str, frame_size: str, args, load: LoadLog):
    spec = ClipSpec(size=size)
    out = work / f"frames-{size[0]}"
    result = frames.run(frames.FramesInputs(manifest_dir, str(out), size, spec.min_crop), FramesSection())
    load.sample()
    videos = [v for v in read_manifest(manifest_dir).videos if v.split == "train"]
    reader = FrameReader(result.store)
    rng = np.random.default_rng(0)
    jpeg_ms, store_ms = [], []
    for _ in range(args.rounds):
        picks = [(v, int(rng.integers(v.n_frames)), _box(rng, spec.min_crop)) for v in videos for _ in range(20)]
        started = time.perf_counter()
        for video, t, box in picks:
            uri = str(video.paths.frame_path(video.video_id, video.frame_ids[t]))
            load_frame(uri, size, box, (video.height, video.width))
        jpeg_ms.append(1000 * (time.perf_counter() - started) / len(picks))
        started = time.perf_counter()
        for video, t, box in picks:
            reader.frame(video, t, size, box)
        store_ms.append(1000 * (time.perf_counter() - started) / len(picks))
        load.sample()
    jpeg, stored = median(jpeg_ms), median(store_ms)
    demo, paper = 3 * 12 * 67 * 3, 3 * 6 * 12_900 * 5
    figures = {
        "store": result.store,
        "store_size": [result.height, result.width],
        "jpeg_bytes_per_frame": result.jpeg_bytes_per_frame,
        "store_bytes_per_frame": result.bytes_per_frame,
        "frames": result.frames,
        "frames_stage_seconds": result.seconds,
        "frames_stage_fps": result.frames_per_second,
        "jpeg_clip_frame_ms": jpeg,
        "store_clip_frame_ms": stored,
        "jpeg_pairs_ms": jpeg_ms,
        "store_pairs_ms": store_ms,
    }
    rows = [
        ["JPEG (the dataset)", frame_size, f"{result.jpeg_bytes_per_frame:,.0f}", f"{jpeg:.2f}",
         f"{demo * jpeg / 1000:.0f} s", f"{paper * jpeg / 3.6e6:.1f} h"],
        ["frame store (uint8, zstd 1, a frame per chunk)", f"{result.height}x{result.width}",
         f"{result.bytes_per_frame:,.0f}", f"{stored:.2f}", f"{demo * stored / 1000:.0f} s",
         f"{paper * stored / 3.6e6:.1f} h"],
    ]  # fmt: skip
    header = ["source", "frame size", "bytes per frame", "ms per clip frame (median)", "demo run", "paper-scale run"]
    return figures, (
        f"**{title}**: {result.frames} frames, model input {size[0]}x{size[1]}, stored at {result.height}x"
        f"{result.width}; decoded once in **{result.seconds:.1f} s** ({result.frames_per_second:.1f} frames/s).\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"Rounds (JPEG / store, ms): {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(jpeg_ms, store_ms, strict=True))}; "
        f"store / JPEG bytes: x{result.bytes_per_frame / result.jpeg_bytes_per_frame:.1f}.\n"
    )


def _box(rng: np.random.Generator, min_crop: float) -> Box:
    side = rng.uniform(min_crop, 1.0)
    y0, x0 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    return Box(y0, x0, y0 + side, x0 + side)


def _actor_pass(space, manifest_dir: str, checkpoint: str, cfg: InferSection, store, out: Path) -> dict:
    """One teacher actor's work, in this process (what Ray Data calls on it): every unit of the split, timed."""
    inputs = infer.InferInputs(manifest_dir, space.text_cache, space.text_identity, checkpoint, "train", str(out),
                               SIZE, frame_store=store)  # fmt: skip
    actor = infer.TeacherActor(inputs, cfg, predictor_identity(checkpoint, cfg.teacher))
    expressions = read_manifest(manifest_dir).split_expressions("train")
    units = work_units(expressions, cfg.share_frames)
    started = time.perf_counter()
    rows = 0
    for unit in units:
        rows += len(actor({"expression_ids": np.array(["\t".join(unit)])})["expression_id"])
    return {"fps": rows / (time.perf_counter() - started), "frames": rows, "out": out}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _shared(work: Path, space, manifest_dir: str, store: str, size: str, args, load: LoadLog) -> tuple[dict, str]:
    torch.manual_seed(0)
    # r50 without its ImageNet file (not shipped): random weights cost the same per frame.
    model = build_model(size, text_dim=space.text_dim, pretrained=size == "tiny")
    checkpoint = str(save_checkpoint(work / f"teacher-{size}", model, meta={"epoch": 0, "step": 0, "round": 0}))
    variants = {
        "A": (InferSection(actors=1, share_frames=False), None),
        "B": (InferSection(actors=1, share_frames=True), None),
        "C": (InferSection(actors=1, share_frames=True), store),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    torch.set_num_threads(1)
    _actor_pass(space, manifest_dir, checkpoint, variants["B"][0], None, work / f"warm-up-{size}")
    for round_index in range(args.rounds):
        for name, (cfg, frame_store) in variants.items():
            out = work / f"actor-{size}-{name}{round_index}"
            runs[name].append(_actor_pass(space, manifest_dir, checkpoint, cfg, frame_store, out))
        load.sample()
        print(f"round {round_index}: " + ", ".join(f"{n} {runs[n][-1]['fps']:.1f} f/s" for n in variants), flush=True)
    identical = _files(runs["A"][-1]["out"] / "pseudo.zarr") == _files(runs["B"][-1]["out"] / "pseudo.zarr")
    fps = {name: median([r["fps"] for r in values]) for name, values in runs.items()}
    pairs_b = [b["fps"] / a["fps"] for a, b in zip(runs["A"], runs["B"], strict=True)]
    pairs_c = [c["fps"] / a["fps"] for a, c in zip(runs["A"], runs["C"], strict=True)]
    figures = {"p2_fps": fps, "p2_b_over_a": median(pairs_b), "p2_c_over_a": median(pairs_c),
               "p2_identical_store": identical, "p2_frames": runs["A"][0]["frames"]}  # fmt: skip
    rows = [
        ["A: one expression at a time, JPEG frames", f"{fps['A']:.1f}", ""],
        ["B: a video's expressions together (shared frames)", f"{fps['B']:.1f}",
         f"B/A = **{median(pairs_b):.2f}** (target >= 1.5)"],
        ["C: B reading the frame store", f"{fps['C']:.1f}", f"C/A = **{median(pairs_c):.2f}**"],
    ]  # fmt: skip
    body = (
        f"### P2: shared frame work in the teacher pool, `{size}`\n\n"
        f"One teacher actor's work run in this process (the `TeacherActor` Ray Data calls, over every unit: decode, "
        f"model, entropy, Zarr writes, index rows), 1 torch thread, teacher `{size}` at {SIZE[0]}x{SIZE[1]} anchored on every ground-truth frame "
        f"(every 5th), {args.videos} videos x {args.frames} frames x {EXPRESSIONS_PER_VIDEO} expressions = "
        f"{runs['A'][0]['frames']} expression-frames per pass; frames/s, median of {args.rounds} interleaved "
        "rounds.\n\n"
        f"{markdown_table(['path', 'frames/s (median)', 'ratio'], rows)}\n\n"
        f"Pairs B/A: {', '.join(f'{r:.2f}' for r in pairs_b)}; C/A: {', '.join(f'{r:.2f}' for r in pairs_c)}. "
        f"Stores of A and B byte-identical: **{identical}**.\n"
    )
    return figures, body


if __name__ == "__main__":
    main()
