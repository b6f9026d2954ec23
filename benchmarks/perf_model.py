"""P1b: the `r50` paper-setting training step (320x320, 5-frame clip, forward + backward + Adam) profiled by module,
against a seed-style reference of the two parts the seed spends most of its forward in; and the CPU vs GPU
ResNet-50 ratio that projects our step onto a GPU.

    .venv/bin/python benchmarks/perf_model.py [--threads 2 --steps 2 --rounds 3]

1. The whole step, with forward and backward timers on every top-level part (forward hooks; full backward
   hooks, with the frames requiring grad so that every part's backward hook fires when its input gradient is
   done), and `torch.profiler` over one step with `record_function` around the named steps.
2. Per clip, forward + backward of each module alone on inputs of the real shapes, ours vs the seed-style
   reference (interleaved, median):
   - ours: `CrossModalAttention` (1x1 conv res5 2048->512, 8-head attention of the 10x10 res5 pixels to the 20
     words, FFN) and `RefineDecoder` (res4 -> res3 -> res2, 256 channels, sentence FiLM).
   - seed-style cross-modal (`SeedCrossModal`, URVOS-like, at res3, res4 and res5): per level a 3x3 conv of the
     level's full width to 512, words 768->512 and 8 spatial coordinates -> 512; for EVERY (word, pixel) pair the
     joint feature relu(v_p + w_l + s_p) (= a linear layer over their concatenation), a 512->512 value and
     512->8 head logits per pair, softmax over the words of each pixel and head, the weighted sum, a 1x1
     conv out + residual. Its cost is O(words x pixels x 512^2) per level (res3: 20 x 1,600 pairs a frame).
   - seed-style decoder (`SeedDecoder`): the seed's RF4/RF3/RF2 with self-attention: 3x3 conv of (res4 1024 +
     memory readout 512 + cross-modal 512) -> 256 and a residual block; then RF3 (3x3 skip conv 512->256,
     residual block, upsample-add, residual block) and RF2 (same from res2's 256); after each level a
     non-local self-attention block over all the level's pixels (1x1 q, k 256->128, v 256->256, out 256->256,
     residual), so 6,400 x 6,400 attention at res2; a 3x3 conv 256->2.
3. torchvision ResNet-50 training step (224x224, batch 8, SGD) on this CPU: images/s, the figure that the
   published A100 throughput divides.
r50 is built with pretrained=False (no weights here); weights do not change the speed.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import perf_setup  # noqa: F401
from perf_setup import LoadLog, command_line, median, write_part

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import markdown_table  # noqa: E402
from prvos_core.model.builders import build_model, count_parameters  # noqa: E402
from prvos_core.model.loss import clip_loss  # noqa: E402
from prvos_core.model.layers import ResBlock  # noqa: E402

CLIP, WORDS, TEXT_DIM = 5, 20, 768
# NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, "Training performance: NVIDIA DGX A100 (8x A100 80GB)",
# 1 GPU, mixed precision, 224x224, batch 256 (pytorch-21.03 container).
A100_RN50_TRAIN_IMAGES_PER_S = 2470.0
PARTS = ("backbone.stem", "backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5", "key_projection",
         "text_projection", "cross_modal", "memory_encoder", "decoder")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed whole steps (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the module comparison")
    parser.add_argument("--rn50-batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = LoadLog()
    torch.manual_seed(0)
    model = build_model("r50", text_dim=TEXT_DIM, pretrained=False)
    step_figures, step_body = _whole_step(model, args, load)
    module_figures, module_body = _modules(model, args, load)
    rn50_figures, rn50_body = _rn50_ratio(args, load)
    figures = {**step_figures, **module_figures, **rn50_figures, "parameters": count_parameters(model).total}
    gpu_step = step_figures["step_seconds"] / rn50_figures["gpu_over_cpu"]
    figures["gpu_step_seconds_projected"] = gpu_step
    body = (
        step_body
        + "\n"
        + module_body
        + "\n"
        + rn50_body
        + (
            f"\nProjected r50 step on one A100 (mixed precision): {step_figures['step_seconds']:.2f} s / "
            f"{rn50_figures['gpu_over_cpu']:.0f} = **{1000 * gpu_step:.0f} ms** per 5-frame clip (assumes our step "
            "keeps the same share of the GPU's peak as ResNet-50 at batch 256, which a batch-1 clip with frame-by-frame "
            "decoding does not: read it as a lower bound).\n"
        )
    )
    print(body)
    print(write_part("p1b_model", "P1b r50 model step by module", command_line(), body, figures, load))


class _Timers:
    """Forward and backward wall time per part, from module hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.forward, self.backward = defaultdict(float), defaultdict(float)
        self._started: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.handles = []
        for name in PARTS:
            module = model.get_submodule(name)
            self.handles += [
                module.register_forward_pre_hook(self._start(name, "f")),
                module.register_forward_hook(self._stop(name, "f", self.forward)),
                module.register_full_backward_pre_hook(self._start(name, "b")),
                module.register_full_backward_hook(self._stop(name, "b", self.backward)),
            ]

    def _start(self, name: str, kind: str):
        def hook(*_):
            self._started[(name, kind)].append(time.perf_counter())

        return hook

    def _stop(self, name: str, kind: str, totals: dict):
        def hook(*_):
            totals[name] += time.perf_counter() - self._started[(name, kind)].pop()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _step_inputs(model: nn.Module):
    height, width = model.spec.input_size
    frames = torch.rand(1, CLIP, 3, height, width)
    words = torch.randn(1, WORDS, TEXT_DIM)
    word_mask = torch.ones(1, WORDS, dtype=torch.bool)
    labels = (torch.rand(1, CLIP, height, width) > 0.8).long()
    return frames, words, word_mask, labels


def _whole_step(model: nn.Module, args, load: LoadLog) -> tuple[dict, str]:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    frames, words, word_mask, labels = _step_inputs(model)
    model.train()

    def step(track_frames: bool = False) -> tuple[float, float]:
        started = time.perf_counter()
        logits = model(frames.clone().requires_grad_(track_frames), words, word_mask)
        loss = clip_loss(logits.float(), labels, None, 10.0).total
        forward = time.perf_counter() - started
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return forward, time.perf_counter() - started

    step()  # warm-up
    plain = [step() for _ in range(args.steps)]
    load.sample()
    timers = _Timers(model)
    hooked = [step(track_frames=True) for _ in range(args.steps)]
    timers.remove()
    load.sample()
    forward_s, step_s = median([f for f, _ in plain]), median([s for _, s in plain])
    hooked_forward, hooked_step = median([f for f, _ in hooked]), median([s for _, s in hooked])
    n = len(hooked)
    fwd = {name: timers.forward[name] / n for name in PARTS}
    bwd = {name: timers.backward[name] / n for name in PARTS}
    read_memory_f = hooked_forward - sum(fwd.values())  # read_memory, loss, glue: not a module
    rows = [[name, f"{fwd[name]:.3f}", f"{100 * fwd[name] / hooked_forward:.1f}%", f"{bwd[name]:.3f}",
             f"{fwd[name] + bwd[name]:.3f}"] for name in PARTS]  # fmt: skip
    rows.append(["other (memory read, loss, glue / autograd engine, Adam)", f"{read_memory_f:.3f}",
                 f"{100 * read_memory_f / hooked_forward:.1f}%", f"{hooked_step - hooked_forward - sum(bwd.values()):.3f}",
                 ""])  # fmt: skip
    rows.append(["**whole step (hooked run)**", f"{hooked_forward:.3f}", "100%", f"{hooked_step - hooked_forward:.3f}",
                 f"{hooked_step:.3f}"])  # fmt: skip
    trunk = sum(fwd[name] for name in PARTS if name.startswith("backbone"))
    figures = {
        "step_seconds": step_s,
        "forward_seconds": forward_s,
        "forward_by_part": fwd,
        "backward_by_part": bwd,
        "cross_modal_forward_share": fwd["cross_modal"] / hooked_forward,
        "decoder_forward_share": fwd["decoder"] / hooked_forward,
        "trunk_forward_share": trunk / hooked_forward,
    }
    profile = _profile_table(model, frames, words, word_mask, labels)
    body = (
        f"r50, pretrained=False, {count_parameters(model).total / 1e6:.1f}M parameters, input 320x320, one "
        f"{CLIP}-frame clip, {WORDS} words of width {TEXT_DIM} (DistilBERT), trainable all_frozen_bn, Adam, "
        f"{args.threads} torch threads. Median of {args.steps} steps after a warm-up.\n\n"
        f"Plain step: **{step_s:.2f} s** (forward {forward_s:.2f} s, backward + Adam {step_s - forward_s:.2f} s). "
        f"The seed's step on a 2-core CPU: ~15 s (forward 8.3 s: decoder 3.3, cross-modal 2.4, trunks 1.8).\n\n"
        f"By part (hooked run, s per clip; the frames require grad there so every backward hook fires):\n\n"
        f"{markdown_table(['part', 'forward s', 'share of forward', 'backward s', 'forward + backward s'], rows)}\n\n"
        f"Shares of our forward: cross-modal attention **{100 * figures['cross_modal_forward_share']:.1f}%** (seed "
        f"~29%), decoder **{100 * figures['decoder_forward_share']:.1f}%** (seed ~40%), ResNet trunk "
        f"{100 * figures['trunk_forward_share']:.1f}%.\n\n"
        f"torch.profiler over one step (CPU, record_function around the named steps), top operators by self CPU "
        f"time:\n\n```\n{profile}\n```\n"
    )
    return figures, body


def _profile_table(model, frames, words, word_mask, labels) -> str:
    from torch.profiler import ProfilerActivity, profile, record_function

    originals = {}
    for name in ("encode_frame", "encode_text", "attend_words", "encode_memory", "read_memory", "decode"):
        original = getattr(model, name)
        originals[name] = original

        def wrapped(*a, _original=original, _name=name, **k):
            with record_function(f"prvos.{_name}"):
                return _original(*a, **k)

        setattr(model, name, wrapped)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            logits = model(frames, words, word_mask)
            clip_loss(logits.float(), labels, None, 10.0).total.backward()
    finally:
        for name in originals:
            delattr(model, name)
    averages = prof.key_averages()
    named = sorted((e for e in averages if e.key.startswith("prvos.")), key=lambda e: -e.cpu_time_total)
    lines = [f"{'named step (forward)':<22}{'CPU total ms':>14}{'calls':>7}"]
    lines += [f"{e.key:<22}{e.cpu_time_total / 1000:>14.0f}{e.count:>7}" for e in named]
    ops = averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=34)
    return "\n".join(lines) + "\n\noperators (forward + backward):\n" + ops


class SeedCrossModal(nn.Module):
    """URVOS-like cross-modal attention at one level, over every (word, pixel) pair (see the module docstring).

    visual (N,C,h,w), words (N,L,768), word_mask (N,L) -> (N,512,h,w)."""

    def __init__(self, in_channels: int, width: int = 512, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.visual = nn.Conv2d(in_channels, width, 3, padding=1)
        self.words = nn.Linear(TEXT_DIM, width)
        self.spatial = nn.Linear(8, width)
        self.value = nn.Linear(width, width)
        self.logits = nn.Linear(width, heads)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, visual: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        v = self.visual(visual)
        n, c, h, w = v.shape
        pixels = v.flatten(2).transpose(1, 2)  # (N, P, C)
        joint = F.relu(pixels[:, None] + self.words(words)[:, :, None] + self.spatial(_coordinates(h, w))[None, None])
        value = self.value(joint).unflatten(-1, (self.heads, c // self.heads))  # (N, L, P, H, C/H)
        scores = self.logits(joint).masked_fill(~word_mask[:, :, None, None], float("-inf")).softmax(dim=1)
        attended = (scores[..., None] * value).sum(1).flatten(-2)  # (N, P, C)
        return v + self.out(attended.transpose(1, 2).reshape(n, c, h, w))


def _coordinates(h: int, w: int) -> torch.Tensor:
    """The 8 spatial channels of CMSA/URVOS per pixel: x, y of its left/centre/right, 1/w, 1/h -> (h*w, 8)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x0, x1, y0, y1 = xs / w * 2 - 1, (xs + 1) / w * 2 - 1, ys / h * 2 - 1, (ys + 1) / h * 2 - 1
    channels = [x0, (x0 + x1) / 2, x1, y0, (y0 + y1) / 2, y1, torch.full_like(xs, 1 / w), torch.full_like(xs, 1 / h)]
    return torch.stack(channels, -1).flatten(0, 1)


class _SelfAttention2d(nn.Module):
    """Non-local block: every pixel of the level attends to every other. (N,C,h,w) -> (N,C,h,w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query, self.key = nn.Conv2d(channels, channels // 2, 1), nn.Conv2d(channels, channels // 2, 1)
        self.value, self.out = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (layer(x).flatten(2).transpose(1, 2) for layer in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(1, 2).reshape(x.shape))


class SeedDecoder(nn.Module):
    """RF4/RF3/RF2 with a self-attention block after each level (see the module docstring)."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.fuse4, self.block4, self.attention4 = nn.Conv2d(1024 + 512 + 512, dim, 3, padding=1), ResBlock(dim), _SelfAttention2d(dim)  # fmt: skip
        self.skip3, self.skip_block3, self.block3, self.attention3 = nn.Conv2d(512, dim, 3, padding=1), ResBlock(dim), ResBlock(dim), _SelfAttention2d(dim)  # fmt: skip
        self.skip2, self.skip_block2, self.block2, self.attention2 = nn.Conv2d(256, dim, 3, padding=1), ResBlock(dim), ResBlock(dim), _SelfAttention2d(dim)  # fmt: skip
        self.predict = nn.Conv2d(dim, 2, 3, padding=1)

    def forward(self, res2, res3, res4, text_visual, readout, size):
        text_up = F.interpolate(text_visual, size=res4.shape[-2:], mode="bilinear", align_corners=False)
        x4 = self.attention4(self.block4(self.fuse4(torch.cat([res4, readout, text_up], 1))))
        up = F.interpolate(x4, size=res3.shape[-2:], mode="bilinear", align_corners=False)
        x3 = self.attention3(self.block3(self.skip_block3(self.skip3(res3)) + up))
        up = F.interpolate(x3, size=res2.shape[-2:], mode="bilinear", align_corners=False)
        x2 = self.attention2(self.block2(self.skip_block2(self.skip2(res2)) + up))
        return F.interpolate(self.predict(F.relu(x2)), size=size, mode="bilinear", align_corners=False)


def _modules(model, args, load: LoadLog) -> tuple[dict, str]:
    """Forward + backward per clip of each module alone, ours vs seed-style, interleaved."""
    torch.manual_seed(0)
    n = CLIP
    res = {"res2": (256, 80), "res3": (512, 40), "res4": (1024, 20), "res5": (2048, 10)}
    feats = {name: torch.randn(n, c, s, s, requires_grad=True) for name, (c, s) in res.items()}
    words, word_mask = torch.randn(n, WORDS, TEXT_DIM), torch.ones(n, WORDS, dtype=torch.bool)
    word_mask[:, 12:] = False  # a 12-token expression padded to 20
    text = torch.randn(n, WORDS, 512, requires_grad=True)
    text_visual = torch.randn(n, 512, 10, 10, requires_grad=True)
    readout = torch.randn(n, 512, 20, 20, requires_grad=True)
    sentence = torch.randn(n, 512)
    seed_cross = nn.ModuleList([SeedCrossModal(512), SeedCrossModal(1024), SeedCrossModal(2048)])
    seed_decoder = SeedDecoder()

    def ours_cross():
        model.cross_modal(feats["res5"], text, word_mask).sum().backward()

    def seed_cross_modal():
        out = sum(
            m(feats[level], words, word_mask).sum()
            for m, level in zip(seed_cross, ("res3", "res4", "res5"), strict=True)
        )
        out.backward()

    def ours_decoder():
        model.decoder(feats, text_visual, readout, (320, 320), sentence).sum().backward()

    def seed_decode():
        seed_decoder(feats["res2"], feats["res3"], feats["res4"], text_visual, readout, (320, 320)).sum().backward()

    candidates = {"ours: cross-modal": ours_cross, "seed-style: cross-modal (res3+res4+res5)": seed_cross_modal,
                  "ours: decoder": ours_decoder, "seed-style: decoder": seed_decode}  # fmt: skip
    times = {name: [] for name in candidates}
    for name, function in candidates.items():
        if name.startswith("ours"):  # warm-up; the seed-style ones run for seconds, their first-call cost is noise
            function()
    for _ in range(args.rounds):
        for name, function in candidates.items():
            times[name].append(perf_setup.timed(function))
        load.sample()
    t = {name: median(values) for name, values in times.items()}
    cross_ratio = t["seed-style: cross-modal (res3+res4+res5)"] / t["ours: cross-modal"]
    decoder_ratio = t["seed-style: decoder"] / t["ours: decoder"]
    counts = {"ours: cross-modal": model.cross_modal, "seed-style: cross-modal (res3+res4+res5)": seed_cross,
              "ours: decoder": model.decoder, "seed-style: decoder": seed_decoder}  # fmt: skip
    rows = [[name, f"{sum(p.numel() for p in counts[name].parameters()) / 1e6:.2f}M", f"{value:.3f}"]
            for name, value in t.items()]  # fmt: skip
    figures = {"module_seconds": t, "cross_modal_cheaper_x": cross_ratio, "decoder_cheaper_x": decoder_ratio}
    body = (
        f"### Ours vs the seed-style reference, per {CLIP}-frame clip (forward + backward, each module alone)\n\n"
        f"Inputs at the real r50 shapes (res2 256x80x80, res3 512x40x40, res4 1024x20x20, res5 2048x10x10, 20 "
        f"words of which 12 real), {args.threads} threads, median of {args.rounds} interleaved rounds. The "
        "reference modules are described in benchmarks/perf_model.py's docstring.\n\n"
        f"{markdown_table(['module', 'parameters', 's per clip (fwd + bwd)'], rows)}\n\n"
        f"Ours is **{cross_ratio:.0f}x** cheaper in cross-modal attention and **{decoder_ratio:.1f}x** cheaper in "
        "the decoder per clip.\n"
    )
    return figures, body


def _rn50_ratio(args, load: LoadLog) -> tuple[dict, str]:
    """torchvision ResNet-50 train step at 224x224 on this CPU -> images/s, and the A100 / CPU ratio."""
    torch.manual_seed(0)
    rn50 = torchvision.models.resnet50(weights=None).train()
    optimizer = torch.optim.SGD(rn50.parameters(), lr=0.1, momentum=0.875)
    images, targets = torch.randn(args.rn50_batch, 3, 224, 224), torch.randint(0, 1000, (args.rn50_batch,))

    def step():
        loss = F.cross_entropy(rn50(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    seconds = median([perf_setup.timed(step) for _ in range(3)])
    load.sample()
    cpu_rate = args.rn50_batch / seconds
    ratio = A100_RN50_TRAIN_IMAGES_PER_S / cpu_rate
    figures = {"rn50_cpu_images_per_s": cpu_rate, "a100_rn50_images_per_s": A100_RN50_TRAIN_IMAGES_PER_S,
               "gpu_over_cpu": ratio}  # fmt: skip
    body = (
        "### GPU per-step figure (no GPU is lent to this task)\n\n"
        f"torchvision ResNet-50 training step (224x224, batch {args.rn50_batch}, SGD, {args.threads} threads) on "
        f"this CPU: **{cpu_rate:.1f} images/s**. Published: {A100_RN50_TRAIN_IMAGES_PER_S:,.0f} images/s on one A100 "
        "80GB with mixed precision (NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, DGX A100 training "
        f"table, batch 256). Ratio A100 / this CPU: **{ratio:.0f}x**.\n"
    )
    return figures, body


if __name__ == "__main__":
    main()
