"""P5: wall time of `prvos demo` from nothing (fresh folder: data synthesis, Ray start, 2 rounds, table) and,
with --suite, of the whole test suite, on this machine (or, with --suite-log, the suite time pytest printed in
a `.ci/run` log: a fresh clone, as CI runs it).

    .venv/bin/python benchmarks/perf_p5.py [--suite | --suite-log CI.log] [--keep-demo]

The demo runs as the README's first command leaves it (after the install): `prvos demo` in an empty working
folder, so it makes its synthetic data and run store there. The suite runs as `.ci/run` runs it
(`python -m pytest` in the checkout). Both are timed by wall clock; the load average is sampled throughout.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import perf_setup  # noqa: F401
from perf_setup import PARTS, LoadLog, command_line, write_part

from benchmarks.common import markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRVOS = Path(sys.executable).with_name("prvos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="store_true", help="also time the whole test suite")
    parser.add_argument("--suite-log", type=Path,
                        help="instead of running the suite, read its time from a log of `.ci/run` (pytest's summary)")  # fmt: skip
    parser.add_argument("--keep-demo", action="store_true",
                        help="reuse the demo figures of the last run of this script instead of running the demo")  # fmt: skip
    args = parser.parse_args()
    load = LoadLog()
    figures, rows = {}, []
    if args.keep_demo:
        previous = json.loads((PARTS / "p5_demo_suite.json").read_text(encoding="utf-8"))
        demo_s, curve = previous["demo_s"], previous["demo_curve"]
    else:
        demo_s, curve = _demo(load)
    figures.update({"demo_s": demo_s, "demo_curve": curve})
    rows.append(["`prvos demo` from an empty folder", "<= 300 s", f"{demo_s:.0f} s ({demo_s / 60:.1f} min)",
                 "yes" if demo_s <= 300 else "**no**"])  # fmt: skip
    if args.suite or args.suite_log:
        suite_s, summary, slowest = _suite_from(args.suite_log.read_text()) if args.suite_log else _suite(load)
        figures.update({"suite_s": suite_s, "suite_summary": summary, "suite_slowest": slowest})
        rows.append(["test suite (`python -m pytest`)", "<= 600 s", f"{suite_s:.0f} s ({suite_s / 60:.1f} min): {summary}",
                     "yes" if suite_s <= 600 else "**no**"])  # fmt: skip
    body = markdown_table(["what", "target", "measured", "met?"], rows) + "\n\nDemo round curve (valid J&F per round): "
    body += ", ".join(f"r{r}: {v:.3f}" for r, v in enumerate(curve)) + "\n"
    if figures.get("suite_slowest"):
        body += (
            "\nSlowest parts of the suite (pytest --durations):\n\n```\n"
            + "\n".join(figures["suite_slowest"])
            + "\n```\n"
        )
    print(body)
    print(write_part("p5_demo_suite", "P5 demo and test suite", command_line(), body, figures, load))


def _sampling(load: LoadLog, stop: threading.Event) -> None:
    while not stop.wait(15):
        load.sample()


def _timed(command: list[str], cwd: Path, load: LoadLog) -> tuple[float, str]:
    stop = threading.Event()
    sampler = threading.Thread(target=_sampling, args=(load, stop), daemon=True)
    sampler.start()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    stop.set()
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def _demo(load: LoadLog) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="prvos-p5-demo-") as folder:
        seconds, out = _timed([str(PRVOS), "demo"], Path(folder), load)
    # Rows of the round-curve table: "│     0 │       0.070 │ ..."
    curve = [float(m.group(2)) for m in re.finditer(r"│\s+(\d+)\s+│\s+([0-9.]+)\s+│", out)]
    return seconds, curve


def _suite(load: LoadLog) -> tuple[float, str, list[str]]:
    seconds, out = _timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], REPO, load)
    return (seconds, *_suite_from(out)[1:])


def _suite_from(out: str) -> tuple[float, str, list[str]]:
    """(pytest's own seconds, its summary line, the --durations lines) from pytest's output."""
    found = re.findall(r"^=*\s*((?:\d+ \w+, )*\d+ \w+ in ([0-9.]+)s(?: \([0-9:]+\))?)\s*=*$", out, re.M)
    if not found:
        raise SystemExit("no pytest summary line (`N passed in S s`) in the suite output")
    summary, seconds = found[-1][0], float(found[-1][1])
    lines = out.strip().splitlines()
    # pytest's --durations block (pyproject addopts): where the suite's time goes.
    start = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None)
    slowest = [line for line in lines[start + 1 :] if re.match(r"^\d+\.\d+s ", line)] if start is not None else []
    return seconds, summary, slowest


if __name__ == "__main__":
    main()
