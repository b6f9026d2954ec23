"""Efficacy ablation: do the pseudo-labeling rounds pay off where supervision is missing?

Three label regimes of the train split, each trained with several variants of the same budget (rounds, epochs
and `train.clips_per_epoch`, so every variant of a regime takes the same number of optimizer steps):

  S  every 5th frame labelled (the synthetic set as provided, as Ref-YouTube-VOS)
  F  first frame only (`data.train_labels=first`: the semi-supervised protocol of Ref-DAVIS17)
  U  8 labelled videos + 24 videos with expressions and no mask (`data.unlabelled_split=unlabelled`)

  (a) gt_only     ground truth only (no pseudo-labels; the same rounds)
  (b) raw_pseudo  pseudo-labels without refinement: every pixel kept with weight 1, every frame kept
  (c) full        the method: GT-anchored teacher, refined, uncertainty-weighted pseudo-labels
  (d) full_gt     ground truth on every train frame (and on the unlabelled videos in U): the upper bound

Each (regime, seed) has one run folder; its variants run in it one after the other through the pipeline itself,
so stages whose fingerprint a variant does not change (ingest, text, round 0's student for a-c) are reused.
Each variant's numbers are written to `<work>/results/<regime>-<seed>-<variant>.json` as soon as it finishes:
a stopped benchmark started again with the same --work skips what is done and resumes the rest.

    python benchmarks/efficacy.py --work /tmp/efficacy                     # S, F, U x 5 seeds (the table)
    python benchmarks/efficacy.py --quick --work /tmp/efficacy-quick       # <= 10 min smoke
    python benchmarks/efficacy.py --real ../shared/data/ref_davis16_mini --regimes F --seeds 0 1 2 --work /tmp/er

Pseudo-label quality is scored on the chosen pseudo-labelled frames against the masks the regime hid
(synthetic: full_annotations/; real: the hidden frames of Annotations/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from benchmarks.common import markdown_table, write_result  # noqa: E402
from pipelines.run_store import EVALUATE, REFINE, stage_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Regime:
    title: str
    overrides: tuple[str, ...]
    variants: tuple[str, ...]  # run by default, in this order (a, b, c share round 0's student)
    unlabelled_videos: int = 0


REGIMES = {
    "S": Regime("every 5th frame labelled", ("data.train_labels=provided",), ("gt_only", "full", "full_gt")),
    "F": Regime("first frame only", ("data.train_labels=first",), ("gt_only", "full", "raw_pseudo", "full_gt")),
    "U": Regime(
        "8 labelled + 24 unlabelled videos", ("data.unlabelled_split=unlabelled",), ("gt_only", "full", "full_gt"), 24
    ),
}
VARIANTS: dict[str, tuple[str, ...]] = {
    "gt_only": ("pseudo_labels=false",),
    "full": (),
    "raw_pseudo": ("refine.enabled=false",),
    "full_gt": ("pseudo_labels=false", "train.gt_source=full_annotations"),
    # Not in the default lists (`--variants ...`): the method with one knob changed.
    "full_first_anchor": ("infer.anchors=first",),  # the teacher propagates forward from frame 0 only
    "full_ema099": ("train.ema_decay=0.99",),
    "full_flip": ("infer.uncertainty=flip",),
    "full_oracle": ("refine.oracle_labels=true",),  # the chosen frames take their hidden masks
    "full_fill": ("train.pseudo_in_clips=fill",),  # pseudo-labels only in a clip's spans without ground truth
    "full_u25": ("train.unlabelled_share=0.25",),  # 1 clip in 4 from unlabelled videos (U: 3 in 4 as drawn)
    "full_u10": ("train.unlabelled_share=0.1",),
}
# Real clips have no full_annotations/: the upper bound is every mask the dataset provides.
REAL_FULL_GT = ("pseudo_labels=false", "data.train_labels=provided")
LABELS = {
    "gt_only": "(a) GT only",
    "raw_pseudo": "(b) raw pseudo-labels",
    "full": "(c) full method",
    "full_gt": "(d) GT everywhere",
    "full_first_anchor": "(c') teacher from frame 0 only",
    "full_ema099": "(c') EMA decay 0.99",
    "full_flip": "(c') flip TTA uncertainty",
    "full_oracle": "(c') oracle labels on the chosen frames",
    "full_fill": "(c') pseudo-labels only where GT leaves a gap",
    "full_u25": "(c') 1 clip in 4 from unlabelled videos",
    "full_u10": "(c') 1 clip in 10 from unlabelled videos",
}
# The table's settings: demo.yaml with 24 valid videos, the same optimizer steps for every variant of a regime,
# and only the final student scored (the targets read round 2).
SYNTH = ("data.synth.valid_videos=24", "train.epochs=8", "train.clips_per_epoch=64", "evaluate.rounds=last")
QUICK = ("data.synth.valid_videos=4", "data.synth.frames=10", "train.epochs=2", "train.clips_per_epoch=16",
         "evaluate.rounds=last", "rounds=1")  # fmt: skip
QUICK_VARIANTS = ("gt_only", "full")
REAL = ("data.synth=null", "model.input_size=[64,112]", "train.epochs=8", "train.clips_per_epoch=64",
        "evaluate.rounds=last")  # fmt: skip
PSEUDO_KEYS = ("pseudo_precision_full", "pseudo_recall_full", "pseudo_coverage_full", "pseudo_object_coverage_full",
               "teacher_precision_full")  # fmt: skip


def run_variant(
    regime: str, seed: int, variant: str, overrides: list[str], work: Path, run: bool = True
) -> dict | None:
    """Run one variant in its (regime, seed) run folder, or read its numbers if an earlier run finished it
    (None when it has not and `run` is false)."""
    done = work / "results" / f"{regime}-{seed}-{variant}.json"
    if done.exists():
        return json.loads(done.read_text())
    if not run:
        return None
    from pipelines.pipeline import run_pipeline
    from pipelines.run_store import RunStore, stage_plan
    from prvos_core.config import load_config

    config = load_config(REPO / "configs" / "demo.yaml", [*overrides, f"run.root={work / 'runs'}"])
    run_id = f"{regime}-seed{seed}"
    started = time.perf_counter()
    report = run_pipeline(config, run_id=run_id)
    store = RunStore(config.run.root, run_id)
    result = {
        "seconds": time.perf_counter() - started,
        "ran": report.ran(),
        "stages": {name: store.read_marker(name).metrics for name in stage_plan(config)},
        "rounds": config.rounds,
        "overrides": overrides,
    }
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    print(f"{run_id} {variant}: {result['seconds']:.0f} s, ran {', '.join(report.ran())}", flush=True)
    return result


def final_jf(result: dict) -> float:
    return result["stages"][stage_name(EVALUATE, result["rounds"])]["JF"]


def bootstrap_interval(values: list[float], samples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of `values` (paired differences over seeds)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def regime_rows(regime: str, results: dict[int, dict[str, dict]], variants: list[str]) -> list[list[str]]:
    """One row per variant: final J&F (mean ± sd over seeds), per-seed values, round-0 pseudo-label quality."""
    rows = []
    for variant in variants:
        seeds = [seed for seed in sorted(results) if variant in results[seed]]
        if not seeds:
            continue
        finals = [final_jf(results[seed][variant]) for seed in seeds]
        cells = [regime, LABELS[variant], str(len(seeds)), _spread(finals), " ".join(f"{v:.3f}" for v in finals)]
        for key in PSEUDO_KEYS:
            values = [
                results[seed][variant]["stages"][stage_name(REFINE, 0)].get(key)
                for seed in seeds
                if stage_name(REFINE, 0) in results[seed][variant]["stages"]
            ]
            cells.append(_spread([v for v in values if v is not None]))
        rows.append(cells)
    return rows


def regime_summary(regime: str, results: dict[int, dict[str, dict]]) -> list[str]:
    """The issue's targets for one regime: paired (c) - (a) with its bootstrap interval, the recovered share of
    the (a) -> (d) gap, refined vs raw teacher precision."""
    paired = [s for s in sorted(results) if {"full", "gt_only"} <= set(results[s])]
    if not paired:
        return []
    diffs = [final_jf(results[s]["full"]) - final_jf(results[s]["gt_only"]) for s in paired]
    low, high = bootstrap_interval(diffs)
    mean_a = statistics.mean(final_jf(results[s]["gt_only"]) for s in paired)
    mean_c = statistics.mean(final_jf(results[s]["full"]) for s in paired)
    line = (
        f"- **{regime}** ({REGIMES[regime].title}), {len(paired)} seeds: (c) {mean_c:.3f} vs (a) {mean_a:.3f}, "
        f"paired (c) - (a) {100 * statistics.mean(diffs):+.1f} points, 95 % bootstrap interval "
        f"[{100 * low:+.1f}, {100 * high:+.1f}]"
    )
    with_d = [s for s in paired if "full_gt" in results[s]]
    if with_d:
        mean_d = statistics.mean(final_jf(results[s]["full_gt"]) for s in with_d)
        gap = mean_d - statistics.mean(final_jf(results[s]["gt_only"]) for s in with_d)
        gained = statistics.mean(final_jf(results[s]["full"]) - final_jf(results[s]["gt_only"]) for s in with_d)
        share = f"{100 * gained / gap:.0f} %" if gap > 0.005 else f"no gap ((d) - (a) = {100 * gap:+.1f} points)"
        line += f"; (d) {mean_d:.3f}, share of the (a) -> (d) gap recovered: {share}"
    refined = [results[s]["full"]["stages"].get(stage_name(REFINE, 0), {}) for s in paired]
    quality = [(r["pseudo_precision_full"], r["teacher_precision_full"], r["pseudo_coverage_full"])
               for r in refined if r.get("pseudo_precision_full") is not None]  # fmt: skip
    if quality:
        precision, teacher, coverage = (statistics.mean(q[i] for q in quality) for i in range(3))
        line += (
            f"; round-0 refined precision {precision:.3f} vs raw teacher {teacher:.3f} "
            f"({100 * (precision - teacher):+.1f} points) at coverage {coverage:.3f}"
        )
    return [line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="instead of each regime's list")
    parser.add_argument("--real", type=Path, help="dense-mask real clips (Ref-YouTube-VOS layout) instead of synth")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny sizes: a smoke run of every regime")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--work", type=Path, required=True, help="work folder (runs, data, per-variant results)")
    parser.add_argument("--out", default=None, help="results file name under benchmarks/results/")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only write the table of the variants already done")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    ray_cpus = 1 if args.report else args.cpus  # --report runs nothing; Ray starts only because the loop is shared

    import ray

    args.work.mkdir(parents=True, exist_ok=True)
    from pipelines.ray_session import quiet_ray_train_logs

    ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="ERROR", _temp_dir=str(args.work / "ray"),
             runtime_env={"worker_process_setup_hook": quiet_ray_train_logs})  # fmt: skip
    started = time.perf_counter()
    results: dict[str, dict[int, dict[str, dict]]] = {regime: {} for regime in args.regimes}
    try:
        # Seeds outermost: a run stopped early still has every regime on its first seeds.
        for seed in seeds:
            for regime in args.regimes:
                spec = REGIMES[regime]
                if args.real:
                    base = [f"data.root={args.real}", *REAL]
                else:
                    data = args.work / f"synth-{seed}-{spec.unlabelled_videos}"
                    base = [f"data.root={data}", f"data.synth.seed={seed}", *(QUICK if args.quick else SYNTH),
                            f"data.synth.unlabelled_videos={spec.unlabelled_videos}", "data.synth.create=true"]  # fmt: skip
                base += [f"run.seed={seed}", *spec.overrides, *args.overrides]
                for variant in args.variants or (QUICK_VARIANTS if args.quick else spec.variants):
                    extra = REAL_FULL_GT if args.real and variant == "full_gt" else VARIANTS[variant]
                    outcome = run_variant(regime, seed, variant, [*base, *extra], args.work, not args.report)
                    if outcome is not None:
                        results[regime].setdefault(seed, {})[variant] = outcome
    finally:
        ray.shutdown()
    wall = time.perf_counter() - started

    header = ["regime", "variant", "seeds", "final J&F (mean ± sd)", "per seed", "r0 pseudo precision",
              "r0 pseudo recall", "r0 pseudo coverage", "r0 object labelled", "r0 teacher precision"]  # fmt: skip
    rows = [row for regime in args.regimes for row in regime_rows(regime, results[regime], list(VARIANTS))]
    compute = sum(r["seconds"] for regime in results.values() for s in regime.values() for r in s.values())
    body = [
        "Final-round valid J&F of each variant, mean ± standard deviation over seeds, and each seed's value. Every",
        "variant of a regime takes the same optimizer steps. Pseudo-label columns: round 0's refined labels on",
        "the frames refinement chose, against the masks the regime hid; teacher precision = the raw teacher",
        "(p > 0.5, every pixel) on the same frames.",
        "",
        markdown_table(header, rows),
        "",
        *[line for regime in args.regimes for line in regime_summary(regime, results[regime])],
        "",
        f"Seeds: {seeds}. Data: {args.real or 'synthetic (configs/demo.yaml)'}. Settings: "
        f"{list(REAL if args.real else QUICK if args.quick else SYNTH) + args.overrides}.",
        f"Wall time of this invocation: {wall / 60:.1f} min; pipeline time of all variants shown (including those "
        f"resumed from an earlier invocation): {compute / 60:.1f} min, on {args.cpus} CPUs.",
    ]
    command = "python benchmarks/efficacy.py " + " ".join(sys.argv[1:])
    name = args.out or ("efficacy_quick.md" if args.quick else "efficacy_real.md" if args.real else "efficacy.md")
    path = write_result(name, "Efficacy ablation", command, "\n".join(body))
    path.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    print("\n".join(body))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
