"""P1: does one loader process keep up with one GPU worker? Training clips per second from one process, from the
JPEGs (decoded per clip, the path before the frames stage) and from the frame store, at the demo's setting and the
paper's, against the clips per second one GPU consumes (projected from a published figure).

    .venv/bin/python benchmarks/perf_loader.py [--rounds 3 --clips 60]

Each setting: a dataset ingested and put through the frames stage, then `ClipDataset` (stages/train.py's dataset:
frames, ground-truth masks, crop, brightness, cached text) indexed `--clips` times in this process, from the JPEGs
and from the store in turn (interleaved rounds, median). A second figure times the same clips through a
`DataLoader` with one worker process (what `train.loader_workers: 1` adds: pickling the clip through shared memory).

GPU demand: NVIDIA's published ResNet-50 v1.5 training throughput, 2,470 images/s at 224x224 on one A100 80GB with
mixed precision (DeepLearningExamples, PyTorch ResNet50 v1.5 README, DGX A100 training table, batch 256), scaled to
a clip: pixels per frame (320x320 / 224x224 = 2.04) x 5 frames, and the backbone taken as half of our step (the
memory read and the refine decoder run per frame too) -> 2,470 / (2.04 x 5 x 2) = **121 clips/s** per A100. P1's
target: one loader process >= 2x that = 242 clips/s at the paper setting.
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
from prvos_core.config import FramesSection, IngestSection  # noqa: E402
from prvos_core.data.clips import ClipDataset, ClipSpec, clip_sources, collate_clips  # noqa: E402
from prvos_core.data.manifest import read_manifest  # noqa: E402
from prvos_core.text.cache import TextCache  # noqa: E402
from prvos_core.text.encoder import TextEncoder  # noqa: E402
from stages import frames, ingest  # noqa: E402

A100_IMAGES_PER_SECOND = 2470  # ResNet-50 v1.5, 224x224, AMP, batch 256 (NVIDIA DeepLearningExamples)
GPU_CLIPS_PER_SECOND = A100_IMAGES_PER_SECOND / ((320 * 320) / (224 * 224) * 5 * 2)
SETTINGS = {
    # name: (model input, frames per clip)
    "demo (tiny, 128x128, 3 frames)": ((128, 128), 3),
    "paper (r50, 320x320, 5 frames)": ((320, 320), 5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument(
        "--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ref_davis16_mini"
    )
    args = parser.parse_args()
    load = LoadLog()
    work = Path(tempfile.mkdtemp(prefix="prvos-perf-loader-"))
    torch.set_num_threads(1)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        space = make_workspace(work / "synth", videos=4, frames=20, size=(720, 1280))
        datasets = [("synthetic 1280x720", space.manifest_dir, space.text_cache, space.text_identity)]
        if args.real.exists():
            datasets.append(("real clips 854x480", *_real(work / "real", args.real)))
        rows, figures = [], {}
        for data_name, manifest_dir, text_cache, identity in datasets:
            for setting, (size, clip_frames) in SETTINGS.items():
                result = _measure(work, manifest_dir, text_cache, identity, size, clip_frames, args, load)
                figures[f"{data_name} / {setting}"] = result
                paper = setting.startswith("paper")
                for source in ("jpeg", "store"):
                    rate = result[f"{source}_clips_per_second"]
                    rows.append([data_name, setting, "JPEG per clip" if source == "jpeg" else "frame store",
                                 f"{rate:.1f}", f"{result[f'{source}_loader_clips_per_second']:.1f}",
                                 f"{rate / GPU_CLIPS_PER_SECOND:.2f}x" if paper else "-"])  # fmt: skip
                print(rows[-2], rows[-1], flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    header = ["data", "setting", "frames from", "clips/s, this process", "clips/s, DataLoader 1 worker",
              "of one A100's demand (target >= 2x)"]  # fmt: skip
    body = (
        f"One process on this CPU, median of {args.rounds} interleaved rounds of {args.clips} clips (crop, brightness, "
        "ground-truth masks, cached text). GPU demand projected as in the script's docstring: "
        f"**{GPU_CLIPS_PER_SECOND:.0f} clips/s** per A100 at the paper setting.\n\n"
        f"{markdown_table(header, rows)}\n"
    )
    print(body)
    print(write_part("p1_loader", "P1 loader vs one GPU's demand", command_line(), body,
                     {**figures, "gpu_clips_per_second": GPU_CLIPS_PER_SECOND}, load))  # fmt: skip


def _real(folder: Path, root: Path) -> tuple[str, str, str]:
    folder.mkdir(parents=True)
    ingest.run(ingest.IngestInputs(str(root), ("train", "valid"), str(folder / "ingest")), IngestSection())
    encoder = TextEncoder.from_path(None)
    cache = TextCache.for_encoder(str(folder / "text.zarr"), encoder)
    cache.build(sorted({e.text for e in read_manifest(str(folder / "ingest")).expressions}), encoder)
    return str(folder / "ingest"), str(folder / "text.zarr"), encoder.identity


def _measure(work: Path, manifest_dir: str, text_cache: str, identity: str, size, clip_frames: int, args, load):
    spec = ClipSpec(frames=clip_frames, size=size)
    out = work / f"frames-{Path(manifest_dir).parent.name}-{size[0]}"
    store = frames.run(frames.FramesInputs(manifest_dir, str(out), size, spec.min_crop), FramesSection()).store
    text = TextCache(text_cache, identity).load_all()
    sources = clip_sources(read_manifest(manifest_dir), "train")
    datasets = {
        "jpeg": ClipDataset(sources, text.lookup, spec, clips=args.clips),
        "store": ClipDataset(sources, text.lookup, spec, frame_store=store, clips=args.clips),
    }
    seconds: dict[str, list[float]] = {f"{k}{s}": [] for k in datasets for s in ("", "_loader")}
    for round_index in range(args.rounds):
        for name, dataset in datasets.items():
            dataset.set_epoch(round_index)
            started = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            seconds[name].append(time.perf_counter() - started)
            loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate_clips)
            iterator = iter(loader)
            next(iterator)  # the worker's start is not a per-clip cost
            started = time.perf_counter()
            count = 1 + sum(1 for _ in iterator)
            seconds[f"{name}_loader"].append((time.perf_counter() - started) * len(dataset) / max(count - 1, 1))
        load.sample()
    return {f"{key}_clips_per_second": args.clips / median(values) for key, values in seconds.items()} | {
        "rounds_seconds": seconds
    }


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
