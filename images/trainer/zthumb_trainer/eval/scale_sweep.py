"""The scale sweep of an eval report: every per-image metric averaged per prompt group and LoRA scale,
the leakage per scale, the recommended scale (``zthumb_contract.scale_sweep.recommend_scale``), and
the chart of every metric against the scale (``curves/scales.png``), so a person sees where the
adapter starts to hurt.

Generic over the metrics: whatever a sample carries in ``Sample.scores`` (the pixel difference, CLIP-T,
CLIP-I, and any metric added later) is averaged and drawn, one panel per metric with one line per
group; nothing here names a metric but to order the panels. Drawn with matplotlib's Agg backend, in
the style of the training curves (``curves.py``): fixed size, whatever the number of scales.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: savefig draws with Agg, no display needed
from zthumb_contract.scale_sweep import (
    GROUP_TITLES,
    LEAKAGE,
    METRIC_TITLES,
    PROMPT_GROUPS,
    WITHOUT_TRIGGER,
    ByScale,
    recommend_scale,
    scale_key,
)

from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.curves import CURVES_DIR, DPI, FIGURE_INCHES

SCALES_IMAGE = f"{CURVES_DIR}/scales.png"
PANEL_COLUMNS = 2
GROUP_COLORS = {0: "tab:blue", 1: "tab:orange", 2: "tab:green", 3: "tab:red", 4: "tab:purple"}
MAX_PANELS = 16  # a report's metrics are a handful; the figure's height stays bounded whatever comes


def ordered_metrics(names: list[str]) -> list[str]:
    """The known metrics in ``METRIC_TITLES`` order, then the others as first met."""
    known = [name for name in METRIC_TITLES if name in names]
    return known + [name for name in dict.fromkeys(names) if name not in METRIC_TITLES]


def sweep_groups(
    samples: list[Sample], scales: list[float], leakage: dict[float, float] | None = None
) -> dict[str, dict[str, ByScale]]:
    """group -> metric -> {scale: the mean over the group's prompts and seeds}; the leakage (already
    one number per scale) as the ``without_trigger`` group."""
    groups: dict[str, dict[str, ByScale]] = {}
    for group in PROMPT_GROUPS:
        picked = [sample for sample in samples if sample.group == group]
        metrics = ordered_metrics([name for sample in picked for name in sample.scores])
        by_metric: dict[str, ByScale] = {}
        for metric in metrics:
            by_scale: ByScale = {}
            for scale in scales:
                values = [s.scores[metric] for s in picked if s.scale == scale and metric in s.scores]
                finite = [value for value in values if math.isfinite(value)]
                if finite:
                    by_scale[scale_key(scale)] = round(sum(finite) / len(finite), 4)
            if by_scale:
                by_metric[metric] = by_scale
        if by_metric:
            groups[group] = by_metric
    if leakage:
        groups[WITHOUT_TRIGGER] = {LEAKAGE: {scale_key(s): leakage[s] for s in scales if s in leakage}}
    return groups


def sweep_block(
    config: EvalConfig, samples: list[Sample], staging: Path, leakage: dict[float, float] | None = None
) -> dict[str, Any]:
    """The report's ``sweep`` block; its chart drawn into ``<staging>/curves/`` when there are at
    least two scales to draw."""
    groups = sweep_groups(samples, config.scales, leakage)
    recommendation = recommend_scale(groups, config.scales, config.gate)
    block: dict[str, Any] = {
        "reference_scale": config.scales[0],
        "scales": config.scales,
        "groups": groups,
        "recommended_scale": recommendation.scale,
        "rule": recommendation.rule,
    }
    if len(config.scales) > 1 and groups:
        (staging / CURVES_DIR).mkdir(exist_ok=True)
        draw_scale_chart(groups, recommendation.scale, staging / SCALES_IMAGE)
        block["chart"] = SCALES_IMAGE
    return block


def draw_scale_chart(
    groups: dict[str, dict[str, ByScale]], recommended: float | None, path: Path
) -> list[str]:
    """One panel per metric (every metric of any group), each group a line over the scales, the
    recommended scale a dashed line; the titles of the panels drawn."""
    metrics = ordered_metrics([name for by_metric in groups.values() for name in by_metric])[:MAX_PANELS]
    columns = min(PANEL_COLUMNS, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    width, height = FIGURE_INCHES
    figure = Figure(figsize=(width, height * rows), dpi=DPI, layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, metric in zip(panels, metrics, strict=False):
        for index, (group, by_metric) in enumerate(groups.items()):
            if metric not in by_metric:
                continue
            points = sorted((float(scale), value) for scale, value in by_metric[metric].items())
            axes.plot(
                [scale for scale, _ in points], [value for _, value in points], marker="o", linewidth=2,
                color=GROUP_COLORS.get(index % len(GROUP_COLORS)), label=GROUP_TITLES.get(group, group),
            )  # fmt: skip
        if recommended is not None:
            axes.axvline(recommended, color="gray", linestyle="--", linewidth=1, label="recommended")
        axes.set_title(METRIC_TITLES.get(metric, metric), fontsize="medium")
        axes.set_xlabel("LoRA scale")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for axes in panels[len(metrics) :]:
        axes.set_visible(False)
    figure.savefig(path)
    return [axes.get_title() for axes in figure.axes if axes.get_visible()]
