"""The eval reports on disk, as the report pages read them: a run's directory, its files, its
``summary.json``, and the index of the newest runs.

Bounded whatever is on the volume: a summary larger than ``MAX_SUMMARY_BYTES`` is not read (the
eval step writes a few KiB), and the index reads the summaries of at most ``MAX_INDEX_RUNS`` runs,
the newest by their summary's modification time, out of at most ``MAX_SCANNED_ENTRIES`` entries of
the reports directory.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from zthumb_contract.eval_report import EvalReport

from zthumb.errors import ReportNotFoundError

# A LoRAFinetune's name (DNS subdomain), which is the report's directory name.
RUN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
FILE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
}
IMAGE_TYPES = {".png", ".jpg", ".jpeg"}
MAX_SUMMARY_BYTES = 8 * 2**20
MAX_INDEX_RUNS = 200
MAX_SCANNED_ENTRIES = 10_000
SUMMARY = "summary.json"


def run_directory(root: Path, run: str) -> Path:
    """The report directory of ``run``: a valid name, inside ``root``, holding a summary."""
    if not RUN_NAME.fullmatch(run):
        raise ReportNotFoundError(f"no report {run!r}: not a LoRAFinetune name")
    directory = (root / run).resolve()
    if not directory.is_relative_to(root) or not (directory / SUMMARY).is_file():
        raise ReportNotFoundError(f"no report for run {run!r} (yet): its eval step writes it")
    return directory


def report_file(directory: Path, relative: str) -> Path:
    """A file of the report: relative, without '..', inside ``directory`` after symlinks, a known type."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts or "\\" in relative:
        raise ReportNotFoundError(f"no file {relative!r} in this report")
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory) or path.suffix.lower() not in FILE_TYPES or not path.is_file():
        raise ReportNotFoundError(f"no file {relative!r} in this report")
    return path


def read_summary(directory: Path) -> EvalReport:
    """The run's summary.json through ``EvalReport``: a report of any version (the model reads the
    keys every version wrote), each value it refuses dropped on its own; at most
    ``MAX_SUMMARY_BYTES`` read."""
    try:
        with (directory / SUMMARY).open("rb") as handle:
            text = handle.read(MAX_SUMMARY_BYTES + 1)
        if len(text) > MAX_SUMMARY_BYTES:
            raise ValueError(f"larger than {MAX_SUMMARY_BYTES} bytes")
        data = json.loads(text)
    except (OSError, ValueError) as error:
        raise ReportNotFoundError(f"the report of {directory.name!r} cannot be read: {error}") from None
    report = EvalReport.from_report(data)
    if report is None:
        raise ReportNotFoundError(f"the report of {directory.name!r} is not a summary")
    return report


def thumbnail(directory: Path, report: EvalReport) -> str | None:
    """The report's picture for the index: the loss curve, else the validation strip, else the
    first pair; only an image that is there and would be served."""
    curves = report.curves
    candidates = [curves.loss, curves.validation_strip] if curves else []
    candidates += [pair.image for pair in report.pairs[:1]]
    for candidate in candidates:
        if not candidate or PurePosixPath(candidate).suffix.lower() not in IMAGE_TYPES:
            continue
        try:
            report_file(directory, candidate)
        except ReportNotFoundError:
            continue
        return candidate
    return None


def index_entry(directory: Path, mtime: float) -> dict[str, Any] | None:
    """One row of the index: the run's key numbers and its thumbnail; None when it has no summary
    that can be read."""
    try:
        report = read_summary(directory)
    except ReportNotFoundError:
        return None
    training = report.training or {}
    return {
        "run": directory.name,
        "mtime": mtime,
        "adapter_sha256": ((report.adapter or {}).get("sha256") or "")[:12],
        "final_loss": training.get("finalLoss"),
        "steps_per_second": training.get("stepsPerSecond"),
        "mean_pixel_difference": report.mean_pixel_difference,
        "clip_i_gain": report.clip.clip_i_gain if report.clip else None,
        "clip_t_drop": report.clip.clip_t_drop if report.clip else None,
        "leakage": report.leakage.leakage if report.leakage else None,
        "gate": report.gate,
        "thumbnail": thumbnail(directory, report),
    }


def _dated_run(root: Path, name: str) -> tuple[float, Path] | None:
    """(summary mtime, directory) of a run whose report would be served (a symlink out of
    ``root`` is not); None otherwise."""
    try:
        directory = run_directory(root, name)
        return (directory / SUMMARY).stat().st_mtime, directory
    except (ReportNotFoundError, OSError):
        return None


def index_entries(root: Path, most: int = MAX_INDEX_RUNS) -> list[dict[str, Any]]:
    """The newest ``most`` runs under ``root`` (by their summary's mtime), newest first."""
    if not root.is_dir():
        return []
    dated = [
        run
        for entry in itertools.islice(root.iterdir(), MAX_SCANNED_ENTRIES)
        if (run := _dated_run(root, entry.name)) is not None
    ]
    dated.sort(key=lambda item: (item[0], item[1].name), reverse=True)
    newest = (index_entry(directory, mtime) for mtime, directory in dated[:most])
    return [entry for entry in newest if entry is not None]
