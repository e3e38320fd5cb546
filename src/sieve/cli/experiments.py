"""`sieve experiment` (create, list, stop and report online experiments) and
`sieve simulate` (simulated experiments on a synthetic world)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sieve.cli.common import (
    ConfigOpt,
    StoreOpt,
    UsageError,
    _clean_errors,
    _progress,
    _service_settings,
    app,
    console,
    out,
)

experiment_app = typer.Typer(
    help="Online experiments: create, list, stop, report (a running service "
    "picks changes up within a few seconds).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


def _book(config: Path | None, store: str | None) -> tuple[Any, Any]:
    from sieve.experiments.online import ExperimentBook
    from sieve.storage import open_store

    settings = _service_settings(config, store_url=store)
    return settings, ExperimentBook(open_store(settings.store_url), semantics=settings.semantics)


def _read_spec(spec: str) -> dict[str, Any]:
    """An experiment definition: inline JSON, or a .json / .toml file."""
    import json
    import tomllib

    if spec.lstrip().startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise UsageError(f"the inline definition is not valid JSON: {e}") from None
    else:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"no such file {spec!r} (give a .json/.toml file or inline JSON)")
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError("an experiment definition is a JSON object / TOML table")
    return data


@experiment_app.command("create")
def experiment_create(
    spec: Annotated[
        str,
        typer.Argument(
            help='the definition: a .json/.toml file or inline JSON, e.g. \'{"name": "x", '
            '"variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, '
            '"config": {"exploration_slots": 2}}]}\''
        ),
    ],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Start an experiment (its arms' model versions must be registered)."""
    from sieve.experiments.online import ExperimentError
    from sieve.registry import ModelRegistry

    with _clean_errors():
        definition = _read_spec(spec)
        settings, book = _book(config, store)
        try:
            known = [m.version for m in ModelRegistry(settings.model_dir).list()]
            record = book.create(definition, known)
        except ExperimentError as e:
            raise UsageError(str(e)) from None
        finally:
            book.store.close()
        arms = ", ".join(f"{v.name} ({v.share:g})" for v in record.experiment.variants)
        out.print(f"experiment {record.name} running in layer {record.experiment.layer}: {arms}")


@experiment_app.command("list")
def experiment_list(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Every experiment, running and stopped."""
    from rich.table import Table

    with _clean_errors():
        _, book = _book(config, store)
        try:
            records = book.records()
        finally:
            book.store.close()
        table = Table(title="experiments")
        for col in ("name", "status", "layer", "kind", "allocation", "arms", "created"):
            table.add_column(col)
        for r in records:
            e = r.experiment
            table.add_row(
                r.name,
                r.status,
                e.layer,
                e.kind,
                e.allocation,
                ", ".join(
                    f"{v.name}={v.share:g}" + (" (shadow)" if v.shadow else "") for v in e.variants
                ),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)),
            )
        out.print(table)


@experiment_app.command("stop")
def experiment_stop(
    name: Annotated[str, typer.Argument(help="the experiment to stop")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Stop an experiment: its users get the default experience; its log stays."""
    from sieve.experiments.online import ExperimentError

    with _clean_errors():
        _, book = _book(config, store)
        try:
            book.stop(name)
        except ExperimentError as e:
            raise UsageError(str(e)) from None
        finally:
            book.store.close()
        out.print(f"experiment {name} stopped")


@experiment_app.command("report")
def experiment_report_cmd(
    name: Annotated[str, typer.Argument(help="the experiment")],
    alpha: Annotated[float, typer.Option("--alpha", min=0.001, max=0.5)] = 0.05,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Per-arm metrics with intervals, tests, the sample-ratio check and a verdict."""
    import json

    from sieve.experiments.online import ExperimentError
    from sieve.experiments.report import experiment_report
    from sieve.storage import open_cache

    with _clean_errors():
        settings, book = _book(config, store)
        cache = open_cache(settings.cache_url)
        try:
            report = experiment_report(
                book.store,
                book.get(name),
                alpha=alpha,
                catalog_size=book.store.count_items(),
                cache=cache,
                semantics=settings.semantics,
            )
        except ExperimentError as e:
            raise UsageError(str(e)) from None
        finally:
            book.store.close()
            cache.close()
        _print_report(report)
        if settings.cache_url.startswith("memory"):
            console.print(
                "note: with a memory:// cache the always-valid p-value is of this look only; "
                "the server's running minimum over looks is in its own cache (use Redis, "
                "or GET /experiments/NAME/report)",
                soft_wrap=True,
            )
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2))


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    def iv(x: Any) -> str:
        if not x:
            return "—"
        return f"{x['estimate']:.4f} [{x['low']:.4f}, {x['high']:.4f}]"

    title = f"{report['experiment']} ({report['kind']}, {report['status']})"
    if report.get("interleaving"):
        s = report["interleaving"]
        table = Table(title=title)
        for col in ("arm", "wins"):
            table.add_column(col)
        for arm, wins in s["wins"].items():
            table.add_row(arm, str(wins))
        out.print(table)
        out.print(f"ties {s['ties']} · requests {s['requests']} · sign test p={s['p_value']:.4g}")
    else:
        table = Table(title=title)
        for col in ("arm", "units", "impressions", "clicks", "CTR (95% CI)", "conversion"):
            table.add_column(col)
        for a in report["arms"]:
            table.add_row(
                a["arm"],
                str(a["units"]),
                str(a["impressions"]),
                str(a["clicks"]),
                iv(a.get("ctr")),
                iv(a.get("conversion_rate")),
            )
        out.print(table)
        for c in report["comparisons"]:
            avp = c.get("always_valid_p")
            out.print(
                f"{c['metric']}: {c['treatment']} − {c['control']} = {c['estimate']:.4g} "
                f"(p={c['p_value']:.4g}"
                + ("" if avp is None else f", always-valid p={avp:.4g}")
                + ")",
                soft_wrap=True,
            )
    _print_shadows(report.get("shadows") or [])
    out.print(report["verdict"], soft_wrap=True)


def _print_shadows(shadows: list[dict[str, Any]]) -> None:
    """Each shadow arm against the served lists (see `sieve.experiments.shadows`)."""
    from rich.table import Table

    if not shadows:
        return

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f}%"

    table = Table(
        title="shadows: what each would have shown, against the served list",
        caption="overlap@n: share of the served items in the shadow's top n; items not "
        "served: share of the shadow's items the served list did not show; CTR shared / "
        "rest: the served list's CTR on the items the shadow would have shown too / the others",
    )
    for col in (
        "shadow",
        "model",
        "requests",
        "failed/skipped",
        "overlap@n",
        "items not served",
        "CTR shared",
        "CTR rest",
    ):
        table.add_column(col)
    for s in shadows:
        table.add_row(
            s["shadow"],
            s["model_version"] or "serving",
            str(s["requests"]),
            f"{s['failed']}/{s['skipped']}",
            pct(s["mean_overlap"]),
            pct(s["novel_share"]),
            f"{pct(s['ctr_shared'])} of {s['shared_slots']}",
            f"{pct(s['ctr_served_only'])} of {s['served_only_slots']}",
        )
    out.print(table)


@app.command()
def simulate(
    data: Annotated[
        str,
        typer.Option(
            "--data", help="the synthetic world the service serves (synthetic[:key=value,...])"
        ),
    ] = "synthetic",
    url: Annotated[str, typer.Option("--url", help="the running service")] = (
        "http://127.0.0.1:8000"
    ),
    requests: Annotated[int, typer.Option("--requests", min=1, help="most requests")] = 1000,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="most seconds")] = 60.0,
    n: Annotated[int, typer.Option("--n", min=1, max=200, help="list length")] = 10,
    users: Annotated[
        int | None, typer.Option("--users", min=1, help="simulate only the first N users")
    ] = None,
    purchase_rate: Annotated[
        float, typer.Option("--purchase-rate", min=0.0, max=1.0, help="P(purchase | click)")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    key: Annotated[
        str | None, typer.Option("--key", envvar="SIEVE_API_KEY", help="API key (read+write)")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="print this experiment's report at the end")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the tallies here")] = None,
) -> None:
    """Synthetic users with known click probabilities use a running service
    (requests, clicks and purchases over HTTP), so A/B tests, interleaving and
    bandits can be run end to end; prints per-arm tallies with the true CTR."""
    import json

    import httpx
    from rich.table import Table

    from sieve.client import SieveError
    from sieve.simulator import SimulationError, Simulator, world_from_spec

    with _clean_errors():
        world = world_from_spec(data)
        try:
            with (
                Simulator(
                    world,
                    url,
                    api_key=key,
                    n=n,
                    purchase_rate=purchase_rate,
                    seed=seed,
                    users=users,
                ) as sim,
                _progress() as bar,
            ):
                task = bar.add_task("simulating", total=requests)
                result = sim.run(requests, seconds, lambda done: bar.update(task, completed=done))
                report = None
                if experiment is not None:
                    try:
                        report = sim.client.experiment_report(experiment)
                    except SieveError as e:
                        raise UsageError(f"report of {experiment!r}: {e.detail}") from None
        except httpx.HTTPError as e:
            raise UsageError(f"cannot reach the service at {url}: {e}") from None
        except SimulationError as e:
            raise UsageError(str(e)) from None
        table = Table(title=f"{result.requests} requests in {result.seconds:.1f}s")
        for col in ("arm", "requests", "shown", "clicks", "CTR", "true CTR", "explore clicks"):
            table.add_column(col)
        for name, t in sorted(result.arms.items()):
            table.add_row(
                name,
                str(t.requests),
                str(t.impressions),
                str(t.clicks),
                f"{t.ctr:.4f}",
                f"{t.true_ctr:.4f}",
                f"{t.explore_clicks}/{t.explore_impressions}",
            )
        out.print(table)
        if report is not None:
            _print_report(report)
        if json_path is not None:
            payload = {"simulation": result.to_dict(), "report": report}
            json_path.write_text(json.dumps(payload, indent=2))
