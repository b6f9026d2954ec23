"""The stage runner: commit markers written last, skip on equal fingerprints, re-run on a change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from pipelines.run_store import RunStore, open_run
from pipelines.runner import run_stage
from prvos_core import storage
from prvos_core.errors import UserError
from stages.result import StageResult, output


@dataclass(frozen=True, kw_only=True)
class CountResult(StageResult):
    stage: ClassVar[str] = "s"
    out: str = output()
    n: int


def _work(calls: list, fail: bool = False):
    def work(stage_dir: str) -> CountResult:
        calls.append(stage_dir)
        storage.write_json(storage.join(stage_dir, "out.json"), {"n": len(calls)})
        if fail:
            raise RuntimeError("boom")
        return CountResult(out=storage.join(stage_dir, "out.json"), n=len(calls))

    return work


def test_skip_rerun_and_marker_last(tmp_path):
    store = RunStore(str(tmp_path), "run1")
    calls: list = []
    first = run_stage(store, "s", "fp1", _work(calls), CountResult)
    assert first.ran and len(calls) == 1 and store.read_marker("s").fingerprint == "fp1"
    again = run_stage(store, "s", "fp1", _work(calls), CountResult)
    assert not again.ran and len(calls) == 1 and again.result == first.result and again.result.n == 1
    changed = run_stage(store, "s", "fp2", _work(calls), CountResult)
    assert changed.ran and len(calls) == 2 and store.read_marker("s").fingerprint == "fp2"


def test_a_failing_stage_leaves_no_marker(tmp_path):
    store = RunStore(str(tmp_path), "run1")
    with pytest.raises(RuntimeError):
        run_stage(store, "s", "fp1", _work([], fail=True), CountResult)
    assert store.read_marker("s") is None
    assert (tmp_path / "run1" / "s" / "out.json").exists()  # partial output stays for a resumable stage
    calls: list = []
    assert run_stage(store, "s", "fp1", _work(calls), CountResult).ran and len(calls) == 1


def test_open_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notarun").mkdir()
    with pytest.raises(UserError, match="is not a PRVOS run"):
        open_run(str(tmp_path / "notarun")).read_config_dict()


def test_markers_record_checksums_and_damaged_stages_run_again(tmp_path):
    from pipelines.integrity import checksums

    store = RunStore(str(tmp_path), "run1")
    calls: list = []
    run_stage(store, "s", "fp1", _work(calls), CountResult)
    marker = store.read_marker("s")
    assert marker.files == checksums(store.stage_dir("s")) and list(marker.files) == ["out.json"]
    out = tmp_path / "run1/s/out.json"
    out.write_bytes(out.read_bytes().replace(b"1", b"7"))  # same size, other content
    assert not run_stage(store, "s", "fp1", _work(calls), CountResult).ran  # sizes only: not seen
    repaired = run_stage(store, "s", "fp1", _work(calls), CountResult, verify="hashes")
    assert repaired.ran and [d.problem for d in repaired.repaired] == ["content changed (hash differs)"]
    assert repaired.changed  # the re-run wrote {"n": 2}, not what the marker recorded
    out.unlink()
    again = run_stage(store, "s", "fp1", _work([]), CountResult)  # a fresh counter writes {"n": 1} again
    assert again.ran and [d.problem for d in again.repaired] == ["missing"]
    assert run_stage(store, "s", "fp1", _work([]), CountResult, force=True).ran
