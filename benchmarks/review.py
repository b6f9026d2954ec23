"""What a reviewed frame is worth: an oracle corrects N % of round 0's pseudo-labelled (expression, frame) pairs,
chosen by the teacher's uncertainty or at random, and the next round is scored.

Per seed, on the synthetic set in regime F (first frame labelled; the hidden dense masks are the oracle):
  1. a base run (1 pseudo-labeling round, nobody reviews): its round-0 teacher gives the review queue;
  2. for each N in --shares and each order (uncertainty, random): the same dataset (its split folders linked
     into a root of its own) with a review layer beside it holding the oracle's masks of the N % chosen pairs
     (prvos_core.data.review_layer, as `prvos review import` writes it), run through the whole pipeline: the
     layer's frames are ground truth from ingest on.
Reported: the final round's valid J&F and round 0's refined pseudo-label precision per N and order, the paired
difference uncertainty - random over seeds with a bootstrap 95 % interval. Every run is a resumable pipeline run
and every finished variant is kept in <work>/results: a stopped benchmark started again skips what is done.

    python benchmarks/review.py --work /tmp/review                  # 3 seeds x N in 2, 5, 10 %
    python benchmarks/review.py --quick --work /tmp/review-quick    # <= 10 min smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import markdown_table, write_result  # noqa: E402
from benchmarks.efficacy import QUICK, SYNTH, _spread, bootstrap_interval, final_jf, run_variant  # noqa: E402
from prvos_core.review.queue import choose  # noqa: E402

SHARES = (2.0, 5.0, 10.0)
ORDERS = ("uncertainty", "spread", "random", "error")
# `error` is an oracle order for the benchmark only: the pairs on which the teacher is most wrong (its mask against
# the hidden one, wrong pixels), i.e. what a perfect uncertainty score would choose; it bounds what any score can do.
SETTINGS = ("data.train_labels=first", "rounds=1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shares", nargs="+", type=float, default=list(SHARES), help="N: %% of the pairs reviewed")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=list(ORDERS), help="review orders to run")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny sizes, N = 10 %%")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--retrain", action="store_true",
                        help="also re-run the no-review variant with another training seed (run.seed + 100) on the "
                             "same data: the training noise of one paired comparison")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="only write the table of what is done")
    parser.add_argument("--out", default=None, help="results file name under benchmarks/results/ (review.md)")
    args = parser.parse_args()
    seeds, shares = ([0], [10.0]) if args.quick else (args.seeds, args.shares)
    sizes = QUICK if args.quick else SYNTH

    import ray

    from pipelines.ray_session import quiet_ray_train_logs

    args.work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", _temp_dir=str(args.work / "ray"),
             runtime_env={"worker_process_setup_hook": quiet_ray_train_logs})  # fmt: skip
    started = time.perf_counter()
    results: dict[tuple[str, float], dict[int, dict]] = {}
    try:
        for seed in seeds:
            data = args.work / f"synth-{seed}"
            base = [
                f"data.root={data}",
                "data.synth.create=true",
                f"data.synth.seed={seed}",
                *sizes,
                f"run.seed={seed}",
                *SETTINGS,
                *args.overrides,
            ]
            outcome = run_variant("none", seed, "review", base, args.work, not args.report)
            if outcome is None:
                continue
            results.setdefault(("none", 0.0), {})[seed] = outcome
            if args.retrain:
                again = run_variant("retrained", seed, "review", [*base, f"run.seed={seed + 100}"], args.work,
                                    not args.report)  # fmt: skip
                if again is not None:
                    results.setdefault(("retrained", 0.0), {})[seed] = again
            for share in shares:
                for order in args.orders:
                    name = f"{order}{share:g}"
                    root = args.work / "roots" / f"{name}-{seed}"
                    if not args.report:
                        _reviewed_root(args.work / "runs" / f"none-seed{seed}", data, root, share, order, seed)
                    overrides = [*base, f"data.root={root}"]
                    outcome = run_variant(name, seed, "review", overrides, args.work, not args.report)
                    if outcome is not None:
                        results.setdefault((order, share), {})[seed] = outcome
    finally:
        ray.shutdown()
    _report(results, seeds, shares, args, time.perf_counter() - started)


def _reviewed_root(run: Path, data: Path, root: Path, share: float, order: str, seed: int) -> None:
    """`root`: the dataset's split folders linked, and beside it a review layer with the oracle's masks of the
    `share` % pairs of the base run's round-0 queue chosen by `order` (written once)."""
    from pipelines.review import round_queue
    from pipelines.run_store import open_run
    from prvos_core.config import config_from_dict
    from prvos_core.data.object_masks import frame_mask
    from prvos_core.data.review_layer import Correction, committed_layers, layer_root, write_layer

    if committed_layers(layer_root(root)):
        return
    root.mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry.resolve())
    store = open_run(str(run))
    config = config_from_dict(store.read_config_dict())
    everything = round_queue(store, config, 0, 10**9, "uncertainty" if order == "error" else order, seed=seed)
    count = max(1, round(share / 100 * everything.candidates))
    if order == "error":
        queue = replace(everything, items=tuple(choose(_true_errors(everything), count, "uncertainty")))
    else:
        queue = round_queue(store, config, 0, count, order, seed=seed)
    accepted = []
    for item in queue.items:
        expression = queue.expressions[item.expression_id]
        truth = frame_mask(expression, queue.manifest.video_of(expression), item.frame_id)
        correction = Correction(item.split, item.video_id, item.target, item.frame_id, item.expression_id, "",
                                not truth.any(), "oracle", "", store.run_id, 0, f"oracle-{order}", item.key)  # fmt: skip
        accepted.append((correction, truth))
    write_layer(layer_root(root), accepted, [], {"oracle": True, "order": order, "share": share, "pairs": count,
                                                  "candidates": everything.candidates})  # fmt: skip
    print(f"seed {seed}: {order} review of {count} of {everything.candidates} pairs ({share:g} %)", flush=True)


def teacher_and_truth(queue, item) -> tuple[np.ndarray, np.ndarray]:
    """A queued pair's teacher mask (p > 0.5) and hidden true mask, both bool at the teacher's resolution."""
    import cv2

    from prvos_core.data.object_masks import frame_mask
    from prvos_core.labels import predicted_foreground

    expression = queue.expressions[item.expression_id]
    prob = queue.labels[item.expression_id].prob[item.frame_index]
    truth = frame_mask(expression, queue.manifest.video_of(expression), item.frame_id)
    truth = cv2.resize(truth, prob.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    return predicted_foreground(prob), truth


def _true_errors(queue) -> list:
    """The queue's pairs scored by how wrong the teacher's mask is: its wrong pixels (against the hidden mask, at
    the teacher's resolution) as a share of the frame."""
    return [replace(item, score=float(np.mean(np.not_equal(*teacher_and_truth(queue, item))))) for item in queue.items]


def _corrected_expressions(work: Path, name: str, seeds: Iterable[int]) -> str:
    """Mean number of distinct expressions that received a correction, over the seeds (from the review layers)."""
    import pyarrow.parquet as pq

    counts = [
        len(set(pq.read_table(layer / "corrections.parquet", columns=["expression_id"]).column(0).to_pylist()))
        for seed in seeds
        for layer in sorted((work / "roots" / f"{name}-{seed}.review").glob("v*"))[:1]
    ]  # fmt: skip
    return f"{sum(counts) / len(counts):.0f}" if counts else "-"


def _precision(result: dict) -> float | None:
    return result["stages"].get("r0-refine", {}).get("pseudo_precision_full")


def _report(results: dict, seeds: list[int], shares: list[float], args, wall: float) -> None:
    rows = []
    base = results.get(("none", 0.0), {})
    chosen = [order for order in ORDERS if any((order, share) in results for share in shares)]
    rows.append(["0 (no review)", "-", "-", len(base), _spread([final_jf(r) for r in base.values()]),
                 _spread([p for r in base.values() if (p := _precision(r)) is not None]), "-"])  # fmt: skip
    lines = []
    retrained = results.get(("retrained", 0.0), {})
    if retrained:
        paired = sorted(set(retrained) & set(base))
        gaps = [100 * (final_jf(retrained[s]) - final_jf(base[s])) for s in paired]
        rows.append(["0 (no review)", "another training seed", "-", len(retrained),
                     _spread([final_jf(r) for r in retrained.values()]),
                     _spread([p for r in retrained.values() if (p := _precision(r)) is not None]), "-"])  # fmt: skip
        lines.append("- Training noise (same data and review, run.seed + 100): " + ", ".join(
            f"seed {s} {g:+.1f}" for s, g in zip(paired, gaps, strict=True)) + " J&F points: two runs that differ only "
            "in the training seed, i.e. the noise in any paired difference of one run per order")  # fmt: skip
    for share in shares:
        randomly = results.get(("random", share), {})
        for order in chosen:
            done = results.get((order, share), {})
            if not done:
                continue
            difference = "-"
            if order != "random":
                paired = sorted(set(done) & set(randomly))
                differences = [final_jf(done[s]) - final_jf(randomly[s]) for s in paired]
                low, high = bootstrap_interval(differences)
                mean = sum(differences) / len(differences) if differences else float("nan")
                difference = f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] ({len(paired)} seeds)"
                lines.append(f"- N = {share:g} %: {order} - random = {100 * mean:+.1f} J&F points over {len(paired)} "
                             f"seeds, 95 % bootstrap interval [{100 * low:+.1f}, {100 * high:+.1f}]")  # fmt: skip
            rows.append([
                f"{share:g} %", order, _corrected_expressions(args.work, f"{order}{share:g}", done), len(done), _spread([final_jf(r) for r in done.values()]),
                _spread([p for r in done.values() if (p := _precision(r)) is not None]), difference,
            ])  # fmt: skip
    header = ["N reviewed", "order", "expressions corrected (mean)", "seeds", "final J&F", "r0 refined precision",
              "minus random, same seeds (J&F points, 95 % interval)"]  # fmt: skip
    compute = sum(r["seconds"] for per in results.values() for r in per.values())
    body = "\n".join([
        "Regime F of the synthetic set (first frame labelled), one pseudo-labeling round; an oracle corrects N % of",
        "round 0's pseudo-labelled (expression, frame) pairs with the hidden dense masks, chosen by the teacher's",
        "uncertainty (mean entropy over its object, border and unsure pixels: `uncertainty` highest first, `spread`",
        "each object's highest first, then each object's second, ...), at random, or (`error`, an oracle that bounds",
        "any score) by the teacher's true error on the pair (wrong pixels against the hidden mask). J&F: the final student on the",
        "valid split; precision: round 0's refined pseudo-labels against the hidden masks.", "",
        markdown_table(header, rows), "", *lines, "",
        f"Seeds: {seeds}. Settings: {[*(QUICK if args.quick else SYNTH), *SETTINGS, *args.overrides]}.",
        f"Wall time of this invocation: {wall / 60:.1f} min; pipeline time of every run shown: {compute / 60:.1f} min, "
        f"on {args.cpus} CPUs.",
    ])  # fmt: skip
    command = "python benchmarks/review.py " + " ".join(sys.argv[1:])
    path = write_result(
        args.out or ("review_quick.md" if args.quick else "review.md"),
        "Review: uncertainty-chosen vs random",
        command,
        body,
    )
    print(body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
