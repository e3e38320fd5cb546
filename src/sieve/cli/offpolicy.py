"""`sieve evaluate --data logged:STORE_URL`: candidates estimated off-policy on
the service's logged lists (`sieve.training.offpolicy`)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from sieve.cli.common import UsageError, _progress, console, out


def parse_time(text: str | None, default: float) -> float:
    """Epoch seconds from `now`, epoch seconds, or an ISO 8601 time (UTC
    unless it names its offset)."""
    if text is None:
        return default
    value = text.strip()
    if value == "now":
        return time.time()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time: give epoch seconds, an ISO 8601 time "
            "(2026-11-29T12:00:00) or 'now'"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _table(result: dict[str, Any]) -> Table:
    t = Table(
        title=f"off-policy CTR per slot ({result['slice']} slice, "
        f"{result['requests']} logged requests)"
    )
    for col in ("candidate", "estimator", "estimate", "95% interval", "ESS", "support"):
        t.add_column(col, justify="left" if col in ("candidate", "estimator") else "right")
    for name, res in result["candidates"].items():
        if "error" in res:
            t.add_row(name, "–", "–", res["error"], "", "")
            continue
        for est, v in res["estimates"].items():
            t.add_row(
                name,
                est.upper(),
                _fmt(v["estimate"]),
                f"[{_fmt(v['low'])}, {_fmt(v['high'])}]",
                f"{v['ess']:,.0f}",
                f"{100 * res['support']:.0f}%",
            )
        lg = res["logging_ctr"]
        t.add_row(
            "", "logged", _fmt(lg["estimate"]), f"[{_fmt(lg['low'])}, {_fmt(lg['high'])}]", "", ""
        )
    return t


def run_logged(
    data: str,
    models: list[str],
    since: str | None,
    until: str | None,
    slice: str,
    model_dir: str | None,
    max_requests: int | None,
    json_path: Path | None,
) -> None:
    """The `logged:` branch of `sieve evaluate` (see the module doc)."""
    from sieve.settings import load_settings
    from sieve.storage import open_store
    from sieve.training.offpolicy import evaluate_logged, parse_candidate
    from sieve.training.train import redacted

    url = data.removeprefix("logged:")
    if not url or "://" not in url:
        raise UsageError("--data logged: needs a store URL, e.g. logged:sqlite:///sieve.db")
    if slice not in ("auto", "random", "all"):
        raise UsageError(f"--slice must be auto, random or all, not {slice!r}")
    end = parse_time(until, time.time())
    start = parse_time(since, 0.0)
    if end <= start:
        raise UsageError("--until must be after --since")
    settings = load_settings(None, store_url=url, model_dir=model_dir)
    console.print(
        f"evaluating {', '.join(models)} on the lists logged in {redacted(url)}", soft_wrap=True
    )
    with open_store(url, migrate=False) as store:
        candidates = [
            parse_candidate(
                m,
                store,
                Path(settings.model_dir) if model_dir else None,
                settings.event_weights,
                start,
            )
            for m in models
        ]
        with _progress() as progress:
            task = progress.add_task("replaying logged requests", total=max_requests)

            def step(done: int) -> None:
                progress.update(task, completed=done)

            result = evaluate_logged(
                store,
                candidates,
                start,
                end,
                settings.semantics.click_types,
                slice=slice,  # type: ignore[arg-type]
                max_requests=max_requests,
                on_page=step,
            ).to_dict()
    for label, key in (("logging policy", "policy_ctr"), ("random slice", "random_ctr")):
        iv = result[key]
        if iv is not None:
            out.print(f"{label} CTR {_fmt(iv['estimate'])} [{_fmt(iv['low'])}, {_fmt(iv['high'])}]")
    out.print(_table(result))
    out.print(
        "examination by position: "
        + ", ".join(f"{t:.2f}" for t in result["examination"])
        + f" (from {result['examination_source']})",
        soft_wrap=True,
    )
    warned = list(result["warnings"])
    for name, res in result["candidates"].items():
        warned.extend(f"{name}: {w}" for w in res.get("warnings", []))
    for w in warned:
        console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_path}")
