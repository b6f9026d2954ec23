"""Forward time of the RVOS model per 5-frame clip on this machine, for each named size at its input size.

    .venv/bin/python benchmarks/model_forward.py [--repeats 5] [--r50-repeats 2] [--threads 2]

Two timings per size: `train forward` (train mode, autograd recording, as in a training step, default
trainable setting) and `inference forward` (eval mode, no_grad). Prints a Markdown table and writes it to
benchmarks/results/model_forward.md. Models are random-initialised for r50 (no weights are bundled) and
use the packaged ImageNet weights for tiny; weights do not change the speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from prvos_core.model.builders import build_model, count_parameters  # noqa: E402

CLIP_FRAMES = 5
TEXT_DIM = 768  # DistilBERT width, as the paper setting; tiny's projection cost barely depends on it
WORDS = 20  # the seed's max tokens
RESULTS = Path(__file__).resolve().parent / "results" / "model_forward.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs for tiny (median reported)")
    parser.add_argument("--r50-repeats", type=int, default=2, help="timed runs for r50 (slow on CPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rows = [_time_size(size, repeats, device) for size, repeats in (("tiny", args.repeats), ("r50", args.r50_repeats))]
    table = _table(rows, device, args.threads)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")


def _time_size(size: str, repeats: int, device: torch.device) -> tuple:
    """(size, input, parameters, train forward s, inference forward s, runs) for one named size."""
    torch.manual_seed(0)
    model = build_model(size, text_dim=TEXT_DIM, pretrained=size == "tiny").to(device)
    height, width = model.spec.input_size
    frames = torch.rand(1, CLIP_FRAMES, 3, height, width, device=device)
    words = torch.randn(1, WORDS, TEXT_DIM, device=device)
    word_mask = torch.ones(1, WORDS, dtype=torch.bool, device=device)
    first_mask = (torch.rand(1, height, width, device=device) > 0.5).float()

    def train_forward() -> None:
        model.train()
        model.forward_clip(frames, words, word_mask, first_mask)

    def inference_forward() -> None:
        model.eval()
        with torch.no_grad():
            model.forward_clip(frames, words, word_mask, first_mask)

    train_s = _median_seconds(train_forward, repeats, device)
    inference_s = _median_seconds(inference_forward, repeats, device)
    return size, f"{height}x{width}", count_parameters(model).total, train_s, inference_s, repeats


def _median_seconds(run, repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` runs after one untimed warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, {platform.system()}"


def _table(rows: list[tuple], device: torch.device, threads: int) -> str:
    lines = [
        f"# Model forward time per {CLIP_FRAMES}-frame clip",
        "",
        f"Machine: {_machine(device, threads)}. Batch 1, {WORDS} words, first-frame mask given; median of the "
        "timed runs after one warm-up. `train` = train mode with autograd recording (forward of a training "
        "step), `inference` = eval mode under no_grad.",
        "",
        "| size | input | parameters | train forward (s/clip) | inference forward (s/clip) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for size, resolution, parameters, train_s, inference_s, repeats in rows:
        lines.append(
            f"| {size} | {resolution} | {parameters / 1e6:.1f}M | {train_s:.3f} | {inference_s:.3f} | {repeats} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
