"""Does the review score find the teacher's errors? For finished runs with hidden masks (the synthetic set, or a
real set in a label regime), every round-0 review candidate is scored by the queue's uncertainty score and by the
teacher's true error (its mask against the hidden one), and the top N % by each is compared with a random N %:

- the share of all the teacher's wrong pixels on the candidates that those pairs hold (random: N %; the
  true-error oracle: the most any score can hold);
- how many distinct objects they touch (a correction serves an object's every expression);
- Spearman's rank correlation between the score and the error (wrong pixels; 1 - IoU).

    python benchmarks/review_score.py /tmp/rvC/runs/none-seed0 /tmp/rvC/runs/none-seed1 --share 10

No pipeline runs: it reads each run's round-0 teacher store and the dataset's hidden masks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr  # noqa: E402

from benchmarks.common import markdown_table, write_result  # noqa: E402
from benchmarks.review import teacher_and_truth  # noqa: E402


def _run_rows(run: Path, share: float) -> list:
    from pipelines.review import round_queue
    from pipelines.run_store import open_run
    from prvos_core.config import config_from_dict

    store = open_run(str(run))
    queue = round_queue(store, config_from_dict(store.read_config_dict()), 0, 10**9, "uncertainty")
    items = list(queue.items)
    score = np.array([item.score for item in items])
    wrong, error = [], []
    for item in items:
        predicted, truth = teacher_and_truth(queue, item)
        union = (predicted | truth).sum()
        wrong.append(np.mean(predicted != truth))  # share of the frame's pixels
        error.append(1 - ((predicted & truth).sum() / union if union else 1.0))
    wrong, error = np.array(wrong), np.array(error)
    count = max(1, round(share / 100 * len(items)))
    objects = [(item.video_id, item.target) for item in items]
    rows = []
    orders = {
        "uncertainty score": np.argsort(-score, kind="stable")[:count],
        "random": np.random.default_rng(0).permutation(len(items))[:count],
        "true error (oracle)": np.argsort(-wrong, kind="stable")[:count],
    }
    for name, chosen in orders.items():
        rows.append([
            run.name, len(items), name, f"{wrong[chosen].sum() / wrong.sum():.3f}", f"{error[chosen].mean():.3f}",
            f"{len({objects[i] for i in chosen})} of {len(set(objects))}",
            f"{spearmanr(score, wrong)[0]:+.2f} / {spearmanr(score, error)[0]:+.2f}" if name.startswith("unc") else "-",
        ])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (round 0 infer committed)")
    parser.add_argument("--share", type=float, default=10.0, help="N: %% of the candidates chosen")
    parser.add_argument("--out", default="review_score.md", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in _run_rows(run, args.share)]
    header = ["run", "candidates", f"top {args.share:g} % by", "share of the teacher's wrong pixels",
              "mean 1 - IoU", "objects touched", "Spearman: score vs wrong pixels / vs 1 - IoU"]  # fmt: skip
    body = "\n".join([
        "Round 0's review candidates (train frames without ground truth) of each run, the teacher's mask (p > 0.5)",
        "against the hidden masks at the teacher's resolution. A random choice holds N % of the wrong pixels on",
        "average; the true-error oracle holds the most any score can.", "",
        markdown_table(header, rows),
    ])  # fmt: skip
    path = write_result(args.out, "Review score: does it find the teacher's errors?",
                        "python benchmarks/review_score.py " + " ".join(sys.argv[1:]), body)  # fmt: skip
    print(body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
