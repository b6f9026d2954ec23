"""Label regimes: "first" and "every:K" hide exactly the right masks of the train split, and nothing else.

The manifests are built Ray-free (source -> file checks -> validate), from a synthetic set with a mask on every
frame and from the real clips, whose train videos have a mask on every kept frame and gaps in the frame numbers
(so a position in the video is not a frame number).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prvos_core.data.file_checks import check_files
from prvos_core.data.manifest import Expression, Manifest, Video
from prvos_core.data.masks import read_mask
from prvos_core.data.regimes import apply_label_regime
from prvos_core.data.source import files_on_disk, read_split
from prvos_core.data.validate import VideoFiles, assemble, plan_checks
from prvos_core.datasets.synth import generate_synthetic

FRAMES = 7


def build_manifest(root: Path, splits: tuple[str, ...]) -> Manifest:
    """What ingest builds, without Ray: every split's listings, file reports and validation."""
    videos = []
    for split in splits:
        source = read_split(root, split)
        for raw in source.videos:
            jpegs, pngs = files_on_disk(source.dataset_root, split, raw.video_id)
            videos.append(VideoFiles(source, raw, tuple(sorted(jpegs)), tuple(sorted(pngs))))
    reports = {report.uri: report for report in check_files(plan_checks(videos), decode=False)}
    return assemble(videos, reports, max_text_chars=512)


@pytest.fixture(scope="module")
def dense_synth(tmp_path_factory) -> tuple[Path, Manifest]:
    """3 train videos x 7 frames with a mask on every frame (label_every=1), and its manifest."""
    root = tmp_path_factory.mktemp("regimes") / "data"
    generate_synthetic(root, videos=3, valid_videos=1, frames=FRAMES, size=(32, 32), label_every=1, seed=4)
    return root, build_manifest(root, ("train", "valid"))


def visible_positions(root: Path, expression: Expression) -> list[int]:
    """Positions of the frames whose mask shows the expression's object, read from the PNGs themselves."""
    folder = root / "train" / "Annotations" / expression.video_id
    return [
        t
        for t, frame in enumerate(expression.all_frames)
        if np.any(read_mask(folder / f"{frame}.png") == int(expression.object_id))
    ]


def test_provided_changes_nothing(dense_synth):
    _, manifest = dense_synth
    assert apply_label_regime(manifest, "provided", "train") is manifest


def test_first_keeps_the_first_frame_that_shows_the_object(dense_synth):
    root, manifest = dense_synth
    regime = apply_label_regime(manifest, "first", "train")
    before = {e.expression_id: e for e in manifest.expressions}
    train = regime.split_expressions("train")
    assert len(train) > 10
    for expression in train:
        shown = visible_positions(root, expression)
        assert expression.gt_frames == (expression.all_frames[shown[0]],), expression.text
        assert expression.hidden_frames == tuple(expression.all_frames[t] for t in shown[1:])
        provided = before[expression.expression_id].gt_frames
        assert set(expression.gt_frames) | set(expression.hidden_frames) == set(provided)
    assert sum(len(e.hidden_frames) for e in train) > 0
    assert regime.split_expressions("valid") == manifest.split_expressions("valid")
    assert regime.videos == manifest.videos and regime.quarantine == manifest.quarantine


@pytest.mark.parametrize("every", [1, 2, 3])
def test_every_k_keeps_positions_0_k_2k(dense_synth, every):
    root, manifest = dense_synth
    regime = apply_label_regime(manifest, f"every:{every}", "train")
    for expression in regime.split_expressions("train"):
        shown = visible_positions(root, expression)
        assert expression.gt_frames == tuple(expression.all_frames[t] for t in shown if t % every == 0)
        assert expression.hidden_frames == tuple(expression.all_frames[t] for t in shown if t % every)
    assert regime.split_expressions("valid") == manifest.split_expressions("valid")


def test_every_k_may_leave_an_expression_without_ground_truth():
    frames = ("00000", "00001", "00002", "00003")
    video = Video("v", "train", "/data", frames, frames, 8, 8)
    late = Expression("e1", "0", "train", "v", "1", None, "the late one", ("00001", "00003"), frames)
    early = Expression("e2", "1", "train", "v", "2", None, "the early one", ("00000", "00001"), frames)
    manifest = Manifest((video,), (late, early), ())
    regime = {e.expression_id: e for e in apply_label_regime(manifest, "every:2", "train").expressions}
    assert (regime["e1"].gt_frames, regime["e1"].hidden_frames) == ((), ("00001", "00003"))
    assert (regime["e2"].gt_frames, regime["e2"].hidden_frames) == (("00000",), ("00001",))
    first = {e.expression_id: e for e in apply_label_regime(manifest, "first", "train").expressions}
    assert first["e1"].gt_frames == ("00001",)  # "first" always leaves one


def test_bad_regime_string_raises_value_error(dense_synth):
    _, manifest = dense_synth
    with pytest.raises(ValueError, match="does not parse"):
        apply_label_regime(manifest, "every:x", "train")


def test_regimes_on_the_real_clips(shared_data):
    """The real train clips keep every k-th original frame, so ids have gaps: every:2 keeps positions 0, 2, 4 ...
    (ids 00000, 00004, 00008 for blackswan), not even frame numbers."""
    manifest = build_manifest(shared_data / "ref_davis16_mini", ("train", "valid"))
    train = manifest.split_expressions("train")
    assert train and all(e.gt_frames == e.all_frames for e in train)  # dense masks, objects always visible
    first = apply_label_regime(manifest, "first", "train")
    for expression in first.split_expressions("train"):
        assert expression.gt_frames == expression.all_frames[:1]
        assert expression.hidden_frames == expression.all_frames[1:]
    every = apply_label_regime(manifest, "every:2", "train")
    swan = next(e for e in every.expressions if e.video_id == "blackswan")
    assert swan.gt_frames[:3] == ("00000", "00004", "00008")
    assert swan.gt_frames == swan.all_frames[::2] and swan.hidden_frames == swan.all_frames[1::2]
    assert every.split_expressions("valid") == manifest.split_expressions("valid")
