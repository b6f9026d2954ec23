"""Ingest rate (frames/s) on a 10,000-frame synthetic set: Ray tasks vs one process, same checks.

python benchmarks/ingest_rate.py [--videos 500 --frames 20 --size 96 96 --repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from benchmarks.common import markdown_table, median, write_result  # noqa: E402
from prvos_core.config import IngestSection  # noqa: E402
from prvos_core.data.file_checks import check_files  # noqa: E402
from prvos_core.data.source import files_on_disk, read_split  # noqa: E402
from prvos_core.data.validate import VideoFiles, plan_checks  # noqa: E402
from prvos_core.datasets.synth import generate_synthetic  # noqa: E402
from stages import ingest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 96))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prvos-bench-ingest-"))
    try:
        started = time.perf_counter()
        generate_synthetic(work / "data", videos=args.videos, valid_videos=1, frames=args.frames, size=tuple(args.size))
        synth_seconds = time.perf_counter() - started
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        stage_rates, check_rates, serial_rates = [], [], []
        for repeat in range(args.repeats):
            out = work / f"stage{repeat}"
            out.mkdir()
            result = ingest.run(ingest.IngestInputs(str(work / "data"), ("train",), str(out)), IngestSection())
            frames = result.frames
            stage_rates.append(frames / result.seconds)
            check_rates.append(frames / result.check_seconds)
            serial_rates.append(_serial_rate(work / "data"))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stage, checks, serial = median(stage_rates), median(check_rates), median(serial_rates)
    rows = [
        ["whole ingest stage (JSON, listing, checks, manifest)", f"{stage:,.0f}", f"{args.cpus} CPUs"],
        ["file checks as Ray tasks (JPEG decode + mask read)", f"{checks:,.0f}", f"{args.cpus} CPUs"],
        ["the same file checks in one process", f"{serial:,.0f}", "1 CPU"],
        ["speed-up of the checks from Ray tasks", f"{checks / serial:.2f}x", ""],
    ]
    table = markdown_table(["what", "frames/s (median)", "resources"], rows)
    body = (
        f"{int(frames):,} train frames ({args.videos} videos x {args.frames} frames, {args.size[0]}x{args.size[1]}), "
        f"median of {args.repeats} runs; synthetic set generated in {synth_seconds:.1f} s.\n\n{table}\n"
    )
    print(body)
    path = write_result("ingest.md", "Ingest rate", "python " + " ".join(sys.argv), body)
    print(f"wrote {path}")


def _serial_rate(root: Path) -> float:
    source = read_split(root, "train")
    videos = []
    for raw in source.videos:
        jpegs, pngs = files_on_disk(source.dataset_root, "train", raw.video_id)
        videos.append(VideoFiles(source, raw, tuple(sorted(jpegs)), tuple(sorted(pngs))))
    checks = plan_checks(videos)
    started = time.perf_counter()
    check_files(checks)
    frames = sum(1 for check in checks if check.kind == "frame")
    return frames / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
