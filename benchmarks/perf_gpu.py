"""The GPU measurement, prepared to run as one script (<= 8 min on one GPU): train clips/s of the r50 step per
precision / memory format / compile, the loader's share of a step, and teacher frames/s with shared frames.

    .venv/bin/python benchmarks/perf_gpu.py                 # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/perf_gpu.py --smoke         # anywhere: tiny sizes on the CPU, checks it runs

Train: `prvos_core.model.step` exactly as stages/train.py uses it (prepare_student, model_frames, forward,
clip_loss, optimizer_step), r50 at 320x320, 5-frame clips, batch 6 (the paper config), random weights (the
ImageNet file is not shipped; the cost per step is the same), 10 warm-up steps then 30 timed, synchronised.
Loader share: the same step fed by `clip_loader` over the frame store of a synthetic set (frames stage), with
`--loader-workers` processes: share = time waiting for the next batch / step time.
Teacher: `VideoFrames` + `predict_expression` (the infer actor's path) on one synthetic video of 20 frames with
4 expressions, shared vs one at a time, frames/s.
Writes results/performance/gpu.{md,json}.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import perf_setup  # noqa: F401
from perf_setup import LoadLog, command_line, make_workspace, median, write_part

import torch  # noqa: E402

from benchmarks.common import markdown_table  # noqa: E402
from prvos_core.config import FramesSection  # noqa: E402
from prvos_core.data.clips import ClipDataset, ClipSpec, clip_loader, clip_sources  # noqa: E402
from prvos_core.data.manifest import read_manifest  # noqa: E402
from prvos_core.inference.predict import VideoFrames, predict_expression  # noqa: E402
from prvos_core.model.builders import build_model  # noqa: E402
from prvos_core.model.loss import clip_loss  # noqa: E402
from prvos_core.model.step import forward, grad_scaler, model_frames, optimizer_step, prepare_student  # noqa: E402
from prvos_core.model.step import resolve_precision  # noqa: E402
from prvos_core.text.cache import TextCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: that it runs (CPU is fine)")
    parser.add_argument("--loader-workers", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, shape = ("tiny", (1, 2, 3, 64, 64)) if args.smoke else ("r50", (6, 5, 3, 320, 320))
    steps, warm = (3, 1) if args.smoke else (30, 10)
    load = LoadLog()
    rows, figures = [], {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    variants = [("fp32", False, False), ("auto", False, False), ("auto", True, False)]
    if not args.smoke:
        variants.append(("auto", True, True))
    for precision_name, channels_last, compiled in variants:
        rate = _train_rate(size, shape, device, precision_name, channels_last, compiled, steps, warm)
        name = f"{resolve_precision(precision_name, device).name}, channels_last={channels_last}, compile={compiled}"
        figures[f"train {name}"] = rate
        rows.append([f"train step ({size}, batch {shape[0]} x {shape[1]} frames {shape[3]}x{shape[4]}): {name}",
                     f"{rate:.1f} clips/s"])  # fmt: skip
        load.sample()
    work = Path(tempfile.mkdtemp(prefix="prvos-perf-gpu-"))
    try:
        import ray

        ray.init(num_cpus=max(2, args.loader_workers + 1), include_dashboard=False, logging_level="ERROR",
                 _temp_dir=str(work / "ray"))  # fmt: skip
        space = make_workspace(work, videos=4 if args.smoke else 8, frames=20, size=(720, 1280))
        share = _loader_share(space, work, size, shape, device, args, steps, warm)
        figures["loader_share"] = share
        rows.append([f"loader share of a step, {args.loader_workers} loader processes, frame store",
                     f"{100 * share:.1f} %"])  # fmt: skip
        teacher = _teacher(space, size, shape, device)
        figures.update(teacher)
        rows.append(["teacher frames/s, one expression at a time", f"{teacher['teacher_alone_fps']:.1f}"])
        rows.append(["teacher frames/s, a video's 4 expressions together", f"{teacher['teacher_shared_fps']:.1f}"])
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = f"Device: **{figures['device']}**.\n\n" + markdown_table(["what", "measured"], rows) + "\n"
    print(body)
    if not args.smoke:
        print(write_part("gpu", "GPU step, loader share and teacher", command_line(), body, figures, load))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(shape, device, text_dim: int):
    batch, length, _, height, width = shape
    frames = torch.randint(0, 256, shape, dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch, length, height, width), device=device)
    return frames, labels, torch.ones(batch, length, height, width, device=device), text_dim


def _train_rate(size, shape, device, precision_name, channels_last, compiled, steps, warm) -> float:
    torch.manual_seed(0)
    model = build_model(size, text_dim=384, pretrained=size == "tiny")
    prepare_student(model, device, channels_last=channels_last, compile=compiled)
    model.train()
    precision = resolve_precision(precision_name, device)
    scaler = grad_scaler(device, precision)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    frames, labels, weights, text_dim = _batch(shape, device, 384)
    words = torch.randn(shape[0], 20, text_dim, device=device)
    word_mask = torch.ones(shape[0], 20, dtype=torch.bool, device=device)
    for step in range(warm + steps):
        if step == warm:
            _sync(device)
            started = time.perf_counter()
        logits = forward(model, model_frames(frames, device, channels_last=channels_last), words, word_mask, precision)
        optimizer_step(clip_loss(logits, labels, weights, 10.0, 0.0).total, optimizer, scaler)
    _sync(device)
    return steps * shape[0] / (time.perf_counter() - started)


def _loader_share(space, work, size, shape, device, args, steps, warm) -> float:
    from stages import frames

    spec = ClipSpec(frames=shape[1], size=shape[3:])
    store = frames.run(frames.FramesInputs(space.manifest_dir, str(work / "frames"), spec.size, spec.min_crop),
                       FramesSection()).store  # fmt: skip
    text = TextCache(space.text_cache, space.text_identity).load_all()
    dataset = ClipDataset(clip_sources(read_manifest(space.manifest_dir), "train"), text.lookup, spec,
                          frame_store=store, clips=shape[0] * (warm + steps))  # fmt: skip
    loader = clip_loader(dataset, torch.utils.data.SequentialSampler(dataset), batch_size=shape[0],
                         workers=args.loader_workers, pin_memory=device.type == "cuda")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(size, text_dim=space.text_dim, pretrained=size == "tiny")
    prepare_student(model, device, channels_last=True, compile=False)
    precision = resolve_precision("auto", device)
    scaler = grad_scaler(device, precision)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    waiting, stepping = [], []
    loader.sampler.set_epoch(0)
    iterator = iter(loader)
    for step in range(warm + steps):
        _sync(device)
        started = time.perf_counter()
        batch = next(iterator)
        ready = time.perf_counter()
        logits = forward(model, model_frames(batch["frames"], device, channels_last=True),
                         batch["words"].to(device), batch["word_mask"].to(device), precision)  # fmt: skip
        loss = clip_loss(logits, batch["labels"].to(device).long(), batch["weights"].to(device), 10.0, 0.0).total
        optimizer_step(loss, optimizer, scaler)
        _sync(device)
        if step >= warm:
            waiting.append(ready - started)
            stepping.append(time.perf_counter() - started)
    return sum(waiting) / sum(stepping)


def _teacher(space, size, shape, device) -> dict:
    manifest = read_manifest(space.manifest_dir)
    text = TextCache(space.text_cache, space.text_identity).load_all()
    video = next(v for v in manifest.videos if v.split == "train")
    expressions = [e for e in manifest.split_expressions("train") if e.video_id == video.video_id][:4]
    torch.manual_seed(0)
    model = build_model(size, text_dim=space.text_dim, pretrained=size == "tiny").to(device).eval()
    rates = {}
    for name, shared in (("teacher_alone_fps", False), ("teacher_shared_fps", True)):
        times = []
        for _ in range(3):
            frames = VideoFrames(model, video, shape[3:]) if shared else None
            _sync(device)
            started = time.perf_counter()
            for expression in expressions:
                words, word_mask = text.lookup([expression.text])
                for _index, _prob in predict_expression(model, video, expression, words[0], word_mask[0], shape[3:],
                                                        first_mask_from_gt=True, memory_frames=4, anchors="all",
                                                        frames=frames):  # fmt: skip
                    pass
            _sync(device)
            times.append(time.perf_counter() - started)
        rates[name] = len(expressions) * video.n_frames / median(times)
    return rates


if __name__ == "__main__":
    main()
