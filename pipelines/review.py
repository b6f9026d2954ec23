"""`prvos review export|import`: the frames a round's teacher is least sure of go to people (Label Studio, or any
tool that takes COCO), and their corrected masks come back as a review layer beside the dataset.

An export is a folder:
```
<out>/export.json        the run, round, teacher and every queued pair (its `key`, frame, size, score)
<out>/tasks.json         Label Studio import: frame, expression, the teacher's mask as a prediction
<out>/label_config.xml   the labelling view those tasks need (polygons + "object absent")
<out>/coco.json          the same queue as COCO with RLE masks (pycocotools)
<out>/images/            the frames (copies of the dataset's JPEGs), served to Label Studio as local files
```
and a record of it in the run, `<run>/review/exports/<export_id>.json`: an import takes only tasks that this
run exported. The next `prvos run` / `prvos resume` of the run reads the new layer through ingest's fingerprint:
ingest and everything after it re-run, nothing before.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipelines.run_store import INGEST, RunStore, committed_marker, now_iso, open_run, round_markers, stage_name
from prvos_core import storage
from prvos_core.config import PrvosConfig, config_from_dict
from prvos_core.data.manifest import Expression, Manifest, QuarantineRow, read_manifest
from prvos_core.data.review_layer import Correction, check_layer_root, layer_root, write_layer
from prvos_core.errors import UserError
from prvos_core.labels import predicted_foreground
from prvos_core.pseudo.store import PseudoLabel, committed_expressions, open_store, read_pseudo_label
from prvos_core.review import coco, label_studio
from prvos_core.review.label_studio import AnnotationError, Submitted
from prvos_core.review.queue import ReviewItem, ReviewOrder, candidates, choose, flipped_share

EXPORT_FILE, TASKS_FILE, CONFIG_FILE, COCO_FILE, IMAGES = (
    "export.json", "tasks.json", "label_config.xml", "coco.json", "images",
)  # fmt: skip
TOKEN_VARIABLE = "LABEL_STUDIO_API_KEY"


@dataclass(frozen=True)
class ReviewExport:
    folder: Path
    export_id: str
    items: tuple[ReviewItem, ...]
    candidates: int  # pairs the queue chose from


@dataclass(frozen=True)
class _Exported:
    """What the run recorded of one of its exports."""

    round_index: int
    items: dict[str, dict]  # key -> the exported pair (export.json's items)


@dataclass(frozen=True)
class ReviewImport:
    layer: Path
    accepted: int
    rejected: int
    not_annotated: int  # exported tasks nobody has submitted yet


def export_queue(run: str | Path, round_index: int, count: int, order: ReviewOrder, out: Path, *,
                 per_video: int | None = None, seed: int = 0, image_root: Path | None = None) -> ReviewExport:  # fmt: skip
    """Write the `count` pairs of round `round_index` chosen by `order` as a Label Studio and COCO export.

    image_root: the folder Label Studio serves local files from (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); image
    URLs are relative to it. Default: `out` itself.
    """
    if count < 1:
        raise UserError(f"--count must be at least 1 (got {count})")
    store = open_run(str(run))
    config = config_from_dict(store.read_config_dict())
    queue = round_queue(store, config, round_index, count, order, per_video, seed)
    if not queue.items:
        raise UserError(f"round {round_index} of {store.run_dir} has no frame without ground truth to review")
    export_id = f"{store.run_id}-r{round_index}-{uuid.uuid4().hex[:8]}"
    serve_root = Path(image_root).resolve() if image_root else out.resolve()
    entries, tasks = [], []
    with storage.output_folder(out, EXPORT_FILE, "prvos review export") as staging:
        (staging / IMAGES).mkdir()
        for number, item in enumerate(queue.items, start=1):
            expression = queue.expressions[item.expression_id]
            video = queue.manifest.video_of(expression)
            label = queue.labels[item.expression_id]
            mask = teacher_mask(label, item, (video.height, video.width))
            image = f"{IMAGES}/{number:05d}-{item.video_id}-{item.frame_id}.jpg"
            shutil.copyfile(video.paths.frame_path(item.video_id, item.frame_id), staging / image)
            url = "/data/local-files/?d=" + (out.resolve() / image).relative_to(serve_root).as_posix()
            # The teacher's identity is "<checkpoint>#<weights>:<digest>"; the path is the run's own.
            model_version = f"{store.run_id}/r{round_index}/{label.teacher.rsplit('#', 1)[-1]}"
            data = {"prvos_export": export_id, "prvos_key": item.key, "prvos_score": round(item.score, 6)}
            tasks.append(label_studio.task(url, expression.text, data, mask, model_version, item.score))
            entries.append({
                "key": item.key, "expression_id": item.expression_id, "split": item.split, "video_id": item.video_id,
                "target": item.target, "frame_id": item.frame_id, "height": video.height, "width": video.width,
                "score": item.score, "text": expression.text, "file_name": image, "mask": mask, "export_id": export_id,
            })  # fmt: skip
        about = {"export_id": export_id, "run": store.run_dir, "run_id": store.run_id, "round": round_index,
                 "order": order, "count": count, "per_video": per_video, "seed": seed, "created": now_iso(),
                 "candidates": queue.candidates, "items": [{k: v for k, v in e.items() if k != "mask"} for e in entries]}  # fmt: skip
        (staging / TASKS_FILE).write_text(json.dumps(tasks), encoding="utf-8")
        (staging / CONFIG_FILE).write_text(label_studio.LABEL_CONFIG, encoding="utf-8")
        description = f"PRVOS review queue: run {store.run_id}, round {round_index}, by {order}"
        (staging / COCO_FILE).write_text(json.dumps(coco.dataset(entries, description)), encoding="utf-8")
        (staging / EXPORT_FILE).write_text(json.dumps(about, indent=1), encoding="utf-8")
    storage.write_json(_export_record(store, export_id), about)
    return ReviewExport(out, export_id, queue.items, queue.candidates)


@dataclass(frozen=True)
class RoundQueue:
    """A round's review queue and what it was read from."""

    items: tuple[ReviewItem, ...]  # the chosen pairs, in the chosen order
    candidates: int  # pairs it chose from
    labels: dict[str, PseudoLabel]  # the round's teacher labels of the train expressions
    expressions: dict[str, Expression]
    manifest: Manifest


def round_queue(store: RunStore, config: PrvosConfig, round_index: int, count: int, order: ReviewOrder = "uncertainty",
                per_video: int | None = None, seed: int = 0) -> RoundQueue:  # fmt: skip
    """The `count` pairs of round `round_index` most worth a person's look (prvos_core.review.queue.choose)."""
    infer, _ = round_markers(store, config, round_index)
    manifest = _manifest(store)
    expressions = {e.expression_id: e for e in manifest.split_expressions(config.data.train_split)}
    pseudo = open_store(infer.outputs["pseudo"], "r")
    labels = {e: read_pseudo_label(pseudo, e) for e in sorted(committed_expressions(pseudo)) if e in expressions}
    pool = [
        item for e, label in labels.items()
        for item in candidates(expressions[e], label.frame_ids, label.prob, label.uncertainty)
    ]  # fmt: skip
    return RoundQueue(tuple(choose(pool, count, order, per_video, seed)), len(pool), labels, expressions, manifest)


def teacher_mask(label: PseudoLabel, item: ReviewItem, size: tuple[int, int]) -> np.ndarray:
    """The teacher's mask (p > 0.5) of a queued frame at the frame's own size (H, W), uint8 0/1."""
    prob = cv2.resize(label.prob[item.frame_index], size[::-1], interpolation=cv2.INTER_LINEAR)
    return predicted_foreground(prob).astype(np.uint8)


def flipped_shares(store: RunStore, config: PrvosConfig, round_index: int) -> dict[str, float]:
    """Expression -> share of its pseudo-labelled pixels (frames without ground truth) whose teacher label (p > 0.5)
    differs from the previous round's. Empty for round 0."""
    if round_index == 0:
        return {}
    now, before = (
        open_store(round_markers(store, config, r)[0].outputs["pseudo"], "r") for r in (round_index, round_index - 1)
    )
    expressions = {e.expression_id: e for e in _manifest(store).split_expressions(config.data.train_split)}
    shares = {}
    for expression_id in sorted(committed_expressions(now) & committed_expressions(before)):
        if expression_id not in expressions:
            continue
        new, old = read_pseudo_label(now, expression_id), read_pseudo_label(before, expression_id)
        share = flipped_share(new.prob, old.prob, new.frame_ids, expressions[expression_id].gt_frames)
        if share is not None:
            shares[expression_id] = share
    return shares


def import_reviews(run: str | Path, source: str, *, project: int | None = None) -> ReviewImport:
    """Turn the submitted annotations of a Label Studio export (a JSON file, or a project of a running Label
    Studio at URL `source`, token in $LABEL_STUDIO_API_KEY) into a new review layer beside the run's dataset."""
    store = open_run(str(run))
    config = config_from_dict(store.read_config_dict())
    check_layer_root(config.data.root)
    if source.startswith(("http://", "https://")):
        returned = _fetch_project(source, project)
    else:
        returned = _read_file(Path(source))
    exports = _exports_of(store, returned, source)
    manifest = _manifest(store)
    accepted, rejected, not_annotated = [], [], 0
    for task in returned:
        item = f"task {task.task_id} ({task.key})"
        if task.export_id not in exports:
            rejected.append(QuarantineRow(source, item, f"exported by another run or export ({task.export_id})"))
            continue
        entry = exports[task.export_id].items.get(task.key)
        if entry is None:
            rejected.append(QuarantineRow(source, item, f"not a task of export {task.export_id}"))
            continue
        if not task.annotated:
            not_annotated += 1
            continue
        problem = _frame_problem(manifest, entry)
        if problem:
            rejected.append(QuarantineRow(source, item, problem))
            continue
        try:
            done = task.read((entry["height"], entry["width"]))
        except AnnotationError as error:
            rejected.append(QuarantineRow(source, item, str(error)))
            continue
        correction = Correction(
            entry["split"], entry["video_id"], entry["target"], entry["frame_id"], entry["expression_id"], "",
            done.empty, done.annotator, done.annotated_at, store.run_id, exports[task.export_id].round_index,
            task.export_id, task.task_id,
        )  # fmt: skip
        accepted.append((correction, done.mask))
    if not accepted and not rejected:
        raise UserError(f"{source} has no submitted annotation yet ({not_annotated} tasks); nothing to import")
    about = {"run_id": store.run_id, "run": store.run_dir, "source": source, "imported": now_iso(),
             "exports": sorted(exports)}  # fmt: skip
    layer = write_layer(layer_root(config.data.root), accepted, rejected, about)
    return ReviewImport(layer, len(accepted), len(rejected), not_annotated)


def _manifest(store: RunStore) -> Manifest:
    return read_manifest(os.path.dirname(committed_marker(store, stage_name(INGEST)).outputs["videos"]))


def _export_record(store: RunStore, export_id: str) -> str:
    return storage.join(store.run_dir, "review", "exports", f"{export_id}.json")


@dataclass(frozen=True)
class _Returned:
    """One task as it came back from the labelling tool."""

    task_id: str
    export_id: str
    key: str
    annotated: bool
    read: Callable[[tuple[int, int]], Submitted]  # its mask at the frame's (H, W); raises AnnotationError


def _from_label_studio(task: dict) -> _Returned:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    annotated = any(isinstance(a, dict) and not a.get("was_cancelled") for a in task.get("annotations") or [])
    return _Returned(str(task.get("id")), str(data.get("prvos_export")), str(data.get("prvos_key")), annotated,
                     lambda size: label_studio.submitted(task, size))  # fmt: skip


def _from_coco(annotation: dict, source: str) -> _Returned:
    about = annotation.get("attributes") if isinstance(annotation.get("attributes"), dict) else {}
    return _Returned(str(annotation.get("id")), str(about.get("prvos_export")), str(about.get("prvos_key")), True,
                     lambda size: coco.submitted(annotation, size, source))  # fmt: skip


def _read_file(path: Path) -> list[_Returned]:
    """A Label Studio JSON export (a list of tasks) or a COCO file (as `review export` wrote it, corrected)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the JSON file Label Studio exported") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not complete JSON ({error}); export the project from Label Studio again") from None
    if isinstance(payload, dict) and isinstance(payload.get("annotations"), list):
        return [_from_coco(a, str(path)) for a in payload["annotations"] if isinstance(a, dict)]
    if not isinstance(payload, list) or not all(isinstance(t, dict) for t in payload):
        raise UserError(f"{path} is neither a Label Studio JSON export (a list of tasks) nor a COCO file")
    return [_from_label_studio(task) for task in payload]


def _fetch_project(url: str, project: int | None) -> list[_Returned]:
    import requests

    if project is None:
        raise UserError(f"importing from {url} needs --project ID (the Label Studio project's number)")
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        raise UserError(f"set {TOKEN_VARIABLE} to a Label Studio access token to import from {url}")
    headers = {"Authorization": f"Token {token}"}
    base = url.rstrip("/")
    try:
        answer = requests.get(
            f"{base}/api/projects/{project}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
            headers=headers,
            timeout=120,
        )
    except requests.RequestException as error:
        raise UserError(f"cannot reach Label Studio at {url} ({type(error).__name__}); is it running?") from None
    if answer.status_code != 200:
        raise UserError(
            f"Label Studio at {url} answered {answer.status_code} for project {project}: {answer.text[:160]}"
        )
    tasks = answer.json()
    users = requests.get(f"{base}/api/users", headers=headers, timeout=60)
    emails = {u["id"]: u.get("email") for u in users.json()} if users.status_code == 200 else {}
    for task in tasks:
        for annotation in task.get("annotations") or []:
            who = annotation.get("completed_by")
            if isinstance(who, int) and emails.get(who):
                annotation["completed_by"] = {"id": who, "email": emails[who]}
    return [_from_label_studio(task) for task in tasks]


def _exports_of(store: RunStore, tasks: list[_Returned], source: str) -> dict[str, _Exported]:
    """export id -> what the run recorded of it, for every export of this run that the tasks name. Tasks of no export
    of this run at all: one line naming the run they came from."""
    named = {task.export_id for task in tasks if task.export_id != "None"}
    if not named:
        raise UserError(f"{source} holds no task exported by `prvos review export` (no prvos_export in its data)")
    exports = {}
    for export_id in sorted(named):
        record = _export_record(store, export_id)
        if storage.exists(record):
            about = storage.read_json(record)
            exports[export_id] = _Exported(int(about["round"]), {item["key"]: item for item in about["items"]})
    if not exports:
        other = sorted(named)[0].rsplit("-r", 1)[0]
        raise UserError(f"{source} was exported by run {other}, not by {store.run_id}; import it into that run")
    return exports


def _frame_problem(manifest: Manifest, entry: dict) -> str | None:
    try:
        video = manifest.video(entry["video_id"], entry["split"])
    except KeyError:
        return f"video {entry['video_id']!r} is no longer in the run's manifest"
    if (
        entry["frame_id"] not in video.frame_ids
        or not video.paths.frame_path(video.video_id, entry["frame_id"]).is_file()
    ):
        return f"frame {entry['frame_id']!r} of video {entry['video_id']!r} no longer exists"
    if (video.height, video.width) != (entry["height"], entry["width"]):
        return f"the frame is now {video.width}x{video.height}, it was exported at {entry['width']}x{entry['height']}"
    return None
