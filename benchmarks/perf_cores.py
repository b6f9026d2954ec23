"""P2 control: how much parallelism the machine gives right now, without Ray. Two plain processes, each running
the tiny teacher's frame encoder with 1 torch thread, against one such process (alternating, median).

    .venv/bin/python benchmarks/perf_cores.py [--rounds 3 --frames 60]

If two independent processes do not reach 2x one process, no actor pool can: the 2-actor target of P2 then
measures the other jobs on the machine, not the pipeline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import perf_setup  # noqa: F401
from perf_setup import LoadLog, command_line, median, write_part


def _work(frames: int) -> float:
    """Frames/s of `encode_frame` + decode of the tiny model (random weights) on 128x128 frames, 1 thread."""
    import torch

    from prvos_core.model.builders import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=384, pretrained=False).eval()
    images = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        model.encode_frame(images)
        started = time.perf_counter()
        for _ in range(frames):
            model.encode_frame(images)
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    load = LoadLog()
    context = multiprocessing.get_context("spawn")
    ratios, ones, twos = [], [], []
    with context.Pool(2) as pool:
        pool.map(_work, [2, 2])  # imports and warm-up in both
        for _ in range(args.rounds):
            one = pool.apply(_work, (args.frames,))
            two = sum(pool.map(_work, [args.frames, args.frames]))
            ones.append(one)
            twos.append(two)
            ratios.append(two / one)
            load.sample()
    figures = {"one_process_fps": median(ones), "two_process_fps": median(twos), "two_over_one": median(ratios)}
    body = (
        f"Two plain processes vs one (tiny frame encoder, 128x128, 1 torch thread each, no Ray), {args.rounds} "
        f"alternating rounds: one {figures['one_process_fps']:.1f} frames/s, two together "
        f"{figures['two_process_fps']:.1f} frames/s: **{figures['two_over_one']:.2f}x** (pairs: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}).\n"
    )
    print(body)
    print(write_part("p2_cores", "P2 control: parallelism the machine gives", command_line(), body, figures, load))


if __name__ == "__main__":
    main()
