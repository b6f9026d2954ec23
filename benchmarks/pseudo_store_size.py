"""Pseudo-label store size per frame (uint8 vs float16) against raw float32, and the quantisation error.

python benchmarks/pseudo_store_size.py [--videos 1 --frames 20 --size 320 320 --actors 2]

Runs the infer stage on a synthetic set with a tiny random-weight teacher, twice per encoding: as initialised
(lukewarm maps, p mostly in 0.3..0.9: the worst case for compression) and with its logits sharpened x16 (sure
of most pixels, as a trained teacher is). Size = bytes on disk of pseudo.zarr (chunks and metadata) per frame;
raw = float32 probability + float32 uncertainty. The error is the largest |stored - float32| over all pixels.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table, write_result  # noqa: E402
from prvos_core.config import InferSection, IngestSection  # noqa: E402
from prvos_core.data.manifest import read_manifest  # noqa: E402
from prvos_core.datasets.synth import generate_synthetic  # noqa: E402
from prvos_core.inference.predict import load_predictor, predict_expression  # noqa: E402
from prvos_core.model.builders import build_model  # noqa: E402
from prvos_core.model.checkpoint import save_checkpoint  # noqa: E402
from prvos_core.pseudo.store import open_store, read_pseudo_label  # noqa: E402
from prvos_core.pseudo.uncertainty import binary_entropy  # noqa: E402
from prvos_core.text.cache import TextCache  # noqa: E402
from prvos_core.text.encoder import TextEncoder  # noqa: E402
from stages import infer, ingest  # noqa: E402

TEACHERS = {"random init (lukewarm)": 1.0, "logits x16 (confident)": 16.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), help="frame and model input size (h w)")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    size = tuple(args.size)
    work = Path(tempfile.mkdtemp(prefix="prvos-bench-store-"))
    try:
        ray.init(num_cpus=args.actors, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        generate_synthetic(work / "data", videos=args.videos, valid_videos=1, frames=args.frames, size=size)
        ingest.run(ingest.IngestInputs(str(work / "data"), ("train",), str(work / "ingest")), IngestSection())
        manifest = read_manifest(str(work / "ingest"))
        encoder = TextEncoder.from_path(None)
        cache = TextCache.for_encoder(str(work / "text.zarr"), encoder)
        cache.build(sorted({e.text for e in manifest.expressions}), encoder)
        rows = []
        for name, sharpen in TEACHERS.items():
            checkpoint = _checkpoint(work / f"ckpt-{sharpen:g}", encoder.dim, sharpen)
            reference = _float_predictions(checkpoint, manifest, cache, size)
            for encoding in ("uint8", "float16"):
                out = work / f"infer-{sharpen:g}-{encoding}"
                inputs = infer.InferInputs(str(work / "ingest"), str(work / "text.zarr"), encoder.identity,
                                           checkpoint, "train", str(out), size)  # fmt: skip
                result = infer.run(inputs, InferSection(actors=args.actors, encoding=encoding))
                prob_error, uncertainty_error = _max_errors(out, reference)
                raw = 2 * 4 * size[0] * size[1]
                per_frame = result.bytes_per_frame
                rows.append([name, encoding, f"{per_frame:,.0f}", f"{raw:,}", f"1/{raw / per_frame:.1f}",
                             f"{prob_error:.2e}", f"{uncertainty_error:.2e}"])  # fmt: skip
        ray.shutdown()
        frames, expressions = result.frames, result.expressions
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ["teacher", "encoding", "bytes/frame on disk", "raw float32 pair", "ratio", "max prob error",
              "max uncertainty error"]  # fmt: skip
    body = (
        f"{frames} frames ({expressions} expressions over {args.videos} synthetic video(s) x {args.frames} frames), "
        f"model input and frames {size[0]}x{size[1]}, tiny model with random weights, zstd level 3, one chunk per "
        f"frame.\n\n{markdown_table(header, rows)}\n\nuint8 stores round(255 p): its error bound is 1/510 = "
        f"1.96e-03; float16 keeps 11 significant bits (error <= 2^-12 = 2.44e-04 on [0.5, 1]).\n"
    )
    print(body)
    path = write_result("pseudo_store.md", "Pseudo-label store size", "python " + " ".join(sys.argv), body)
    print(f"wrote {path}")


def _checkpoint(folder: Path, text_dim: int, sharpen: float) -> str:
    """A seeded random tiny model whose final logits are multiplied by `sharpen`, saved as the EMA teacher."""
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=text_dim, pretrained=False)
    with torch.no_grad():
        model.decoder.predict.weight.mul_(sharpen)
        model.decoder.predict.bias.mul_(sharpen)
    return str(save_checkpoint(folder, model, meta={"epoch": 0, "step": 0, "round": 0}))


def _float_predictions(checkpoint: str, manifest, cache: TextCache, size) -> dict[str, np.ndarray]:
    """Expression id -> float32 probabilities (T, h, w), made in-process as the stage's actors make them."""
    torch.set_num_threads(1)  # as the actors (threads_per_actor=1): the same floats
    model = load_predictor(checkpoint, "ema", torch.device("cpu"))
    cfg = InferSection()
    predictions = {}
    for expression in manifest.split_expressions("train"):
        words, mask = cache.lookup([expression.text])
        video = manifest.video(expression.video_id, "train")
        frames = predict_expression(model, video, expression, words[0], mask[0], size,
                                    first_mask_from_gt=cfg.first_frame_gt, memory_frames=cfg.memory_frames,
                                    anchors=cfg.anchors, flip=cfg.uncertainty == "flip")  # fmt: skip
        predictions[expression.expression_id] = np.stack([prob for _, prob in frames])
    return predictions


def _max_errors(out: Path, reference: dict[str, np.ndarray]) -> tuple[float, float]:
    store = open_store(str(out / "pseudo.zarr"), mode="r")
    prob_error = uncertainty_error = 0.0
    for expression_id, prob in reference.items():
        label = read_pseudo_label(store, expression_id)
        prob_error = max(prob_error, float(np.abs(label.prob - prob).max()))
        uncertainty_error = max(uncertainty_error, float(np.abs(label.uncertainty - binary_entropy(prob)).max()))
    return prob_error, uncertainty_error


if __name__ == "__main__":
    main()
