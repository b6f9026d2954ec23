"""`prvos inspect`: the report of a reduced run's round (pictures, tables, MLflow artifacts), rendered in
headless Chromium with every picture loaded, and user errors in one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.inspect_report import INDEX_FILE, REVIEW_SHOWN, build_report
from prvos_core.errors import UserError
from prvos_core.viz.pictures import IGNORE_DARK, IGNORE_LIGHT
from prvos_core.viz.strip import DECISION_COLORS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
)  # fmt: skip
PANEL, GAP, HEADER, LABELS = 96, 2, 18, 120  # the strip's geometry (prvos_core.viz.pictures.strip defaults)


@pytest.fixture(scope="module")
def run_dir(reduced_run) -> Path:
    """The session's reduced run (2 videos x 8 frames, 1 pseudo-labeling round), shared with tests/e2e."""
    return Path(reduced_run[2].store.run_dir)


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir, 0)


def _colors_of(block: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in color) for color in np.unique(block.reshape(-1, 3), axis=0)}


def test_report_shows_the_most_and_least_confident_expressions(report, run_dir):
    assert report.folder == run_dir / "inspect" / "r0"
    assert len(report.expressions) == 4 == len(set(report.expressions))
    assert report.pictures[:5] == ("img/rounds.png", *(f"img/expression-{n:02d}.png" for n in range(1, 5)))
    assert report.pictures[5:] == tuple(f"img/review-{n:02d}.png" for n in range(1, REVIEW_SHOWN + 1))
    frames = pq.read_table(run_dir / "r0-refine" / "frames.parquet").to_pylist()
    for expression_id, picture in zip(report.expressions, report.pictures[1:5], strict=True):
        strip = cv2.cvtColor(cv2.imread(str(report.folder / picture)), cv2.COLOR_BGR2RGB)
        rows = [row for row in frames if row["expression_id"] == expression_id]
        assert len(rows) == 8  # every frame of the 8-frame video is shown
        assert strip.shape == (HEADER + 6 * (PANEL + GAP), LABELS + 8 * (PANEL + GAP), 3)
        assert strip.std() > 20
        for column, row in enumerate(rows):
            left = LABELS + column * (PANEL + GAP)
            decision = "ground_truth" if row["source"] == "ground_truth" else ("kept" if row["kept"] else "rejected")
            assert tuple(int(c) for c in strip[2, left + PANEL - 2]) == DECISION_COLORS[decision]
            refined = strip[HEADER + 4 * (PANEL + GAP) :][:PANEL, left : left + PANEL]
            if decision == "rejected":  # a rejected frame is ignored whole, and drawn so
                assert _colors_of(refined) == {IGNORE_DARK, IGNORE_LIGHT}
            frame = strip[HEADER : HEADER + PANEL, left : left + PANEL]
            assert frame.std() > 5  # the real frame, not an empty panel
    plot = cv2.imread(str(report.folder / "img/rounds.png"))
    assert plot.shape[0] > 200 and plot.shape[1] > 400 and plot.std() > 10

    page = (report.folder / INDEX_FILE).read_text()
    assert "<script" not in page and str(report.folder) not in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(report.pictures)
    for expression_id in report.expressions:
        assert expression_id in page
    assert "most confident" in page and "least confident" in page and "rank 1 of" in page


def test_report_is_logged_to_the_parent_mlflow_run(report, run_dir):
    import json

    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    top = {a.path for a in client.list_artifacts(state["parent"], "inspect/r0")}
    assert {"inspect/r0/index.html", "inspect/r0/inspect.json", "inspect/r0/img"} <= top
    pictures = {a.path for a in client.list_artifacts(state["parent"], "inspect/r0/img")}
    assert pictures == {f"inspect/r0/{p}" for p in report.pictures}
    assert report.mlflow_artifacts == "inspect/r0"


def test_one_expression_and_user_errors(report, run_dir, tmp_path):
    chosen = report.expressions[-1]
    one = build_report(run_dir, 0, expression_id=chosen, out=tmp_path / "one", log_to_mlflow=False)
    assert one.expressions == (chosen,) and len(one.pictures) == 2 + REVIEW_SHOWN
    again = build_report(run_dir, 0, expression_id=chosen, out=tmp_path / "one", log_to_mlflow=False)
    assert again.folder == one.folder and sorted(p.name for p in tmp_path.iterdir()) == ["one"]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.csv").write_text("keep")
    cases = [
        (dict(round_index=1), "pick --round 0"),
        (dict(round_index=0, expression_id="nope"), "'nope' has no pseudo-labels"),
        (dict(round_index=0, out=tmp_path / "theirs"), "not an earlier"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(UserError) as raised:
            build_report(run_dir, log_to_mlflow=False, **kwargs)
        assert fragment in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert (tmp_path / "theirs" / "data.csv").read_text() == "keep"
    with pytest.raises(UserError, match="not a PRVOS run"):
        build_report(tmp_path, 0)


def test_inspect_command(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipelines.cli", "inspect", str(run_dir), "--round", "0", "--count", "2",
               "--out", str(tmp_path / "cli")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout and f"{3 + REVIEW_SHOWN} pictures" in done.stdout and "inspect/cli/" in done.stdout
    assert len(list((tmp_path / "cli" / "img").glob("expression-*.png"))) == 2
    failed = subprocess.run([*command[:6], "7"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode != 0 and "Traceback" not in failed.stderr and len(errors) == 1, failed.stderr


def _install_chromium() -> None:
    """The test set-up installs the Debian packages chromium and chromium-driver when they are missing (as root,
    or with password-less sudo), so the README's test command works on a fresh machine."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        try:
            subprocess.run([*sudo, *command], env=env, capture_output=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium through chromedriver (Debian packages chromium and chromium-driver, installed here
    when missing). The flags keep it off the network: without them it tries to reach Google and stalls here."""
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        _install_chromium()
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing and apt-get could not install them: "
            "apt-get install -y chromium chromium-driver (as root)",
            pytrace=False,
        )
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium must not phone home either
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="prvos-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    chromium.get((report.folder / INDEX_FILE).as_uri())
    images = chromium.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"
    )
    assert sorted(src for src, _, _ in images) == sorted(report.pictures)
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"pictures that did not load: {broken}"
    assert "round 0" in chromium.title
    shot = tmp_path / "page.png"
    assert chromium.save_screenshot(str(shot))
    pixels = cv2.imread(str(shot))
    assert pixels.shape[0] >= 600 and pixels.std() > 20
    assert np.count_nonzero(pixels.min(axis=2) < 200) > 0.02 * pixels.shape[0] * pixels.shape[1]  # not a blank page
