"""Efficacy ablation: do the pseudo-labeling rounds beat ground-truth-only training?

Four variants with the same seed and the same training budget (epochs per round, rounds), on data whose train
split has ground truth on 1 of 5 frames:

  (a) gt_only     ground truth only (no pseudo-labels; the same number of training rounds)
  (b) raw_pseudo  pseudo-labels without refinement: every pixel kept with weight 1, every frame kept
  (c) full        the method: refined, uncertainty-weighted pseudo-labels on the frames refinement chose
  (d) full_gt     ground truth on every train frame (the upper bound)

All four run in one run folder per seed, one after the other, through the pipeline itself: each variant changes
settings, so the runner re-runs exactly the stages whose fingerprint changed and reuses the rest (ingest, text
and round 0's student are shared by a-c). The metrics of each variant are read from the commit markers before
the next variant replaces them.

    python benchmarks/efficacy.py --seeds 0 1 2                    # synthetic set (configs/demo.yaml settings)
    python benchmarks/efficacy.py --real ../shared/data/ref_davis16_mini --seeds 0

`--real` builds a derived dataset in the work folder from real clips with a mask on every frame: the train
split keeps the masks of every 5th frame in Annotations/ and all of them in full_annotations/ (used only to
measure pseudo-labels and for the upper bound); the valid split is scored on all its masks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from benchmarks.common import markdown_table, write_result  # noqa: E402
from pipelines.run_store import EVALUATE, REFINE, TRAIN, stage_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "raw_pseudo": ["refine.enabled=false"],
    "gt_only": ["pseudo_labels=false"],
    "full_gt": ["pseudo_labels=false", "train.gt_source=full_annotations"],
    # Not in the default list: the method with one knob changed (`--variants full_ema099 ...`, the sweep).
    # Frame selection: every pseudo-labelled frame that passes the frame rules instead of the 3 most certain.
    "full_all_frames": ["refine.frames_per_expression=0"],
    "full_ema099": ["train.ema_decay=0.99"],  # a slower teacher (demo.yaml: 0.95)
    "full_no_ema": ["train.ema_decay=0"],  # the teacher is the last student itself
    "full_p50": ["refine.percentile=50"],  # stricter thresholds: each class keeps its most confident 50 %
    "full_p5": ["refine.percentile=5"],  # looser: 95 % (within the 0.7-0.95 clamp)
    "full_uniform": ["refine.weighting=uniform"],  # kept pixels weigh 1 instead of rising with confidence
}
DEFAULT_VARIANTS = ["full", "raw_pseudo", "gt_only", "full_gt"]
LABELS = {
    "gt_only": "(a) GT only",
    "raw_pseudo": "(b) raw pseudo-labels",
    "full": "(c) full method",
    "full_gt": "(d) GT on every frame",
    "full_all_frames": "(c') every frame that passes the rules",
    "full_ema099": "(c') EMA decay 0.99",
    "full_no_ema": "(c') no EMA (teacher = student)",
    "full_p50": "(c') percentile 50 (stricter)",
    "full_p5": "(c') percentile 5 (looser)",
    "full_uniform": "(c') uniform pixel weights",
}
PSEUDO_KEYS = ("pseudo_precision_full", "pseudo_recall_full", "pseudo_coverage_full", "teacher_precision_full")


def derive_sparse_dataset(source: Path, target: Path, label_every: int) -> None:
    """Real clips with dense masks -> the same clips with train masks on every `label_every`-th frame only
    (all masks kept in full_annotations/ to score pseudo-labels)."""
    shutil.copytree(source, target)
    train = target / "train"
    shutil.copytree(train / "Annotations", train / "full_annotations")
    for video in sorted((train / "Annotations").iterdir()):
        for index, mask in enumerate(sorted(video.glob("*.png"))):
            if index % label_every:
                mask.unlink()
    meta_path = train / "meta.json"
    meta = json.loads(meta_path.read_text())
    for video_id, video in meta["videos"].items():
        kept = {p.stem for p in (train / "Annotations" / video_id).glob("*.png")}
        for obj in video["objects"].values():
            obj["frames"] = [frame for frame in obj["frames"] if frame in kept]
    meta_path.write_text(json.dumps(meta))


def seen_dataset(data: Path, target: Path) -> Path:
    """The train videos as a split named `valid`, masks on every frame (train/full_annotations): scoring a student
    on it says how well it segments the videos it was trained on, next to the unseen valid videos."""
    from prvos_core.data.masks import read_mask

    train, valid = data / "train", target / "valid"
    valid.mkdir(parents=True)
    (valid / "JPEGImages").symlink_to(train / "JPEGImages")
    (valid / "Annotations").symlink_to(train / "full_annotations")
    meta = json.loads((train / "meta.json").read_text())
    for video_id, video in meta["videos"].items():
        masks = {png.stem: read_mask(png) for png in sorted((train / "full_annotations" / video_id).glob("*.png"))}
        for object_id, obj in video["objects"].items():
            obj["frames"] = [frame for frame, ids in masks.items() if (ids == int(object_id)).any()]
    (valid / "meta.json").write_text(json.dumps(meta))
    expressions = target / "meta_expressions" / "valid"
    expressions.mkdir(parents=True)
    shutil.copy(data / "meta_expressions" / "train" / "meta_expressions.json", expressions)
    return target


def score_seen(seen: Path, checkpoint: str, size: tuple[int, int], work: Path) -> dict[str, float]:
    """J, F, J&F of a student checkpoint on the seen-video split (its own manifest and text cache)."""
    from prvos_core.config import EvaluateSection, IngestSection
    from prvos_core.data.manifest import read_manifest
    from prvos_core.text.cache import TextCache
    from prvos_core.text.encoder import TextEncoder
    from stages import evaluate, ingest

    manifest_dir = work / "manifest"
    if not manifest_dir.exists():
        manifest_dir.mkdir(parents=True)
        ingest.run(ingest.IngestInputs(str(seen), ("valid",), str(manifest_dir)), IngestSection())
    encoder = TextEncoder.from_path(None)
    cache = TextCache.for_encoder(str(work / "text.zarr"), encoder)
    cache.build(sorted({e.text for e in read_manifest(str(manifest_dir)).expressions}), encoder)
    out = Path(tempfile.mkdtemp(prefix="seen-", dir=work))
    inputs = evaluate.EvaluateInputs(str(manifest_dir), str(work / "text.zarr"), encoder.identity, checkpoint, "valid",
                                     str(out), size)  # fmt: skip
    scores = evaluate.run(inputs, EvaluateSection()).scores
    shutil.rmtree(out, ignore_errors=True)
    return {"J": scores["J"], "F": scores["F"], "JF": scores["JF"]}


def run_variants(base: list[str], run_root: Path, run_id: str, only: list[str],
                 seen_work: Path | None = None) -> dict[str, dict]:  # fmt: skip
    """Run each variant in turn in one run folder; return {variant: {stage: metrics}} (and, with `seen`, the last
    student's scores on the train videos)."""
    from pipelines.pipeline import run_pipeline
    from pipelines.run_store import RunStore, stage_plan
    from prvos_core.config import load_config

    results = {}
    for variant in only:
        overrides = [*base, f"run.root={run_root}", *VARIANTS[variant]]
        config = load_config(REPO / "configs" / "demo.yaml", overrides)
        started = time.perf_counter()
        report = run_pipeline(config, run_id=run_id)
        store = RunStore(config.run.root, run_id)
        results[variant] = {
            "seconds": time.perf_counter() - started,
            "ran": report.ran(),
            "stages": {name: store.read_marker(name).metrics for name in stage_plan(config)},
            "rounds": config.rounds,
        }
        if seen_work is not None:
            seen = seen_work / "data"
            if not seen.exists():
                seen_dataset(Path(config.data.root), seen)
            checkpoint = str(Path(store.run_dir) / stage_name(TRAIN, config.rounds) / "checkpoint")
            size = tuple(config.model.input_size or (64, 64))
            results[variant]["seen"] = score_seen(seen, checkpoint, size, seen_work)
            print(f"{run_id} {variant}: seen-video J&F {results[variant]['seen']['JF']:.3f}", flush=True)
        print(f"{run_id} {variant}: {results[variant]['seconds']:.0f} s, ran {', '.join(report.ran())}", flush=True)
    return results


def rows_of(seed_results: dict[int, dict[str, dict]], variants: list[str]) -> list[list[str]]:
    """One row per variant and round: mean (and range over seeds) of J, F, J&F, pseudo-label quality."""
    rows = []
    for variant in variants:
        rounds = next(iter(seed_results.values()))[variant]["rounds"]
        for round_index in range(rounds + 1):
            cells = [LABELS[variant], str(round_index)]
            for key in ("J", "F", "JF"):
                values = [r[variant]["stages"][stage_name(EVALUATE, round_index)][key] for r in seed_results.values()]
                cells.append(_spread(values))
            for key in PSEUDO_KEYS:
                stage = stage_name(REFINE, round_index)
                values = [
                    r[variant]["stages"][stage][key]
                    for r in seed_results.values()
                    if stage in r[variant]["stages"] and key in r[variant]["stages"][stage]
                ]
                cells.append(_spread(values) if values else "-")
            rows.append(cells)
    return rows


def summary_lines(seed_results: dict[int, dict[str, dict]]) -> list[str]:
    """The issue's targets, per seed and on the mean: final-round J&F of (c) vs (a) and the recovered gap."""
    lines = []
    finals = {}
    for seed, results in seed_results.items():
        if "full" not in results or "gt_only" not in results:
            continue
        last = results["full"]["rounds"]
        final = {v: results[v]["stages"][stage_name(EVALUATE, last)]["JF"] for v in results}
        finals[seed] = final
        refine0 = results["full"]["stages"][stage_name(REFINE, 0)]
        lines.append(
            f"- seed {seed}: round-{last} J&F (c) {final['full']:.3f} vs (a) {final['gt_only']:.3f} "
            f"({100 * (final['full'] - final['gt_only']):+.1f} points), (d) {final.get('full_gt', float('nan')):.3f}: "
            f"{_recovered(final)}; round-0 refined precision "
            f"{refine0['pseudo_precision_full']:.3f} at coverage {refine0['pseudo_coverage_full']:.3f} vs raw teacher "
            f"{refine0['teacher_precision_full']:.3f}"
        )
    if len(finals) > 1:
        mean = {v: statistics.mean(f[v] for f in finals.values()) for v in next(iter(finals.values()))}
        lines.append(
            f"- mean over seeds: (c) {mean['full']:.3f} vs (a) {mean['gt_only']:.3f} "
            f"({100 * (mean['full'] - mean['gt_only']):+.1f} points); {_recovered(mean)}"
        )
    return lines


def _recovered(final: dict[str, float]) -> str:
    """Share of the (a)-(d) gap that (c) recovers; said in words when (d) is not a point above (a)."""
    if "full_gt" not in final:
        return "(d) not run"
    gap = final["full_gt"] - final["gt_only"]
    if gap < 0.01:
        return f"no (a)-(d) gap to recover ((d) - (a) = {100 * gap:+.1f} points)"
    return f"{100 * (final['full'] - final['gt_only']) / gap:.0f}% of the (a)-(d) gap recovered"


def seen_lines(seed_results: dict[int, dict[str, dict]], variants: list[str]) -> list[str]:
    """With --seen: the last student's J&F on the videos it trained on (every frame scored) next to the unseen
    valid videos, per seed."""
    if not all("seen" in seed_results[seed][v] for seed in seed_results for v in variants):
        return []
    rows = []
    for variant in variants:
        for seed, results in sorted(seed_results.items()):
            result = results[variant]
            valid = result["stages"][stage_name(EVALUATE, result["rounds"])]["JF"]
            rows.append([LABELS[variant], str(seed), f"{result['seen']['JF']:.3f}", f"{valid:.3f}",
                         f"{result['seen']['JF'] - valid:+.3f}"])  # fmt: skip
    return [
        "Last round's student on the train videos it learned from (every frame scored against full_annotations, "
        "text only, like valid) and on the unseen valid videos:",
        "",
        markdown_table(["variant", "seed", "seen-video J&F", "valid J&F", "seen - valid"], rows),
        "",
    ]


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--real", type=Path, help="dense-mask real clips (Ref-YouTube-VOS layout) instead of synth")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp folder, removed at the end)")
    parser.add_argument("--out", default=None, help="results file name under benchmarks/results/")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--seen", action="store_true",
                        help="also score each variant's last student on the train videos, masks on every frame")  # fmt: skip
    args = parser.parse_args()

    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="prvos-efficacy-"))
    work.mkdir(parents=True, exist_ok=True)
    from pipelines.ray_session import quiet_ray_train_logs

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"),
             runtime_env={"worker_process_setup_hook": quiet_ray_train_logs})  # fmt: skip
    started = time.perf_counter()
    seed_results = {}
    try:
        for seed in args.seeds:
            if args.real:
                data = work / f"real-{seed}"
                if not data.exists():
                    derive_sparse_dataset(args.real, data, label_every=5)
                base = [f"data.root={data}", "data.synth=null", f"run.seed={seed}", *args.overrides]
            else:
                base = [f"data.root={work / f'synth-{seed}'}", f"data.synth.seed={seed}", f"run.seed={seed}"]
                base += ["data.synth.label_every=5", *args.overrides]
            seen_work = work / f"seen-{seed}" if args.seen else None
            seed_results[seed] = run_variants(base, work / "runs", f"seed{seed}", args.variants, seen_work)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - started

    header = ["variant", "round", "J", "F", "J&F", "pseudo precision", "pseudo recall", "pseudo coverage",
              "teacher precision"]  # fmt: skip
    body = [
        "Variants share the seed and the training budget; values are means over seeds with [min, max].",
        "Pseudo-label columns: round r's refined labels on the train split's unlabelled frames, scored against",
        "the hidden masks (full_annotations); teacher precision = the raw teacher (p > 0.5, every pixel).",
        "",
        markdown_table(header, rows_of(seed_results, args.variants)),
        "",
        *summary_lines(seed_results),
        "",
        *seen_lines(seed_results, args.variants),
        f"Seeds: {args.seeds}. Overrides: {args.overrides or 'none'}. Data: {args.real or 'synthetic (demo.yaml)'}.",
        f"Wall time: {wall / 60:.1f} min for {len(args.seeds)} seed(s) x {len(args.variants)} variants on "
        f"{args.cpus} CPUs.",
    ]
    command = "python benchmarks/efficacy.py " + " ".join(sys.argv[1:])
    name = args.out or ("efficacy_real.md" if args.real else "efficacy.md")
    path = write_result(name, "Efficacy ablation", command, "\n".join(body))
    # Every number behind the table (per seed, variant and stage), for later comparisons.
    path.with_suffix(".json").write_text(json.dumps(seed_results, indent=1, sort_keys=True, default=str) + "\n")
    print("\n".join(body))
    print(f"wrote {path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
