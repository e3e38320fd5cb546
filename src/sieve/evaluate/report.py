"""Presenting an evaluation: terminal table, JSON and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt
import numpy as np
from rich.markup import escape
from rich.table import Table

from sieve.evaluate.metrics import METRIC_DOCS
from sieve.evaluate.protocol import ACCURACY, SEGMENTS, EvaluationResult, ModelResult
from sieve.evaluate.stats import PairedResult

#: Significance level of the markers in tables (after multiple-comparison correction).
ALPHA = 0.05


def to_json(result: EvaluationResult, status: str = "complete") -> dict[str, Any]:
    """Everything measured, per model: means with 95% intervals, list-level
    values, curves, timings and the corrected tests against the baseline; a
    failed model has `status: failed` and its `reason`. `status` says whether
    the run is "complete" or still "running" (a file written as models finish)."""
    models: dict[str, Any] = {}
    for r in result.models:
        models[r.label] = {
            "metrics": {
                m: {"mean": iv.mean, "low": iv.low, "high": iv.high} for m, iv in r.summary.items()
            },
            "list_metrics": r.scalars,
            "curves": {name: {str(k): v for k, v in c.items()} for name, c in r.curves.items()},
            "fit_seconds": r.fit_seconds,
            "predict_seconds": r.predict_seconds,
            "fallback": r.fallback,
            "status": "ok",
            "notices": r.notices,
            "segments": {
                name: {
                    "n_users": result.n_segment_users.get(name, 0),
                    "answered_by": r.fallback if name == "cold" and r.fallback else r.label,
                    "metrics": {
                        m: {"mean": iv.mean, "low": iv.low, "high": iv.high}
                        for m, iv in seg.items()
                    },
                }
                for name, seg in r.segments.items()
            },
            "vs_baseline": {
                m: {
                    "mean_diff": t.mean_diff,
                    "ci_low": t.ci_low,
                    "ci_high": t.ci_high,
                    "p_value": t.p_value,
                    "p_adjusted": t.p_adjusted,
                }
                for m, t in r.vs_baseline.items()
            },
        }
    for label, reason in result.failures.items():
        models[label] = {
            "status": "failed",
            "reason": reason,
            "notices": result.notices.get(label, []),
        }
    return {
        "settings": result.settings,
        "status": status,
        "k": result.k,
        "baseline": result.baseline,
        "n_test_users": result.n_test_users,
        "n_cold_users": result.n_segment_users.get("cold", 0),
        "n_warm_users": result.n_segment_users.get("warm", 0),
        "models": models,
    }


def write_json(result: EvaluationResult, path: str | Path, status: str = "complete") -> Path:
    """Write the JSON atomically (a reader never sees half a file, and a run
    killed while writing keeps the previous one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(to_json(result, status)), indent=2))
    tmp.replace(path)
    return path


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _p(test: PairedResult) -> float:
    """The corrected p-value (the raw one where no correction was applied)."""
    return test.p_value if test.p_adjusted is None else test.p_adjusted


def _main_metrics(result: EvaluationResult) -> list[str]:
    return list(result.models[0].summary) if result.models else []


def _segment_metrics(result: EvaluationResult) -> list[str]:
    """The accuracy metrics shown per segment (cold, warm)."""
    return [m for m in _main_metrics(result) if m.split("@")[0] in ACCURACY]


def _users_line(result: EvaluationResult) -> str:
    """'1000 test users (640 cold, 360 warm)'."""
    n = result.n_segment_users
    return f"{result.n_test_users} test users ({n.get('cold', 0)} cold, {n.get('warm', 0)} warm)"


def _label(r: ModelResult) -> str:
    """A model's column name; says which model answered its cold users."""
    return f"{r.label} (+{r.fallback} for cold)" if r.fallback else r.label


def table(result: EvaluationResult) -> Table:
    """Rich table, one row per metric and one column per model: mean ± 95%
    half-width; ▲/▼ marks a significant difference from the baseline (first
    model) after Holm correction; the best mean of a row is green."""
    t = Table(
        title=f"top-{result.k} · {_users_line(result)} · baseline: {result.baseline}"
        + (f" · FAILED: {', '.join(result.failures)}" if result.failures else ""),
        caption="mean ± 95% CI half-width; ▲/▼ significantly better/worse than the baseline "
        f"(paired t-test, Holm-corrected, α={ALPHA}); · cold / · warm: the test users with no "
        "interaction before the test / the others",
    )
    t.add_column("metric", style="bold", no_wrap=True)
    for r in result.models:
        t.add_column(escape(_label(r)), justify="right")
    lower_is_better = {"rmse", "mae"}
    for m in _main_metrics(result):
        means = [r.summary[m].mean for r in result.models if m in r.summary]
        best = min(means) if m in lower_is_better else max(means)
        cells = []
        for r in result.models:
            iv = r.summary.get(m)
            if iv is None:
                cells.append("")
                continue
            cell = f"{iv.mean:.4f} ± {iv.half_width:.4f}"
            test = r.vs_baseline.get(m)
            if test is not None and _p(test) < ALPHA:
                cell += " ▲" if test.mean_diff > 0 else " ▼"
            if iv.mean == best and len(result.models) > 1:
                cell = f"[green]{cell}[/green]"
            cells.append(cell)
        t.add_row(m, *cells)
    for segment in SEGMENTS:
        for m in _segment_metrics(result):
            cells = []
            for r in result.models:
                iv = r.segments.get(segment, {}).get(m)
                cells.append("" if iv is None else f"{iv.mean:.4f} ± {iv.half_width:.4f}")
            if any(cells):
                t.add_row(f"{m} · {segment}", *cells)
    for m in result.models[0].scalars if result.models else []:
        t.add_row(escape(m), *[f"{r.scalars.get(m, float('nan')):.4f}" for r in result.models])
    t.add_row("fit seconds", *[f"{r.fit_seconds:.2f}" for r in result.models])
    t.add_row("predict seconds", *[f"{r.predict_seconds:.2f}" for r in result.models])
    if any(r.notices for r in result.models):
        t.add_row("notes", *[escape("; ".join(r.notices)) for r in result.models])
    return t


def failures_table(result: EvaluationResult) -> Table | None:
    """The models that failed and why (None when none did)."""
    if not result.failures:
        return None
    t = Table(title="models that failed (the others' results above are complete)")
    t.add_column("model", style="bold red", no_wrap=True)
    t.add_column("reason")
    for label, reason in result.failures.items():
        t.add_row(escape(label), escape(reason))
    return t


# --------------------------------------------------------------------- HTML
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_metrics(result: EvaluationResult) -> str:
    """Accuracy metrics per model with 95% intervals (error bars)."""
    metrics = [
        m
        for m in _main_metrics(result)
        if m.split("@")[0] in ("precision", "recall", "ndcg", "map", "mrr", "hitrate")
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * len(result.models) / 2), 4))
    width = 0.8 / len(result.models)
    x = np.arange(len(metrics))
    for j, r in enumerate(result.models):
        means = np.array([r.summary[m].mean for m in metrics])
        lows = np.array([r.summary[m].low for m in metrics])
        highs = np.array([r.summary[m].high for m in metrics])
        ax.bar(
            x + j * width,
            means,
            width,
            label=r.label,
            yerr=[means - lows, highs - means],
            capsize=3,
        )
    ax.set_xticks(x + width * (len(result.models) - 1) / 2, metrics)
    ax.set_ylabel("mean over test users")
    ax.set_title("Accuracy with 95% confidence intervals")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_curves(result: EvaluationResult) -> str:
    """NDCG, precision and recall against the cutoff K."""
    names = list(result.models[0].curves)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6))
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        for r in result.models:
            ks = sorted(r.curves[name])
            ax.plot(ks, [r.curves[name][k] for k in ks], marker="o", ms=3, label=r.label)
        ax.set_xlabel("K")
        ax.set_title(f"{name}@K")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return _png(fig)


def plot_popularity_bias(result: EvaluationResult) -> str:
    """Where recommendations fall on the item popularity scale: the density of
    recommended slots over log training popularity, one curve per model."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in result.models:
        pop = r.rec_popularity
        if len(pop) == 0:
            continue
        ax.hist(np.log10(pop + 1), bins=30, histtype="step", density=True, label=r.label, lw=1.5)
    ax.set_xlabel("log10(1 + training popularity of recommended item)")
    ax.set_ylabel("density of recommended slots")
    ax.set_title("Popularity bias: the further right, the more popular the items shown")
    ax.legend(fontsize=8)
    return _png(fig)


def _is_fairness(name: str) -> bool:
    """A per-group figure (`ndcg@10[a]`, `ndcg@10 group gap`): asked by `--group-by`."""
    return "[" in name or "group gap" in name


def _html_table(
    table_id: str, result: EvaluationResult, metrics: list[str], scalars: list[str], times: bool
) -> str:
    """One table of the report: a row per model; a metric cell holds the mean,
    its interval and the test against the baseline, each on a line of its own
    that never wraps (the table scrolls sideways instead, in its container)."""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in [*metrics, *scalars])
    if times:
        head += "<th>fit s</th><th>predict s</th>"
    rows = []
    for r in result.models:
        cells = []
        for m in metrics:
            iv = r.summary.get(m)
            test = r.vs_baseline.get(m)
            mark = ""
            if test is not None:
                sig = _p(test) < ALPHA
                mark = (
                    f"<div class='p {'sig' if sig else ''}'>Δ {test.mean_diff:+.4f}, "
                    f"p<sub>Holm</sub>={_p(test):.3g}</div>"
                )
            cells.append(
                "<td></td>"
                if iv is None
                else f"<td>{iv.mean:.4f}<div class='ci'>[{iv.low:.4f}, {iv.high:.4f}]</div>{mark}</td>"
            )
        cells += [f"<td>{r.scalars.get(m, float('nan')):.4f}</td>" for m in scalars]
        if times:
            cells.append(f"<td>{r.fit_seconds:.2f}</td><td>{r.predict_seconds:.2f}</td>")
        rows.append(f"<tr><th>{html.escape(_label(r))}</th>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table id='{table_id}'><tr><th>model</th>{head}</tr>"
        f"{''.join(rows)}</table></div>"
    )


def write_html(result: EvaluationResult, path: str | Path) -> Path:
    """A self-contained HTML page (plots embedded) of the whole evaluation,
    laid out for a laptop screen: accuracy, then the other list qualities and
    the cost, then (only with a grouping) the per-group fairness figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_json(result)
    metrics = _main_metrics(result)
    accuracy = [m for m in metrics if m.split("@")[0] in ACCURACY]
    beyond = [m for m in metrics if m not in accuracy]
    scalars = list(result.models[0].scalars) if result.models else []
    fairness = [m for m in scalars if _is_fairness(m)]
    lists = [m for m in scalars if not _is_fairness(m)]
    group_by = result.settings.get("group_by")
    tables = (
        "<h2>Accuracy</h2>"
        + _html_table("results", result, accuracy, [], times=False)
        + "<h2>Beyond accuracy, and cost</h2>"
        + _html_table("beyond", result, beyond, lists, times=True)
    )
    if fairness:
        tables += (
            f"<h2>Fairness: users grouped by {html.escape(str(group_by or 'group'))}</h2>"
            "<p>NDCG per group of users and the largest gap between two groups.</p>"
            + _html_table("fairness", result, [], fairness, times=False)
        )
    seg_metrics = _segment_metrics(result)
    seg_head = "".join(f"<th>{html.escape(m)}</th>" for m in seg_metrics)
    seg_rows = []
    for r in result.models:
        for segment in SEGMENTS:
            seg = r.segments.get(segment, {})
            n_seg = result.n_segment_users.get(segment, 0)
            by = f" (answered by {r.fallback})" if segment == "cold" and r.fallback else ""
            seg_cells = "".join(
                "<td></td>"
                if (iv := seg.get(m)) is None
                else f"<td>{iv.mean:.4f}<div class='ci'>[{iv.low:.4f}, {iv.high:.4f}]</div></td>"
                for m in seg_metrics
            )
            seg_rows.append(
                f"<tr><th>{html.escape(r.label)}</th><td>{segment}{html.escape(by)}</td>"
                f"<td>{n_seg}</td>{seg_cells}</tr>"
            )
    docs = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>"
        for name, text in METRIC_DOCS.items()
    )
    settings = html.escape(json.dumps(result.settings, indent=1, default=str))
    failed = (
        "<h2>Models that failed</h2><ul id='failures'>"
        + "".join(
            f"<li><b>{html.escape(label)}</b>: {html.escape(reason)}</li>"
            for label, reason in result.failures.items()
        )
        + "</ul>"
        if result.failures
        else ""
    )
    plots = (
        f"""<h2>Metrics with intervals</h2><img alt="metrics with intervals" src="data:image/png;base64,{plot_metrics(result)}">
<h2>Metrics against K</h2><img alt="metrics against K" src="data:image/png;base64,{plot_curves(result)}">
<h2>Popularity bias</h2><img alt="popularity bias" src="data:image/png;base64,{plot_popularity_bias(result)}">"""
        if result.models
        else ""
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sieve evaluation</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1320px}}
.scroll{{overflow-x:auto;max-width:100%}}
table{{border-collapse:collapse;font-size:.85rem}} td,th{{border:1px solid #ddd;padding:.3rem .5rem;text-align:right;white-space:nowrap}}
th{{background:#f6f6f6}} .ci{{color:#777;font-size:.75rem}} .p{{color:#999;font-size:.7rem}} .sig{{color:#b00;font-weight:bold}}
img{{max-width:100%;margin:1rem 0;border:1px solid #eee}} dt{{font-weight:bold;margin-top:.4rem}}
pre{{white-space:pre-wrap}}
</style></head><body>
<h1>sieve evaluation</h1>
<p>Top-{result.k} recommendations for {html.escape(_users_line(result))}. Baseline for the paired
tests: <b>{html.escape(result.baseline)}</b>. Cells show the mean, its 95% confidence interval, and
the difference from the baseline with its Holm-corrected p-value (red: significant at α={ALPHA}).
The settings that produced these numbers are at the end.</p>
{tables}
{failed}
<h2>Cold and warm test users</h2>
<p>Cold: no interaction before the test (an empty input row); warm: the others. A model marked
"answered by" had its cold users' lists made by that fallback model.</p>
<div class="scroll"><table id="segments"><tr><th>model</th><th>users</th><th>n</th>{seg_head}</tr>
{"".join(seg_rows)}</table></div>
{plots}
<h2>Definitions</h2><dl>{docs}</dl>
<h2>Settings</h2><pre id="settings">{settings}</pre>
<script type="application/json" id="data">{html.escape(json.dumps(_finite(data)))}</script>
</body></html>"""
    path.write_text(page)
    return path
