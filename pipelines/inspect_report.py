"""`prvos inspect RUN --round R`: a static HTML report of one round's pseudo-labels, opened from disk.

```
<out>/index.html           summary tables, the round plot and one strip per chosen expression (no scripts)
<out>/img/rounds.png       student J&F and pseudo-label precision / coverage over the rounds
<out>/img/expression-NN.png  frames | ground truth | teacher p | uncertainty | refined label | loss weight
<out>/inspect.json         what the report shows (run, round, expressions and why each was chosen)
```
Default `<out>`: `<run>/inspect/r<R>` (`r<R>-<expression>` for one expression). The report is written whole
or not at all (`prvos_core.storage`), then logged to MLflow as artifacts of the run's parent
run (`inspect/<out name>/`). By default it shows the most and the least confident expressions of the round by
the teacher's mean entropy on their frames without ground truth; `expression_id` picks one.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.lineage import log_report
from pipelines.report import plot_rounds, round_rows
from pipelines.review import RoundQueue, flipped_shares, round_queue, teacher_mask
from pipelines.run_store import INGEST, RunStore, committed_marker, open_run, round_markers, stage_name
from prvos_core import storage
from prvos_core.config import PrvosConfig, config_from_dict
from prvos_core.data.frames import decode_frame
from prvos_core.data.layout import write_json
from prvos_core.data.manifest import Expression, Manifest, Video, read_manifest
from prvos_core.data.object_masks import frame_mask
from prvos_core.errors import UserError
from prvos_core.pseudo.store import (
    FrameDecision,
    open_store,
    read_frame_decisions,
    read_index,
    read_pseudo_label,
    read_refined,
)
from prvos_core.storage import output_folder
from prvos_core.viz.pictures import fit_frame, overlay_mask, panel_size, write_png
from prvos_core.viz.strip import DECISION_COLORS, choose_columns, pseudo_label_strip

DEFAULT_EXPRESSIONS = 4
REVIEW_SHOWN = 8  # frames of the review queue shown
MAX_COLUMNS = 16
IMAGES = "img"
INDEX_FILE = "index.html"
SUMMARY_FILE = "inspect.json"


@dataclass(frozen=True)
class InspectReport:
    folder: Path
    round_index: int
    expressions: tuple[str, ...]
    pictures: tuple[str, ...]  # paths of the PNGs, relative to `folder`
    bytes: int
    mlflow_artifacts: str | None  # artifact path under the parent run, None when the run has no MLflow record


@dataclass(frozen=True)
class _Chosen:
    expression: Expression
    video: Video
    why: str


def build_report(run: str | Path, round_index: int, *, expression_id: str | None = None,
                 out: str | Path | None = None, count: int = DEFAULT_EXPRESSIONS, log_to_mlflow: bool = True,
                 panel_height: int = 96) -> InspectReport:  # fmt: skip
    """Write the report of round `round_index` of the run folder `run` and log it to MLflow.

    Every problem a user can cause (not a run, a round without committed refinement, an unknown expression)
    raises a UserError in one line."""
    store = open_run(str(run))
    config = config_from_dict(store.read_config_dict())
    infer, refine = round_markers(store, config, round_index)
    manifest = read_manifest(os.path.dirname(committed_marker(store, stage_name(INGEST)).outputs["videos"]))
    expressions = {e.expression_id: e for e in manifest.split_expressions(config.data.train_split)}
    chosen = _choose(read_index(infer.outputs["index"]), expressions, manifest, expression_id, count)
    folder = Path(out) if out is not None else _default_out(store, round_index, expression_id)

    started = time.perf_counter()
    with output_folder(folder, SUMMARY_FILE, "prvos inspect") as staging:
        (staging / IMAGES).mkdir()
        pictures = [f"{IMAGES}/rounds.png"]
        plot_rounds(store, config, staging / pictures[0])
        pseudo, refined = open_store(infer.outputs["pseudo"], "r"), open_store(refine.outputs["refined"], "r")
        frames_table = storage.read_parquet(refine.outputs["frames"])
        sections = []
        for number, item in enumerate(chosen, start=1):
            picture = f"{IMAGES}/expression-{number:02d}.png"
            rows = read_frame_decisions(frames_table, item.expression.expression_id, item.video.frame_ids)
            strip = _strip(item, pseudo, refined, rows, panel_height)
            write_png(staging / picture, strip)
            pictures.append(picture)
            sections.append(_expression_html(item, rows, picture, strip.shape))
        summary = storage.read_json(refine.outputs["summary"])
        review = _review_queue(round_queue(store, config, round_index, REVIEW_SHOWN), staging, panel_height)
        pictures += review.pictures
        flips = flipped_shares(store, config, round_index)
        page = _page(store, config, round_index, summary, [review.html, _flips(flips, round_index), *sections])
        (staging / INDEX_FILE).write_text(page, encoding="utf-8")
        write_json(staging / SUMMARY_FILE, {
            "run": store.run_dir, "round": round_index, "pictures": pictures,
            "expressions": [{"expression_id": c.expression.expression_id, "why": c.why} for c in chosen],
            "seconds": round(time.perf_counter() - started, 3),
        })  # fmt: skip
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    logged = log_report(store, folder) if log_to_mlflow else None
    ids = tuple(c.expression.expression_id for c in chosen)
    return InspectReport(folder, round_index, ids, tuple(pictures), size, logged)


# --- what to show -------------------------------------------------------------------------------------------


def _default_out(store: RunStore, round_index: int, expression_id: str | None) -> Path:
    if not storage.is_local(store.run_dir):
        raise UserError(f"{store.run_dir} is not a local folder; pass --out DIR for the report")
    name = f"r{round_index}" + (f"-{expression_id}" if expression_id else "")
    return Path(store.run_dir) / "inspect" / name


def _choose(index, expressions: dict[str, Expression], manifest: Manifest, expression_id: str | None,
            count: int) -> list[_Chosen]:  # fmt: skip
    """The asked expression, or the `count` most and least confident (half each) by the teacher's mean
    entropy over each expression's frames without ground truth (all its frames when every one has GT)."""
    pseudo: dict[str, list[float]] = {}
    every: dict[str, list[float]] = {}
    for row in index.select(["expression_id", "frame", "mean_entropy"]).to_pylist():
        expression = expressions.get(row["expression_id"])
        if expression is None:
            continue
        every.setdefault(expression.expression_id, []).append(row["mean_entropy"])
        if row["frame"] not in expression.gt_frames:
            pseudo.setdefault(expression.expression_id, []).append(row["mean_entropy"])
    means = {e: float(np.mean(pseudo.get(e) or values)) for e, values in every.items()}
    ranked = sorted(means, key=lambda e: (means[e], e))

    def item(e: str, why: str) -> _Chosen:
        expression = expressions[e]
        return _Chosen(expression, manifest.video_of(expression), why)

    if expression_id is not None:
        if expression_id not in means:
            shown = ", ".join(ranked[:3]) + (" ..." if len(ranked) > 3 else "")
            raise UserError(f"expression {expression_id!r} has no pseudo-labels in this round; pick one of {shown}")
        place = ranked.index(expression_id) + 1
        return [item(expression_id, f"asked for; mean entropy {means[expression_id]:.3f}, {place} of {len(ranked)}")]
    if count < 1:
        raise UserError(f"--count must be at least 1 (got {count})")
    most, least = ranked[: (count + 1) // 2], ranked[::-1][: count // 2]
    chosen = [item(e, f"most confident: mean entropy {means[e]:.3f}, {i} of {len(ranked)}") for i, e in
              enumerate(most, start=1)]  # fmt: skip
    for i, e in enumerate(least):
        if e not in most:
            chosen.append(item(e, f"least confident: mean entropy {means[e]:.3f}, {len(ranked) - i} of {len(ranked)}"))
    return chosen


def _strip(item: _Chosen, pseudo_store, refined_store, decisions: list[FrameDecision],
           panel_height: int) -> np.ndarray:  # fmt: skip
    expression, video = item.expression, item.video
    pseudo = read_pseudo_label(pseudo_store, expression.expression_id)
    refined = read_refined(refined_store, expression.expression_id)
    shown = choose_columns(decisions, MAX_COLUMNS)
    paths = video.paths
    frames, truth = [], {}
    for column, t in enumerate(shown):
        frame = pseudo.frame_ids[t]
        frames.append(decode_frame(str(paths.frame_path(video.video_id, frame))))
        mask = frame_mask(expression, video, frame)
        if mask is not None:
            truth[column] = mask
    return pseudo_label_strip(
        frames, truth, pseudo.prob[shown], pseudo.uncertainty[shown], refined.label[shown], refined.weight[shown],
        [decisions[t] for t in shown], [pseudo.frame_ids[t] for t in shown], panel_height=panel_height,
    )  # fmt: skip


# --- HTML ---------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1800px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.text { text-align: left; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 4px 0 12px; }
.strip { overflow-x: auto; } img { image-rendering: pixelated; }
.side { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; } .side h2 { margin-top: 0; }
section { margin-bottom: 2em; } .muted { color: #666; }
.queue { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; max-width: 260px; font-size: 0.85em; }
"""


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], text_columns: int = 0) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="text">{_fmt(v)}</td>' if i < text_columns else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _legend() -> str:
    def swatch(color, text):
        return f'<span class="swatch" style="background: rgb{tuple(color)}"></span>{html.escape(text)}'

    items = [
        swatch(DECISION_COLORS["ground_truth"], "ground-truth frame"),
        swatch(DECISION_COLORS["kept"], "pseudo-label kept (#rank by mean entropy)"),
        swatch(DECISION_COLORS["rejected"], "pseudo-label rejected (x)"),
        swatch((255, 170, 40), "object"),
        swatch((40, 44, 52), "background"),
        swatch((120, 40, 150), "ignored (hatched)"),
    ]
    return (
        "<p>" + "".join(items) + "</p><p class=muted>Rows: frame; ground truth (green; on frames without a training"
        " mask, the dense scoring-only mask where the dataset has one); teacher p(object) (viridis: dark 0, yellow"
        " 1); uncertainty (inferno: black certain, yellow unsure); refined label; loss weight (white 1).</p>"
    )


def _expression_html(item: _Chosen, rows: list[FrameDecision], picture: str, shape: tuple) -> str:
    e = item.expression
    frame_ids = item.video.frame_ids
    kept = [frame_ids[d.frame_index] for d in rows if d.decision == "kept"]
    table = _table(
        ["frame", "source", "kept", "rank", "mean entropy", "kept ratio", "reason"],
        [
            [
                frame_ids[d.frame_index],
                d.source,
                "yes" if d.kept else "no",
                d.rank,
                d.mean_entropy,
                d.kept_ratio,
                d.reason,
            ]
            for d in rows
        ],
        text_columns=3,
    )
    return (
        f"<section><h3>&ldquo;{html.escape(e.text)}&rdquo;</h3>"
        f"<p>{html.escape(e.expression_id)} &middot; video {html.escape(e.video_id)} &middot; object "
        f"{html.escape(e.object_id or '-')} &middot; {len(rows)} frames, {len(e.gt_frames)} with ground truth, "
        f"pseudo-labels kept on {html.escape(', '.join(kept) or 'none')} &middot; {html.escape(item.why)}</p>"
        f'<div class="strip"><img src="{picture}" width="{shape[1]}" height="{shape[0]}" '
        f'alt="pseudo-labels of {html.escape(e.expression_id)}"></div>'
        f"<details><summary>every frame's decision</summary>{table}</details></section>"
    )


@dataclass(frozen=True)
class _Section:
    html: str
    pictures: list[str]


def _review_queue(queue: RoundQueue, staging: Path, panel_height: int) -> _Section:
    """The round's review queue (`prvos review export` sends these first): each frame with the teacher's mask."""
    cells, pictures = [], []
    for number, item in enumerate(queue.items, start=1):
        expression = queue.expressions[item.expression_id]
        video = queue.manifest.video_of(expression)
        frame = decode_frame(str(video.paths.frame_path(item.video_id, item.frame_id)))
        mask = teacher_mask(queue.labels[item.expression_id], item, frame.shape[:2])
        thumbnail = fit_frame(overlay_mask(frame, mask), panel_size(*frame.shape[:2], 2 * panel_height))
        picture = f"{IMAGES}/review-{number:02d}.png"
        write_png(staging / picture, thumbnail)
        pictures.append(picture)
        cells.append(
            f'<figure><img src="{picture}" width="{thumbnail.shape[1]}" height="{thumbnail.shape[0]}" '
            f'alt="review {number}"><figcaption>{number}. uncertainty <b>{item.score:.3f}</b><br>'
            f"{html.escape(item.video_id)} / {html.escape(item.frame_id)}<br>{html.escape(expression.text)}"
            "</figcaption></figure>"
        )
    body = "".join(cells) or "<p>No frame without ground truth.</p>"
    return _Section(
        f"<h2>Review queue</h2><p class=muted>The {len(queue.items)} of {queue.candidates} frames without ground "
        "truth that people should correct first: mean entropy over the teacher's object, its border and its unsure"
        " pixels (`prvos review export --by uncertainty`).</p>"
        f'<div class="queue">{body}</div>',
        pictures,
    )


def _flips(shares: dict[str, float], round_index: int) -> str:
    if round_index == 0:
        return ""
    ranked = sorted(shares.items(), key=lambda pair: (-pair[1], pair[0]))
    rows = [[expression_id, f"{share:.3f}"] for expression_id, share in ranked]
    mean = float(np.mean(list(shares.values()))) if shares else 0.0
    return (
        f"<h2>Changed since round {round_index - 1}</h2><p class=muted>Share of each expression's pseudo-labelled"
        f" pixels whose teacher label flipped (mean {mean:.3f}).</p>"
        "<details><summary>per expression</summary>"
        + _table(["expression", "flipped"], rows, text_columns=1)
        + "</details>"
    )


def _page(store: RunStore, config: PrvosConfig, round_index: int, summary: dict, sections: list[str]) -> str:
    header, rows = round_rows(store, config)
    summary_rows = [[key, value] for key, value in sorted(summary.items())]
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>PRVOS inspect: {html.escape(store.run_id)}"
        f" round {round_index}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Run {html.escape(store.run_id)}, round {round_index}</h1>"
        f"<p class=muted>{html.escape(store.run_dir)} &middot; config {html.escape(config.name)} &middot; "
        f"{config.rounds} pseudo-labeling round(s) &middot; written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
        "<h2>Rounds</h2><p class=muted>Student J&amp;F on the valid split; pseudo-label precision and coverage on"
        " the train split's ground-truth frames, and (full) against dense scoring-only masks where they exist.</p>"
        + _table(header, rows)
        + '<div class="side"><div><img src="img/rounds.png" alt="J&amp;F and pseudo-label quality over rounds">'
        + f"</div><div><h2>Refinement of round {round_index}</h2>"
        + _table(["metric", "value"], summary_rows, text_columns=1)
        + "</div></div>"
        + "".join(sections[:2])
        + "<h2>Expressions</h2>"
        + _legend()
        + "".join(sections[2:])
        + "</body></html>\n"
    )
