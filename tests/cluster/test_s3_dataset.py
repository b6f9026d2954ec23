"""A dataset on s3:// (moto on 127.0.0.1): ingest lists, checks and reads it, the frames stage decodes its JPEGs,
masks and the dataset fingerprint come from the bucket, and a bucket without credentials is one clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import fsspec
import numpy as np
import pytest
from s3fs import S3FileSystem

from pipelines.fingerprint import dataset_fingerprint
from prvos_core import storage
from prvos_core.data.frame_store import FrameReader
from prvos_core.data.frames import FULL, load_frame, read_object_mask
from prvos_core.data.manifest import read_manifest
from prvos_core.data.source import locate
from prvos_core.datasets.synth import generate_synthetic
from prvos_core.errors import StorageError, UserError
from tests.cluster.conftest import BUCKET

SIZE = (32, 32)
MIN_CROP = 0.8

# Ingest and the frames stage on an embedded Ray started here, so that its workers get this test's S3 settings
# (a Ray already running in the test session would not have them).
INGEST_AND_FRAMES = """
import json, sys, ray
from prvos_core.config import FramesSection, IngestSection
from stages import frames, ingest

root, run, temp_dir = sys.argv[1:4]
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR", log_to_driver=False)
ingested = ingest.run(ingest.IngestInputs(root, ("train", "valid"), run + "/ingest"), IngestSection())
stored = frames.run(frames.FramesInputs(ingested.manifest_dir, run + "/frames", (32, 32), 0.8), FramesSection())
print(json.dumps({"manifest": ingested.manifest_dir, "store": stored.store, "videos": ingested.videos,
                  "expressions": ingested.expressions, "quarantined": ingested.quarantined, "frames": stored.frames}))
"""


@pytest.fixture
def s3_dataset(s3_env, tmp_path):
    """A small synthetic dataset made on disk and uploaded to the bucket: (local root, s3 root, its summary)."""
    local = tmp_path / "synth"
    summary = generate_synthetic(local, videos=2, valid_videos=1, frames=4, size=(24, 40), label_every=2)
    uri = f"s3://{BUCKET}/datasets-{uuid.uuid4().hex[:8]}/synth"
    storage.upload_folder(str(local), uri)
    return local, uri, summary


@pytest.mark.slow  # starts its own Ray (see INGEST_AND_FRAMES)
def test_a_dataset_on_s3_ingests_and_its_frames_and_masks_are_read(s3_dataset):
    local, uri, summary = s3_dataset
    run = f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:8]}/r1"
    temp_dir = tempfile.mkdtemp(prefix="prvs3-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    try:
        done = subprocess.run([sys.executable, "-c", INGEST_AND_FRAMES, uri, run, temp_dir], capture_output=True,
                              text=True, timeout=240)  # fmt: skip
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["manifest"].startswith(run) and result["store"].startswith(run)

    manifest = read_manifest(result["manifest"])
    assert result["quarantined"] == 0
    assert len(manifest.videos) == result["videos"] == summary.train_videos + summary.valid_videos
    assert len(manifest.expressions) == result["expressions"] > 0
    for video in manifest.videos:
        assert video.dataset_root == uri
        on_disk = sorted(p.stem for p in (local / video.split / "JPEGImages" / video.video_id).glob("*.jpg"))
        assert list(video.frame_ids) == on_disk and (video.height, video.width) == (24, 40)
    assert result["frames"] == sum(video.n_frames for video in manifest.videos)

    # The frame store on S3 holds exactly the pixels of the JPEGs decoded from the local copy.
    reader = FrameReader(result["store"])
    for video in manifest.videos:
        expected = [load_frame(str(local / video.split / "JPEGImages" / video.video_id / f"{frame}.jpg"), (40, 40),
                               FULL, (24, 40)).transpose(1, 2, 0) for frame in video.frame_ids]  # fmt: skip
        np.testing.assert_array_equal(reader.read(video), np.stack(expected))

    # A ground-truth mask read from the bucket through the manifest's paths is the local file's.
    expression = next(e for e in manifest.expressions if e.gt_frames and e.object_id)
    video = next(v for v in manifest.videos if v.video_id == expression.video_id and v.split == expression.split)
    frame = expression.gt_frames[0]
    remote = str(video.paths.mask_path(video.video_id, frame))
    assert remote.startswith(f"{uri}/{video.split}/Annotations/")
    mask = read_object_mask(remote, expression.object_id)
    np.testing.assert_array_equal(mask, read_object_mask(str(local / remote[len(uri) + 1 :]), expression.object_id))
    assert mask.sum() > 0


def test_an_s3_dataset_fingerprint_follows_its_objects(s3_dataset):
    _, uri, _ = s3_dataset
    before = dataset_fingerprint(uri)
    assert before == dataset_fingerprint(uri) == dataset_fingerprint(f"{uri}/")
    frame = next(name for name in fsspec.filesystem("s3").find(uri) if name.endswith(".jpg"))
    storage.write_bytes(f"s3://{frame}", storage.read_bytes(f"s3://{frame}") + b"\0")  # one changed frame
    assert dataset_fingerprint(uri) != before
    assert locate(uri) == (storage.dataset_path(uri), None)
    with pytest.raises(UserError, match=r"dataset root s3://.*/missing not found"):
        locate(f"{uri}-missing/missing")


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere: not in the environment, no shared files, no instance metadata service. S3
    filesystems are cached per class and read credentials once: new ones here, and none of these kept after."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    S3FileSystem.clear_instance_cache()
    yield
    S3FileSystem.clear_instance_cache()


def test_an_s3_root_without_credentials_is_one_line_naming_the_bucket_and_the_fix(s3_dataset, no_credentials):
    _, uri, _ = s3_dataset
    for attempt in (
        lambda: locate(uri),  # ingest's first look at data.root
        lambda: dataset_fingerprint(uri),  # the driver, before ingest
        lambda: storage.read_bytes(f"{uri}/train/meta.json"),  # a worker reading a file
    ):
        with pytest.raises(StorageError) as raised:
            attempt()
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(f"s3://{BUCKET}: no AWS credentials found; ")
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message and "every Ray node" in message


def test_prvos_run_on_an_s3_root_without_credentials_stops_before_mlflow_and_ray(s3_dataset, tmp_path):
    """The same through the command line: one error line and exit 2, and nothing started (no MLflow store, no
    Ray session, no stage folder): the root is checked before either."""
    _, uri, _ = s3_dataset
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", HF_HUB_OFFLINE="1")  # fmt: skip
    env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]  # the local server, no keys
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "configs/demo.yaml", "--run-id", "s3",
         "--set", f"data.root={uri}", "--set", f"run.root={runs}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: s3://{BUCKET}: no AWS credentials found; "), errors
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (runs / "s3").iterdir()) == ["config.yaml"]  # no stage, no lineage record
    assert not any(p.name.startswith(("mlflow", "mlruns")) for p in runs.iterdir()), list(runs.iterdir())
