"""`sieve experiment` (create, list, stop and report online experiments) and
`sieve simulate` (simulated experiments on a synthetic world).

Longer than most modules: two command groups (experiments and their simulation)
that share their options and output.
"""

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
    columns,
    console,
    out,
    show_records,
)

experiment_app = typer.Typer(
    help="Online experiments: create, list, stop, report.",
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

    if spec.lstrip().startswith(("{", "[", '"')) or spec.strip() in ("null", "true", "false"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise UsageError(f"the inline definition is not valid JSON: {e}") from None
        where = "the inline definition"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(
                f"{spec!r} is neither inline JSON (an object starting with '{{') nor a file "
                "that exists: give a .json/.toml file or the definition as a JSON object"
            )
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"{path}: {e}") from None
        where = str(path)
    if not isinstance(data, dict):
        raise UsageError(
            f"{where} is a JSON {type(data).__name__}, not an object: an experiment "
            'definition is an object, e.g. \'{"name": "x", "variants": [{"name": "A", '
            '"share": 0.5}, {"name": "B", "share": 0.5}]}\''
        )
    return data


@experiment_app.command("create")
def experiment_create(
    spec: Annotated[
        str,
        typer.Argument(
            help='The definition: a .json/.toml file or inline JSON, e.g. \'{"name": "x", '
            '"variants": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, '
            '"config": {"exploration_slots": 2}}]}\'.'
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
    """List every experiment, running and stopped."""
    with _clean_errors():
        _, book = _book(config, store)
        try:
            records = book.records()
        finally:
            book.store.close()
        names = ("name", "status", "layer", "kind", "allocation", "arms", "created")
        rows = []
        for r in records:
            e = r.experiment
            arms = "\n".join(
                f"{v.name}={v.share:g}" + (" (shadow)" if v.shadow else "") for v in e.variants
            )
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
            rows.append((r.name, r.status, e.layer, e.kind, e.allocation, arms, created))
        if not rows:
            out.print("no experiments yet: `sieve experiment create` starts one")
        else:
            show_records("experiments", names, rows, ids=("name", "status"))


@experiment_app.command("stop")
def experiment_stop(
    name: Annotated[str, typer.Argument(help="The experiment to stop.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Stop an experiment; its log stays.

    Its users get the default experience from then on."""
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
    name: Annotated[str, typer.Argument(help="The experiment.")],
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.001, max=0.5, help="Significance level.")
    ] = 0.05,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="SIEVE_URL",
            help="Ask the running service at this URL (fast, and with its running minimum "
            "of the always-valid p-value) instead of reading the store here.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="SIEVE_API_KEY", help="API key for --url (read scope)."),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Print an experiment's report: per-arm metrics, tests, a verdict.

    The report holds per-arm metrics with intervals, the tests, the
    sample-ratio check and a verdict in words.
    Without --url the report is computed here from the store: this process
    first loads the analysis code (seconds on a busy machine) and, with a
    memory:// cache, sees only this look's always-valid p-value."""
    import json

    with _clean_errors():
        if url is not None:
            report = _report_from_service(url, key, name, alpha)
        else:
            report = _report_from_store(config, store, name, alpha)
        _print_report(report)
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2))


def _report_from_service(url: str, key: str | None, name: str, alpha: float) -> dict[str, Any]:
    """`GET /experiments/NAME/report` of a running service."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/experiments/{name}/report",
            params={"alpha": alpha},
            headers=headers,
            timeout=60.0,
        )
    except httpx.HTTPError as e:
        raise UsageError(
            f"cannot reach the service at {url}: {e}; start it, or leave out --url to "
            "read the store"
        ) from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise UsageError(f"{url} answered {response.status_code}: {detail}")
    report: dict[str, Any] = response.json()
    return report


def _report_from_store(
    config: Path | None, store: str | None, name: str, alpha: float
) -> dict[str, Any]:
    """The report computed in this process from the store (see `experiment report`)."""
    from sieve.experiments.online import ExperimentError
    from sieve.experiments.report import experiment_report
    from sieve.storage import open_cache

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
    if settings.cache_url.startswith("memory"):
        console.print(
            "note: with a memory:// cache the always-valid p-value is of this look only; "
            "the server's running minimum over looks is in its own cache (use Redis, "
            "or --url to ask the server)",
            soft_wrap=True,
        )
    return report


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
        columns(table, "arm", "wins", ids=("arm",))
        for arm, wins in s["wins"].items():
            table.add_row(arm, str(wins))
        out.print(table)
        out.print(f"ties {s['ties']} · requests {s['requests']} · sign test p={s['p_value']:.4g}")
    else:
        table = Table(title=title)
        columns(
            table,
            "arm",
            "units",
            "impressions",
            "clicks",
            "CTR (95% CI)",
            "conversion",
            ids=("arm",),
        )
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
    columns(
        table,
        "shadow",
        "model",
        "requests",
        "failed/skipped",
        "overlap@n",
        "items not served",
        "CTR shared",
        "CTR rest",
        ids=("shadow", "model"),
    )
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
            "--data", help="The synthetic world the service serves (synthetic[:key=value,...])."
        ),
    ] = "synthetic",
    url: Annotated[
        str, typer.Option("--url", envvar="SIEVE_URL", help="The running service.")
    ] = "http://127.0.0.1:8000",
    requests: Annotated[int, typer.Option("--requests", min=1, help="Most requests.")] = 1000,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="Most seconds.")] = 60.0,
    n: Annotated[int, typer.Option("--n", min=1, max=200, help="List length.")] = 10,
    users: Annotated[
        int | None, typer.Option("--users", min=1, help="Simulate only the first N users.")
    ] = None,
    purchase_rate: Annotated[
        float, typer.Option("--purchase-rate", min=0.0, max=1.0, help="P(purchase | click).")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    key: Annotated[
        str | None, typer.Option("--key", envvar="SIEVE_API_KEY", help="API key (read+write).")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Print this experiment's report at the end.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the tallies here.")
    ] = None,
    offpolicy: Annotated[
        str | None,
        typer.Option(
            "--offpolicy",
            help="A:B[,C…]: in process, no service: log traffic under model A with a "
            "random slice, estimate each candidate off-policy, then run it live.",
        ),
    ] = None,
    reps: Annotated[int, typer.Option("--reps", min=1, help="Repetitions of --offpolicy.")] = 5,
) -> None:
    """Drive a running service with synthetic users.

    The users send requests, clicks and purchases over HTTP, so A/B tests,
    interleaving and bandits can be run end to end; prints per-arm tallies
    with the true CTR.

    With `--offpolicy A:B`, no service is needed: models trained on the
    synthetic world serve in process, and each candidate's off-policy
    estimate from A's log is printed beside its measured online CTR."""
    import json

    if offpolicy is not None:
        with _clean_errors():
            _simulate_offpolicy(data, offpolicy, reps, n, requests, seed, json_path)
        return

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
        columns(
            table,
            "arm",
            "requests",
            "shown",
            "clicks",
            "CTR",
            "true CTR",
            "explore clicks",
            ids=("arm",),
        )
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


def _simulate_offpolicy(
    data: str,
    spec: str,
    reps: int,
    n: int,
    requests: int,
    seed: int,
    json_path: Path | None,
) -> None:
    """`sieve simulate --offpolicy A:B,…` (see `sieve.experiments.offpolicy_sim`)."""
    import json

    from rich.table import Table

    from sieve.experiments.offpolicy_sim import OffPolicySim, OffPolicySimConfig
    from sieve.models.base import model_class
    from sieve.simulator import world_from_spec

    logging_model, _, rest = spec.partition(":")
    candidates = tuple(c.strip() for c in rest.split(",") if c.strip())
    if not logging_model or not candidates:
        raise UsageError("--offpolicy takes LOGGING:CANDIDATE[,CANDIDATE…], e.g. popular:ease")
    for name in (logging_model, *candidates):
        model_class(name)
    world = world_from_spec(data).config
    cfg = OffPolicySimConfig(
        n_users=world.n_users,
        n_items=world.n_items,
        world_seed=world.seed,
        logging=logging_model,
        candidates=candidates,
        n=n,
        pool=min(100, world.n_items),
        log_requests=requests,
        online_requests=requests,
    )
    console.print(f"training {logging_model} and {', '.join(candidates)} on {data}")
    sim = OffPolicySim(cfg)
    table = Table(title=f"off-policy (SNIPS, 95%) vs online CTR, {requests} requests each")
    for col in ("rep", "candidate", "off-policy", "online", "covered", "support"):
        table.add_column(col)
    rows = []
    for rep in range(reps):
        r = sim.repetition(seed + rep)
        for name, res in r.evaluation.candidates.items():
            if isinstance(res, str):
                raise UsageError(f"{name}: {res}")
            iv = res.estimates["snips"].interval
            covered = iv.low <= r.online[name] <= iv.high
            rows.append(
                {
                    "rep": rep,
                    "candidate": name,
                    "estimate": iv.mean,
                    "low": iv.low,
                    "high": iv.high,
                    "online": r.online[name],
                    "support": res.support,
                }
            )
            table.add_row(
                str(rep),
                name,
                f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]",
                f"{r.online[name]:.4f}",
                "yes" if covered else "no",
                f"{100 * res.support:.0f}%" + (" (thin)" if res.warnings else ""),
            )
    out.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2))
