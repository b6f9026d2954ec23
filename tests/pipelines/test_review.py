"""`prvos review export|import` on a small real run: the queue is the teacher's least certain frames, an oracle's
corrections (the synthetic set's hidden dense masks, drawn as Label Studio polygons) come back as a review layer,
ingest takes them as ground truth, and every kind of bad input is one line or one quarantine row."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from pipelines.pipeline import run_pipeline
from pipelines.review import COCO_FILE, EXPORT_FILE, TASKS_FILE, export_queue, import_reviews
from pipelines.run_store import INGEST, RunStore, stage_name
from prvos_core.config import config_from_dict
from prvos_core.data import review_layer
from prvos_core.data.frames import read_object_mask, resize_map
from prvos_core.data.manifest import read_manifest
from prvos_core.data.object_masks import frame_mask, ground_truth_mask
from prvos_core.errors import UserError
from prvos_core.pseudo.store import open_store, read_pseudo_label
from prvos_core.review import coco, label_studio
from tests.e2e.test_pipeline import reduced_config
from tests.reliability.conftest import cli

UNTIL_INFER = ("ingest", "frames", "text", "train", "infer", "refine")  # no evaluate


@pytest.fixture(scope="module")
def review_run(tmp_path_factory, ray_local):
    """A run of the reduced config without evaluation (its own dataset: review layers go beside it)."""
    tmp = tmp_path_factory.mktemp("review")
    config = config_from_dict(reduced_config(tmp))
    report = run_pipeline(config, run_id="reviewed", stages=UNTIL_INFER)
    assert "r0-infer" in report.ran()
    return tmp, config, report.store


def _manifest(store: RunStore):
    return read_manifest(str(Path(store.read_marker(stage_name(INGEST)).outputs["videos"]).parent))


def _oracle_export(folder: Path, store: RunStore, tasks_file: Path | None = None) -> list[dict]:
    """Label Studio's JSON export of the exported tasks, each annotated with the object's true mask as polygons."""
    manifest = _manifest(store)
    items = {item["key"]: item for item in json.loads((folder / EXPORT_FILE).read_text())["items"]}
    tasks = json.loads((tasks_file or folder / TASKS_FILE).read_text())
    exported = []
    for number, task in enumerate(tasks, start=1):
        item = items[task["data"]["prvos_key"]]
        expression = next(e for e in manifest.expressions if e.expression_id == item["expression_id"])
        truth = frame_mask(expression, manifest.video_of(expression), item["frame_id"])
        annotation = {"id": number, "completed_by": {"id": 7, "email": "oracle@example.org"},
                      "result": label_studio.polygon_results(truth), "was_cancelled": False,
                      "created_at": "2026-12-02T10:00:00Z", "updated_at": "2026-12-02T10:05:00Z"}  # fmt: skip
        exported.append({**task, "id": 100 + number, "annotations": [annotation]})
    return exported


def test_the_queue_is_the_least_certain_frames_without_ground_truth(review_run, tmp_path):
    _, config, store = review_run
    done = export_queue(store.run_dir, 0, 5, "uncertainty", tmp_path / "queue", per_video=3)
    scores = [item.score for item in done.items]
    assert len(done.items) == 5 and scores == sorted(scores, reverse=True) and scores[0] > 0
    assert max(sum(i.video_id == v for i in done.items) for v in {i.video_id for i in done.items}) <= 3
    manifest = _manifest(store)
    gt = {(e.expression_id, f) for e in manifest.expressions for f in e.gt_frames}
    assert not {(i.expression_id, i.frame_id) for i in done.items} & gt  # never a frame people already labelled
    # One pair per object frame, whichever expression of the object scored it highest.
    assert len({(i.video_id, i.target, i.frame_id) for i in done.items}) == 5
    # The candidates not chosen score no higher than the last one chosen (per-video cap aside, ranked by score).
    assert done.candidates > 5

    tasks = json.loads((tmp_path / "queue" / TASKS_FILE).read_text())
    about = json.loads((tmp_path / "queue" / EXPORT_FILE).read_text())
    assert [t["data"]["prvos_key"] for t in tasks] == [item.key for item in done.items]
    for task, item in zip(tasks, about["items"], strict=True):
        prediction = task["predictions"][0]
        assert prediction["model_version"].startswith("reviewed/r0/ema:")
        assert prediction["score"] == pytest.approx(item["score"], abs=1e-6)
        assert task["data"]["image"] == f"/data/local-files/?d={item['file_name']}"
        assert (tmp_path / "queue" / item["file_name"]).read_bytes()[:2] == b"\xff\xd8"  # the dataset's JPEG
    # COCO holds the same teacher masks as RLE; the polygons Label Studio gets draw them back closely.
    dataset = json.loads((tmp_path / "queue" / COCO_FILE).read_text())
    assert len(dataset["images"]) == len(dataset["annotations"]) == 5
    for annotation, task, item in zip(dataset["annotations"], tasks, about["items"], strict=True):
        teacher = coco.decode(annotation["segmentation"])
        assert teacher.shape == (item["height"], item["width"])
        drawn = label_studio.submitted({"annotations": [{"result": task["predictions"][0]["result"]}]}, teacher.shape)
        if teacher.sum() >= 20:
            iou = (drawn.mask & teacher).sum() / (drawn.mask | teacher).sum()
            assert iou >= 0.8, iou
    record = Path(store.run_dir) / "review" / "exports" / f"{done.export_id}.json"
    assert json.loads(record.read_text())["items"] == about["items"]

    shuffled = export_queue(store.run_dir, 0, 5, "random", tmp_path / "random", seed=3)
    assert [i.key for i in shuffled.items] != [i.key for i in done.items]


def test_corrections_become_a_layer_that_ingest_takes_as_ground_truth(review_run, tmp_path):
    tmp, config, store = review_run
    folder = tmp_path / "queue"
    done = export_queue(store.run_dir, 0, 4, "uncertainty", folder)
    exported = tmp_path / "project.json"
    exported.write_text(json.dumps(_oracle_export(folder, store)))
    imported = import_reviews(store.run_dir, str(exported))
    assert (imported.accepted, imported.rejected, imported.not_annotated) == (4, 0, 0)
    layer = Path(imported.layer)
    assert layer.parent == Path(config.data.root).parent / "data.review" and layer.name == "v0001"
    rows = pq.read_table(layer / review_layer.CORRECTIONS_FILE).to_pylist()
    assert {(r["video_id"], r["frame_id"]) for r in rows} == {(i.video_id, i.frame_id) for i in done.items}
    assert {r["annotator"] for r in rows} == {"oracle@example.org"} and {r["round_index"] for r in rows} == {0}
    assert {r["export_id"] for r in rows} == {done.export_id} and {r["run_id"] for r in rows} == {"reviewed"}

    # Ingest and what follows re-run; the corrected frames are ground truth read from the layer.
    report = run_pipeline(config, run_id="reviewed", stages=("ingest",))
    assert report.ran() == ["ingest"]
    assert report.outcomes["ingest"].result.reviewed_frames >= 4
    manifest = _manifest(store)
    for item in done.items:
        for expression in manifest.expressions:
            if (expression.video_id, expression.object_id) != (item.video_id, item.target):
                continue
            assert item.frame_id in expression.gt_frames and item.frame_id in expression.reviewed_frames
            assert item.frame_id not in expression.hidden_frames
            video = manifest.video_of(expression)
            truth = frame_mask(expression, video, item.frame_id)
            corrected = ground_truth_mask(expression, video, item.frame_id)
            assert (corrected == truth).mean() > 0.97  # the oracle's polygon, filled
    # Importing the same annotations again makes v0002; the newest correction of a frame wins.
    again = import_reviews(store.run_dir, str(exported))
    assert again.layer.name == "v0002" and len(review_layer.read_corrections(layer.parent)) == 4


def test_bad_review_input_is_one_line_or_one_quarantine_row(review_run, tmp_path):
    _, config, store = review_run
    folder = tmp_path / "queue"
    done = export_queue(store.run_dir, 0, 6, "uncertainty", folder)
    tasks = _oracle_export(folder, store)
    first = json.loads((folder / EXPORT_FILE).read_text())["items"][1]
    height, width = first["height"], first["width"]
    tasks[0]["data"]["prvos_key"] = "no-such-expression/00000"  # an unknown task
    for result in tasks[1]["annotations"][0]["result"]:  # drawn on an image of another size
        result["original_width"] = width * 2
    tasks[2]["annotations"][0]["result"] = []  # submitted empty, without saying the object is absent
    tasks[3]["annotations"][0]["result"] = [{"type": "choices", "from_name": "absent", "to_name": "image",
                                              "value": {"choices": ["object absent"]}}]  # fmt: skip
    tasks[4]["annotations"][0]["result"] = [{"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2, 3]}}]
    tasks[5]["annotations"] = []  # nobody has done it yet
    exported = tmp_path / "project.json"
    exported.write_text(json.dumps(tasks))
    layers_before = review_layer.committed_layers(review_layer.layer_root(config.data.root))
    imported = import_reviews(store.run_dir, str(exported))
    assert (imported.accepted, imported.rejected, imported.not_annotated) == (1, 4, 1)
    reasons = [r["reason"] for r in pq.read_table(imported.layer / review_layer.QUARANTINE_FILE).to_pylist()]
    assert any(f"not a task of export {done.export_id}" in r for r in reasons)
    assert any(f"drawn on an image of {width * 2}x{height}" in r for r in reasons)
    assert any("empty annotation" in r for r in reasons) and any("brush mask" in r for r in reasons)
    absent = pq.read_table(imported.layer / review_layer.CORRECTIONS_FILE).to_pylist()
    assert [r["empty"] for r in absent] == [True]
    assert not read_object_mask(str(imported.layer / absent[0]["mask"]), str(review_layer.MASK_VALUE)).any()
    assert len(review_layer.committed_layers(imported.layer.parent)) == len(layers_before) + 1

    # Whole-file problems: one line each, and no layer written.
    truncated = tmp_path / "truncated.json"
    truncated.write_text(exported.read_text()[:200])
    other = json.loads(exported.read_text())
    for task in other:
        task["data"]["prvos_export"] = "someone-else-r0-12345678"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(other))
    for source, message in ((truncated, "is not complete JSON"), (foreign, "was exported by run someone-else, not by reviewed"),
                            (tmp_path / "missing.json", "does not exist")):  # fmt: skip
        with pytest.raises(UserError, match=message) as error:
            import_reviews(store.run_dir, str(source))
        assert "\n" not in str(error.value)
    assert len(review_layer.committed_layers(imported.layer.parent)) == len(layers_before) + 1


def test_a_corrected_coco_file_imports_and_an_rle_that_does_not_decode_is_quarantined(review_run, tmp_path):
    _, _, store = review_run
    folder = tmp_path / "queue"
    export_queue(store.run_dir, 0, 3, "uncertainty", folder)
    dataset = json.loads((folder / COCO_FILE).read_text())
    dataset["annotations"][1]["segmentation"]["counts"] = "\u00ff\u00fe not an rle"
    dataset["annotations"][2]["segmentation"]["size"] = [7, 7]
    corrected = tmp_path / "coco.json"
    corrected.write_text(json.dumps(dataset))
    imported = import_reviews(store.run_dir, str(corrected))
    reasons = [r["reason"] for r in pq.read_table(imported.layer / review_layer.QUARANTINE_FILE).to_pylist()]
    assert imported.accepted + imported.rejected == 3 and imported.rejected >= 2
    assert any("does not decode" in r for r in reasons) and any("an RLE of 7x7" in r for r in reasons)


def test_a_failed_import_leaves_no_layer(review_run, tmp_path, monkeypatch):
    _, config, store = review_run
    folder = tmp_path / "queue"
    export_queue(store.run_dir, 0, 3, "uncertainty", folder)
    exported = tmp_path / "project.json"
    exported.write_text(json.dumps(_oracle_export(folder, store)))
    root = review_layer.layer_root(config.data.root)
    before = sorted(p.name for p in root.iterdir()) if root.exists() else []
    calls = []

    def write_then_fail(path, ids):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        review_layer_write(path, ids)

    review_layer_write = review_layer.write_palette_mask
    monkeypatch.setattr(review_layer, "write_palette_mask", write_then_fail)
    with pytest.raises(OSError):
        import_reviews(store.run_dir, str(exported))
    assert sorted(p.name for p in root.iterdir()) == before  # no layer, no staging folder left


def test_layer_versions_are_read_in_order_and_staging_folders_never(tmp_path):
    root = tmp_path / "data.review"
    correction = review_layer.Correction("train", "v1", "1", "00003", "e1", "", False, "a", "t", "run", 0, "x", "1")
    first = review_layer.write_layer(root, [(correction, np.ones((4, 6), np.uint8))], [], {})
    second = review_layer.write_layer(root, [(correction, np.zeros((4, 6), np.uint8))], [], {})
    (root / ".staging-abandoned").mkdir()
    shutil.copytree(second, root / "v0003-incomplete")  # no layer.json? it has one; a name that is not a version
    (root / "v0003-incomplete" / review_layer.LAYER_FILE).unlink()
    assert [p.name for p in review_layer.committed_layers(root)] == ["v0001", "v0002"]
    newest = review_layer.read_corrections(root)[("train", "v1", "1", "00003")]
    assert newest[0] == second and first.name == "v0001"
    assert review_layer.layers_fingerprint(root) != review_layer.layers_fingerprint(tmp_path / "none")


# --- a real Label Studio ------------------------------------------------------------------------------------

LABEL_STUDIO_VERSION = "1.23.2"  # its own virtualenv: in this one it would move numpy, pyarrow and OpenCV
LABEL_STUDIO_VENV = Path(__file__).resolve().parents[2] / ".venv-label-studio"
TOKEN = "prvos-review-test-token-0123456789abcdef"


def _label_studio_executable() -> Path:
    """Label Studio's command in its own virtualenv beside the repository, made on first use (~2 min)."""
    executable = LABEL_STUDIO_VENV / "bin" / "label-studio"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LABEL_STUDIO_VENV)], check=True)
        subprocess.run([str(LABEL_STUDIO_VENV / "bin" / "pip"), "install", "-q", f"label-studio=={LABEL_STUDIO_VERSION}"],
                       check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})  # fmt: skip
    return executable


@pytest.fixture(scope="module")
def label_studio_server(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 with its own data folder and SQLite, one user with an API token, and a
    folder it serves local files from; stopped (its whole process group) whatever happens."""
    executable = _label_studio_executable()
    home = tmp_path_factory.mktemp("label-studio")
    served = home / "served"
    served.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ, "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(served),
        "LABEL_STUDIO_USERNAME": "reviewer@example.org", "LABEL_STUDIO_PASSWORD": "prvos-review-1",
        "LABEL_STUDIO_USER_TOKEN": TOKEN, "HOME": str(home),
    }  # fmt: skip
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [str(executable), "start", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--data-dir", str(home / "data")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, "Label Studio did not answer within 10 min"
            time.sleep(2)
        yield url, served
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_a_round_trip_through_label_studio_trains_the_next_round(review_run, label_studio_server, monkeypatch, capsys):
    tmp, config, store = review_run
    url, served = label_studio_server
    api = requests.Session()
    api.headers["Authorization"] = f"Token {TOKEN}"
    queue = served / "queue"
    export = cli("review", "export", store.run_dir, "--round", "0", "--count", "3", "--out", queue,
                 "--image-root", served, capsys=capsys)  # fmt: skip
    assert export.code == 0, export.err
    assert "wrote 3 of" in export.out

    # A project through the API: the labelling view, the frames as local files, the tasks with predictions.
    project = api.post(
        f"{url}/api/projects", json={"title": "prvos review", "label_config": (queue / "label_config.xml").read_text()}
    )
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    storage = api.post(
        f"{url}/api/storages/localfiles", json={"project": project_id, "path": str(queue), "use_blob_urls": True}
    )
    assert storage.status_code == 201, storage.text
    imported = api.post(f"{url}/api/projects/{project_id}/import", json=json.loads((queue / TASKS_FILE).read_text()))
    assert imported.status_code == 201 and imported.json()["task_count"] == 3, imported.text
    tasks = api.get(f"{url}/api/tasks", params={"project": project_id, "fields": "all"}).json()["tasks"]
    assert len(tasks) == 3 and all(t["total_predictions"] == 1 for t in tasks)
    image = api.get(url + tasks[0]["data"]["image"])
    assert (
        image.status_code == 200
        and image.content == (queue / tasks[0]["data"]["image"].split("?d=queue/")[1]).read_bytes()
    )

    # An annotator corrects two of the three frames (the object's true mask, drawn as polygons) and submits.
    manifest = _manifest(store)
    items = {i["key"]: i for i in json.loads((queue / EXPORT_FILE).read_text())["items"]}
    corrected = {}
    for task in tasks[:2]:
        item = items[task["data"]["prvos_key"]]
        expression = next(e for e in manifest.expressions if e.expression_id == item["expression_id"])
        truth = frame_mask(expression, manifest.video_of(expression), item["frame_id"])
        answer = api.post(
            f"{url}/api/tasks/{task['id']}/annotations", json={"result": label_studio.polygon_results(truth)}
        )
        assert answer.status_code == 201, answer.text
        corrected[(item["video_id"], item["target"], item["frame_id"])] = truth

    # Imported straight from the running project; the token comes from the environment.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    outcome = cli("review", "import", store.run_dir, "--from", url, "--project", str(project_id), capsys=capsys)
    assert outcome.code == 0, outcome.err
    assert "2 masks accepted, 0 quarantined" in outcome.out and "1 tasks not annotated yet" in outcome.out
    layer = review_layer.committed_layers(review_layer.layer_root(config.data.root))[-1]
    rows = pq.read_table(layer / review_layer.CORRECTIONS_FILE).to_pylist()
    assert {r["annotator"] for r in rows} == {"reviewer@example.org"}
    assert {(r["video_id"], r["target"], r["frame_id"]) for r in rows} == set(corrected)

    # One round on it: ingest and what follows re-run, and round 0's teacher starts from the corrected frames.
    report = run_pipeline(config, run_id="reviewed", stages=UNTIL_INFER)
    assert report.ran()[:4] == ["ingest", "frames", "text", "r0-train"] and "r0-infer" in report.ran()
    pseudo = open_store(report.outcomes["r0-infer"].result.pseudo, "r")
    manifest = _manifest(store)
    for (video_id, target, frame_id), truth in corrected.items():
        expression = next(e for e in manifest.expressions if (e.video_id, e.object_id) == (video_id, target))
        assert frame_id in expression.reviewed_frames
        label = read_pseudo_label(pseudo, expression.expression_id)
        anchored = label.prob[label.frame_ids.index(frame_id)] > 0.5
        expected = resize_map(truth, anchored.shape)
        assert (anchored == expected.astype(bool)).mean() > 0.97  # an anchor is output as given
