"""report.md of an evaluation, rendered from its summary (``run.write_report``): the gate's
verdict under the title, the numbers, the metrics per LoRA scale, the pairs, the validation grids."""

from __future__ import annotations

from typing import Any

from zthumb_contract.eval_report import (
    HOLDOUT_RISE_FRACTION,
    AestheticBlock,
    CaptioningBlock,
    ClipBlock,
    CurvesBlock,
    DinoBlock,
    EvalReport,
    HoldoutTrend,
    LeakageBlock,
)
from zthumb_contract.scale_sweep import GROUP_TITLES, METRIC_TITLES, ScaleSweep

from zthumb_trainer.train.measure import training_markdown


def render_markdown(report: EvalReport) -> str:
    adapter = report.adapter or {}
    base = report.base_model or {}
    scales = " | ".join(f"{scale:g}" for scale in report.scales)
    width, height = [*report.image_size, None, None][:2]
    lines = [
        f"# LoRA evaluation: {report.run_name}",
        "",
        f"- Server: `{report.server_url}`, backend `{report.backend}`"
        f" ({base.get('device')}, {base.get('dtype')}), model `{base.get('model')}`",
        f"- Adapter: `{adapter.get('path', report.lora_path)}` sha256 `{adapter.get('sha256', '?')}`",
        f"- Scales compared: {scales}; image size {width}x{height}, {report.steps} steps",
        f"- Mean pixel difference vs scale {report.reference_scale:g}: {report.mean_pixel_difference}"
        f" (0–255; 0 means the adapter changed nothing)",
        f"- Mean latency per request: {report.mean_latency_s} s over {report.requests} requests",
        training_markdown(report.training),
        *recommended_markdown(report.sweep),
        "",
        *curves_markdown(report.curves),
        *sweep_markdown(report.sweep),
    ]
    for pair in report.pairs:
        differences = ", ".join(f"scale {k}: {v}" for k, v in pair.mean_pixel_difference.items())
        latencies = ", ".join(f"scale {k}: {v} s" for k, v in pair.latency_s.items())
        group = (
            "" if pair.group == report.pairs[0].group else f" ({GROUP_TITLES.get(pair.group, pair.group)})"
        )
        lines += [
            f"## {pair.prompt} — seed {pair.seed}{group}",
            "",
            f"![{pair.prompt} seed {pair.seed}]({pair.image})",
            "",
            f"Mean pixel difference: {differences}. Latency: {latencies}.",
            "",
        ]
    lines += clip_markdown(report.clip)
    lines += fidelity_markdown(report.dino, report.aesthetic)
    lines += leakage_markdown(report.leakage)
    lines += validation_markdown(report.validation)
    lines += captioning_markdown(report.captioning)
    # The gate's verdict right under the title: it decides whether the adapter stays deployed.
    return "\n".join([*lines[:2], *gate_markdown(report.gate), *lines[2:]])


def gate_markdown(gate: dict[str, Any] | None) -> list[str]:
    """The verdict of spec.eval.gate as a table of its checks."""
    if not gate:
        return []
    if gate["passed"]:
        verdict = "**Quality gate passed**: the adapter stays deployed."
    else:
        verdict = (
            "**Quality gate failed** (EvalGateFailed): the operator rolls the server back to the "
            "previous adapter and the run ends Failed."
        )
    lines = [verdict, "", "| check | threshold | measured | result |", "| --- | --- | --- | --- |"]
    for check in gate["checks"]:
        measured = f"{check['value']:.4g}" if "value" in check else "not measured"
        lines.append(
            f"| {check['metric']} | {check['kind']} {check['threshold']:g} | {measured} | "
            f"{'pass' if check['passed'] else 'FAIL'} |"
        )
    return [*lines, ""]


def recommended_markdown(sweep: ScaleSweep | None) -> list[str]:
    """The recommended scale in the report's list of facts, with the rule that chose it."""
    if sweep is None:
        return []
    if sweep.recommended_scale is None:
        return [f"- Recommended scale: none ({sweep.rule})"]
    return [f"- **Recommended scale: {sweep.recommended_scale:g}** ({sweep.rule})"]


def sweep_markdown(sweep: ScaleSweep | None) -> list[str]:
    """The scale sweep: its chart, then one table per group (a row per scale, a column per metric)."""
    if sweep is None or not sweep.groups:
        return []
    lines = ["## Metrics by LoRA scale", ""]
    if sweep.chart:
        lines += [f"![every metric against the LoRA scale]({sweep.chart})", ""]
    for group, by_metric in sweep.groups.items():
        metrics = list(by_metric)
        scales = sorted({key for values in by_metric.values() for key in values}, key=float)
        lines += [
            f"### {GROUP_TITLES.get(group, group).capitalize()}",
            "",
            "| scale | " + " | ".join(METRIC_TITLES.get(m, m) for m in metrics) + " |",
            "| --- |" + " --- |" * len(metrics),
        ]
        for scale in scales:
            marks = " (reference)" if float(scale) == sweep.reference_scale else ""
            marks += " (recommended)" if float(scale) == sweep.recommended_scale else ""
            cells = [f"{by_metric[m][scale]:.4g}" if scale in by_metric[m] else "–" for m in metrics]
            lines.append(f"| {scale}{marks} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def curves_markdown(curves: CurvesBlock | None) -> list[str]:
    """The training curves and the validation strip, as the eval step drew them."""
    if not curves or not curves.images():
        return []
    lines = ["## Training curves", ""]
    if curves.loss:
        lines += [
            f"Loss over steps {curves.first_step}–{curves.last_step} ({curves.logged_steps} steps logged, "
            f"drawn as {curves.points} points), raw and smoothed:",
            "",
            f"![training loss]({curves.loss})",
            "",
        ]
    lines += holdout_markdown(curves.holdout)
    if curves.learning_rate:
        lines += [f"![learning rate]({curves.learning_rate})", ""]
    if curves.validation_strip:
        steps = ", ".join(str(step) for step in curves.strip_steps)
        lines += [
            f"Validation grids at steps {steps}:",
            "",
            f"![validation grids across steps]({curves.validation_strip})",
            "",
        ]
    return lines


def holdout_markdown(trend: HoldoutTrend | None) -> list[str]:
    """The held-out loss in numbers, and a call-out when it is rising (``HoldoutTrend.rising``)."""
    if trend is None:
        return []
    lines = [
        f"Held-out loss ({trend.passes} passes): lowest {trend.min_loss:.5f} at step {trend.min_step}, "
        f"last {trend.last_loss:.5f} at step {trend.last_step}.",
        "",
    ]
    if trend.rising:
        rise = "∞" if trend.rise_percent is None else f"{trend.rise_percent:.1f}"
        lines += [
            f"> **Held-out loss rising**: {rise} % above its lowest (step {trend.min_step}), more "
            f"than {HOLDOUT_RISE_FRACTION:.0%}: the adapter may be overfitting its training images; "
            f"the checkpoint nearest step {trend.min_step} may generalise better.",
            "",
        ]
    return lines


def validation_markdown(validation: dict[str, Any] | None) -> list[str]:
    """The report's section on the validation samples: the grids in step order."""
    if not validation:
        return []
    lines = [
        "## Validation samples during training",
        "",
        f"Rendered by the train step with the adapter of each step (same prompts and seeds every time): "
        f"{validation['passes']} passes, {validation['secondsPerPass']} s per pass.",
        "",
    ]
    for sample in validation["samples"]:
        lines += [
            f"### Step {sample['step']} ({sample['seconds']} s)",
            "",
            f"![step {sample['step']}]({sample['image']})",
            "",
        ]
    return lines


def clip_markdown(clip: ClipBlock | None) -> list[str]:
    """The CLIP metrics per scale, and the served scale's gain and drop against the reference."""
    if not clip:
        return []
    lines = [
        "## Quality metrics (CLIP)",
        "",
        f"`{clip.model.get('name')}`; CLIP-T: image–prompt cosine similarity; CLIP-I: mean cosine "
        f"similarity to {clip.training_images} training images.",
        "",
        "| scale | CLIP-T | CLIP-I |",
        "| --- | --- | --- |",
    ]
    for scale, values in clip.by_scale.items():
        lines.append(f"| {scale} | {values['clip_t']:.4f} | {values['clip_i']:.4f} |")
    lines += [
        "",
        f"CLIP-I gain {clip.clip_i_gain:+.4f} (served scale over scale {clip.reference_scale:g}: "
        f"positive means closer to the training images), CLIP-T drop {clip.clip_t_drop:+.4f} "
        "(positive means the prompt is followed less).",
        "",
    ]
    return lines


def fidelity_markdown(dino: DinoBlock | None, aesthetic: AestheticBlock | None) -> list[str]:
    """DINO and the aesthetic score per scale, and the served scale's gain and drop."""
    columns = [(name, block.by_scale, key) for name, block, key in
               (("DINO", dino, "dino"), ("aesthetic", aesthetic, "aesthetic")) if block]  # fmt: skip
    if not columns:
        return []
    lines = ["## Subject fidelity and aesthetics", ""]
    if dino:
        name = dino.model.get("name")
        lines.append(
            f"DINO: mean cosine similarity of `{name}` embeddings to {dino.training_images} training "
            "images (DreamBooth's subject-fidelity metric)."
        )
    if aesthetic:
        name = aesthetic.model.get("name")
        lines.append(f"Aesthetic: the LAION aesthetic predictor `{name}` (about 1-10, higher is better).")
    header = " | ".join(name for name, _by_scale, _key in columns)
    lines += ["", f"| scale | {header} |", f"| --- |{' --- |' * len(columns)}"]
    for scale in columns[0][1]:
        values = [(by_scale.get(scale) or {}).get(key) for _name, by_scale, key in columns]
        cells = " | ".join("–" if value is None else f"{value:.4f}" for value in values)
        lines.append(f"| {scale} | {cells} |")
    lines.append("")
    if dino:
        lines.append(
            f"DINO gain {dino.dino_gain:+.4f} (served scale over scale {dino.reference_scale:g}: positive "
            "means closer to the training subject)."
        )
    if aesthetic:
        lines.append(
            f"Aesthetic drop {aesthetic.aesthetic_drop:+.4f} (scale {aesthetic.reference_scale:g} minus the "
            "served scale: positive means the adapter's images score worse)."
        )
    return [*lines, ""]


def leakage_markdown(leakage: LeakageBlock | None) -> list[str]:
    """The prompts without the trigger: how far the served scale moved them from scale 0."""
    if not leakage:
        return []
    lines = [
        "## Leakage (prompts without the trigger)",
        "",
        f"Leakage {leakage.leakage:.4f}: 1 - the mean CLIP image similarity between scale 0 and the "
        f"served scale {leakage.scale:g} (0 means untouched; higher means the adapter changes images "
        f"it was not asked for), seeds {', '.join(str(seed) for seed in leakage.seeds)}.",
        "",
        "| prompt | similarity | leakage |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {p.prompt} | {p.similarity:.4f} | {p.leakage:.4f} |" for p in leakage.prompts]
    lines.append("")
    for prompt in leakage.prompts:
        lines += [f"![{prompt.prompt}]({image})" for image in prompt.images]
    return [*lines, ""]


def captioning_markdown(captioning: CaptioningBlock | None) -> list[str]:
    """A sample of the captions the prepare step's model wrote (``spec.dataset.captioning``)."""
    if not captioning:
        return []
    lines = [
        "## Generated captions",
        "",
        f"{captioning.generated} caption(s) written by `{captioning.model.get('name')}` (sha256 "
        f"`{captioning.model.get('sha256')}`, mode {captioning.mode}); "
        f"{len(captioning.samples)} of them, as trained on:",
        "",
        "| image | caption |",
        "| --- | --- |",
    ]
    for sample in captioning.samples:
        lines.append(f"| `{_cell(sample.source)}` | {_cell(sample.caption)} |")
    return [*lines, ""]


def _cell(text: str) -> str:
    """``text`` inside one markdown table cell: a '|' or a line break would end it."""
    return " ".join(text.split()).replace("|", "\\|")
