"""The `sieve` command."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from sieve import __version__

app = typer.Typer(
    help="sieve: a recommender engine with offline evaluation you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code=2)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn input errors into one clear line and exit code 2."""
    from sieve.config import ConfigError
    from sieve.data.schema import UnknownIdError

    try:
        yield
    except (UsageError, ValueError, KeyError, FileNotFoundError, ConfigError, UnknownIdError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _fail(str(msg))


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and "pytest" in sys.modules,
    )


def _parse_models(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--models needs at least one model name")
    return names


def _model_params(config_path: Path | None) -> dict[str, dict[str, Any]]:
    """Per-model parameter tables from a TOML file (`[ease] l2 = 300`)."""
    if config_path is None:
        return {}
    from sieve.config import read_toml

    data = read_toml(config_path)
    models = data.get("models", data)
    bad = [k for k, v in models.items() if not isinstance(v, dict)]
    if bad:
        raise UsageError(f"{config_path}: expected one table per model, got plain key(s) {bad}")
    return models


def _load(
    data: str,
    min_rating: float | None,
    columns: dict[str, str | None],
    sep: str,
) -> Any:
    from sieve.data.io import ColumnMapping, load_data
    from sieve.data.schema import EventWeights

    mapping = None
    if data.startswith(("csv:", "parquet:")):
        mapping = ColumnMapping(**{k: v for k, v in columns.items() if v is not None}, sep=sep)
    raw = load_data(data, mapping)
    for problem in raw.problems[:20]:
        console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)
    if len(raw.problems) > 20:
        console.print(
            f"[yellow]… and {len(raw.problems) - 20} more malformed rows skipped[/yellow]"
        )
    return raw.to_dataset(EventWeights(min_rating=min_rating))


DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="movielens-100k:PATH, movielens-1m:PATH, movielens-10m:PATH, "
        "movielens-latest:PATH, csv:PATH, parquet:PATH or synthetic[:users=N,items=M,seed=S]",
    ),
]
SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="random:RATIO, temporal:RATIO, leave-last:K, user-holdout:FRACTION or folds:PATH",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of every random choice")]
MinRatingOpt = Annotated[
    float | None,
    typer.Option("--min-rating", help="ratings below this are not positives (default: all are)"),
]
UserCol = Annotated[str | None, typer.Option("--user-col", help="CSV/Parquet: user id column")]
ItemCol = Annotated[str | None, typer.Option("--item-col", help="CSV/Parquet: item id column")]
ValueCol = Annotated[
    str | None, typer.Option("--value-col", help="CSV/Parquet: rating/value column")
]
TimeCol = Annotated[str | None, typer.Option("--time-col", help="CSV/Parquet: timestamp column")]
TypeCol = Annotated[str | None, typer.Option("--type-col", help="CSV/Parquet: event type column")]
_SEP_ESCAPES = {"\\t": "\t", "tab": "\t", "\\\\": "\\", "\\|": "|"}


def parse_sep(value: str) -> str:
    """The separator a shell passes as text: `\\t` (or `tab`) is a tab, `\\xHH` and
    `\\uHHHH` the character they name; anything else is taken as written."""
    if value in _SEP_ESCAPES:
        return _SEP_ESCAPES[value]
    if value.startswith(("\\x", "\\u")):
        try:
            decoded = value.encode("ascii").decode("unicode_escape")
        except (UnicodeError, ValueError):
            decoded = ""
        if len(decoded) != 1:
            raise typer.BadParameter(f"{value!r} is not one escaped character, e.g. '\\x1f'")
        return decoded
    if not value:
        raise typer.BadParameter("the separator must not be empty")
    return value


SepOpt = Annotated[
    str,
    typer.Option(
        "--sep", help="CSV field separator ('\\t' or 'tab' for a tab)", callback=parse_sep
    ),
]


def _columns(
    user_col: str | None,
    item_col: str | None,
    value_col: str | None,
    time_col: str | None,
    type_col: str | None,
) -> dict[str, str | None]:
    return {
        "user": user_col,
        "item": item_col,
        "value": value_col,
        "timestamp": time_col,
        "type": type_col,
    }


@app.command()
def evaluate(
    data: DataOpt = "synthetic",
    split: SplitOpt = "random:0.8",
    seed: SeedOpt = 42,
    models: Annotated[
        str, typer.Option("--models", help="comma-separated models; the first is the baseline")
    ] = "popular,itemknn,ease,als,bpr",
    k: Annotated[int, typer.Option("--k", min=1, help="length of the evaluated lists")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write an HTML report")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML with a table of parameters per model")
    ] = None,
    min_rating: MinRatingOpt = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="user attribute for per-group fairness")
    ] = None,
    user_col: UserCol = None,
    item_col: ItemCol = None,
    value_col: ValueCol = None,
    time_col: TimeCol = None,
    type_col: TypeCol = None,
    sep: SepOpt = ",",
    fallback: Annotated[
        str | None,
        typer.Option(
            "--fallback",
            help="model that answers the cold test users (no interaction before the test) of "
            "every model without a cold-start path of its own, e.g. trending",
        ),
    ] = None,
) -> None:
    """Evaluate models offline: metrics with 95% intervals and paired tests
    of every model against the first one listed, also for cold and warm test
    users separately."""
    from sieve.data.split import make_splits
    from sieve.evaluate.protocol import ModelSpec
    from sieve.evaluate.protocol import evaluate as run_evaluation
    from sieve.evaluate.report import table, write_html, write_json
    from sieve.models.base import model_class

    with _clean_errors():
        names = _parse_models(models)
        for name in names:
            model_class(name)
        if fallback is not None:
            try:
                model_class(fallback)
            except KeyError as e:
                raise UsageError(f"--fallback: {e.args[0]}") from None
        params = _model_params(config)
        unknown = sorted(set(params) - set(names) - {fallback})
        if unknown:
            console.print(
                f"[yellow]note:[/yellow] {config} has settings for models not evaluated: {unknown}"
            )
        console.print(f"loading [bold]{data}[/bold]", soft_wrap=True)
        ds = _load(
            data, min_rating, _columns(user_col, item_col, value_col, time_col, type_col), sep
        )
        console.print(f"{ds}; split [bold]{split}[/bold], seed {seed}")
        splits = make_splits(ds, split, seed)
        specs = [ModelSpec(n, n, params.get(n, {})) for n in names]
        fallback_spec = (
            ModelSpec(fallback, fallback, params.get(fallback, {})) if fallback else None
        )
        settings = {
            "data": data,
            "split": split,
            "seed": seed,
            "models": names,
            "fallback": fallback,
            "k": k,
            "min_rating": min_rating,
            "params": params,
            "version": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with _progress() as progress:
            steps = 3 + any(bool(s.holdout_users.any()) for s in splits)
            fallback_used = fallback is not None and any(
                not model_class(n).serves_cold_start for n in names
            )
            total = len(splits) * (len(specs) * steps + fallback_used)
            task = progress.add_task("evaluating", total=total)

            def step(what: str) -> None:
                progress.update(task, description=what, advance=1)

            result = run_evaluation(
                ds,
                splits,
                specs,
                k=k,
                group_by=group_by,
                on_step=step,
                settings=settings,
                fallback=fallback_spec,
            )
        out.print(table(result))
        if json_path:
            console.print(f"wrote {write_json(result, json_path)}")
        if report:
            console.print(f"wrote {write_html(result, report)}")


@app.command()
def tune(
    model: Annotated[str, typer.Option("--model", help="the model to tune")],
    data: DataOpt = "synthetic",
    split: SplitOpt = "random:0.8",
    seed: SeedOpt = 42,
    metric: Annotated[
        str, typer.Option("--metric", help="e.g. ndcg@10, precision@10, rmse")
    ] = "ndcg@10",
    trials: Annotated[int, typer.Option("--trials", min=1, help="number of trials")] = 30,
    validation: Annotated[
        str, typer.Option("--validation", help="split of the TRAINING part into fit/validation")
    ] = "random:0.8",
    out_path: Annotated[
        Path, typer.Option("--out", help="TOML file to write (or update) the best parameters in")
    ] = Path("sieve-tuned.toml"),
    min_rating: MinRatingOpt = None,
    user_col: UserCol = None,
    item_col: ItemCol = None,
    value_col: ValueCol = None,
    time_col: TimeCol = None,
    type_col: TypeCol = None,
    sep: SepOpt = ",",
) -> None:
    """Search a model's hyperparameters on validation data carved out of the
    training split (never the test set); write the best to a TOML file that
    `sieve evaluate --config` reads."""
    import tomli_w

    from sieve.config import read_toml
    from sieve.data.split import make_splits
    from sieve.evaluate.tune import tune as run_tune

    with _clean_errors():
        ds = _load(
            data, min_rating, _columns(user_col, item_col, value_col, time_col, type_col), sep
        )
        first = make_splits(ds, split, seed)[0]
        with _progress() as progress:
            task = progress.add_task(f"tuning {model}", total=trials)
            best: list[float] = []

            def on_trial(number: int, value: float) -> None:
                best.append(value)
                progress.update(
                    task,
                    advance=1,
                    description=f"tuning {model}: trial {number} {metric}={value:.4f}",
                )

            result = run_tune(
                model,
                first,
                metric=metric,
                n_trials=trials,
                validation=validation,
                seed=seed,
                on_trial=on_trial,
            )
        existing = read_toml(out_path) if out_path.exists() else {}
        existing[model] = result.best_params
        out_path.write_text(
            f"# written by sieve tune: best {metric} on validation {validation} of {split}\n"
            + tomli_w.dumps(existing)
        )
        out.print(f"best {metric} = {result.best_value:.4f} with {result.best_params}")
        console.print(f"wrote {out_path}")


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


# ------------------------------------------------------------------ service
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="settings TOML file (default: $SIEVE_CONFIG, if set)"),
]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="store URL (sqlite:///PATH or postgresql://…)")
]
CacheOpt = Annotated[str | None, typer.Option("--cache", help="cache URL (memory:// or redis://…)")]
ModelDirOpt = Annotated[
    Path | None, typer.Option("--model-dir", help="folder of trained funnels (and CURRENT)")
]


def _service_settings(config: Path | None, **overrides: Any) -> Any:
    """Settings from flags over $SIEVE_* over the TOML file; bad ones exit with code 2."""
    from sieve.settings import load_settings

    return load_settings(config, **overrides)


@app.command()
def train(
    store: StoreOpt = None,
    model_dir: ModelDirOpt = None,
    funnel_config: Annotated[
        Path | None, typer.Option("--funnel-config", help="TOML of the funnel's configuration")
    ] = None,
    config: ConfigOpt = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="register as a candidate; do not serve it")
    ] = False,
) -> None:
    """Train a funnel on the store's catalog and event log, register it in the
    model registry (MODEL_DIR/<version>/) and promote it (a running service
    swaps to it within `model_poll_seconds`), unless --no-promote."""
    from sieve.training.train import train as train_funnel

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, model_dir=model_dir, funnel_config=funnel_config
        )
        console.print(f"training on [bold]{settings.store_url}[/bold]", soft_wrap=True)
        start = time.perf_counter()
        funnel, path = train_funnel(settings, promote=not no_promote)
        console.print(f"trained in {time.perf_counter() - start:.1f}s")
        state = "candidate" if no_promote else "current"
        out.print(f"model {funnel.version} saved to {path} ({state})", soft_wrap=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default 8000")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    cache: CacheOpt = None,
    model_dir: ModelDirOpt = None,
    precompute: Annotated[
        bool,
        typer.Option(
            "--precompute", help="precompute every known user's list at start-up (see `batch`)"
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="log one line per request")
    ] = True,
) -> None:
    """Serve the REST API (one process; docs at /docs) with the current model."""
    import logging

    import uvicorn

    from sieve.serve.app import create_app

    with _clean_errors():
        settings = _service_settings(
            config,
            host=host,
            port=port,
            store_url=store,
            cache_url=cache,
            model_dir=model_dir,
            precompute=precompute or None,
        )
        application = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("sieve.serve.access").setLevel(
        logging.INFO if access_log else logging.WARNING
    )
    uvicorn.run(application, host=settings.host, port=settings.port, access_log=False)


@app.command()
def batch(
    n: Annotated[int | None, typer.Option("--n", min=1, help="list length (default 50)")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    cache: CacheOpt = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Precompute the top-N of every user the current model knows into the cache
    (`recs:{user}`); the service answers from it until the user's next event or
    a new model. With the default memory:// cache the lists vanish when this
    command ends: use a redis:// cache, or `sieve serve --precompute`."""
    from sieve.serve.service import Service

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, cache_url=cache, model_dir=model_dir, batch_n=n
        )
        if settings.cache_url.startswith("memory"):
            console.print(
                "[yellow]note:[/yellow] the cache is memory:// (this process only): the "
                "lists are lost when batch exits; use --cache redis://… or "
                "`sieve serve --precompute`"
            )
        service = Service.open(settings)
        try:
            if service.model_version is None:
                raise UsageError(f"no model trained yet in {settings.model_dir}: run `sieve train`")
            start = time.perf_counter()
            count = service.precompute(settings.batch_n)
        finally:
            service.close()
        out.print(
            f"precomputed {count} lists of {settings.batch_n} for model {service.model_version} "
            f"in {time.perf_counter() - start:.1f}s into {settings.cache_url}",
            soft_wrap=True,
        )


keys_app = typer.Typer(
    help="API keys: hash a key for the settings, or make a new one.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


@keys_app.command("hash")
def keys_hash(
    key: Annotated[
        str | None,
        typer.Argument(help="the key; omit (or '-') to read it from stdin, out of shell history"),
    ] = None,
) -> None:
    """Print the SHA-256 digest of a key: what `api_keys[].key_hash` holds."""
    from sieve.serve.auth import hash_key

    with _clean_errors():
        if key is None or key == "-":
            key = sys.stdin.readline().strip()
        if not key:
            raise UsageError("no key given")
        typer.echo(hash_key(key))


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option("--name", help="the key's name (it appears in logs)")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="comma-separated: read, write, admin")
    ] = "read",
) -> None:
    """Make a random key: prints the key once, and the settings entry with its digest."""
    from sieve.serve.auth import hash_key, new_key
    from sieve.settings import ApiKey

    with _clean_errors():
        wanted = [s.strip() for s in scopes.split(",") if s.strip()]
        key = new_key()
        entry = ApiKey(name=name, key_hash=hash_key(key), scopes=tuple(wanted))  # type: ignore[arg-type]
        typer.echo(f"key (shown once, give it to the client): {key}")
        typer.echo("settings entry:")
        typer.echo(
            f'[[api_keys]]\nname = "{entry.name}"\nkey_hash = "{entry.key_hash}"\n'
            f"scopes = {list(entry.scopes)}".replace("'", '"')
        )


@app.command()
def quickstart(
    data: DataOpt = "synthetic",
    folder: Annotated[Path, typer.Option("--dir", help="where the store and the models go")] = Path(
        "sieve-quickstart"
    ),
    port: Annotated[int, typer.Option("--port")] = 8000,
    movielens: Annotated[
        Path | None,
        typer.Option("--movielens", help="a MovieLens 100K folder (u.data, u.item, u.user)"),
    ] = None,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="load and train, then exit")] = False,
) -> None:
    """A running demo in one command: load a data set into a local SQLite store,
    train a funnel, and serve it on 127.0.0.1 with reads and (loopback) writes
    open, no key needed. Not for production: see `sieve serve`."""
    from sieve.data.io import load_data
    from sieve.settings import Settings
    from sieve.storage import open_store
    from sieve.training.snapshot import import_data
    from sieve.training.train import train as train_funnel

    if movielens is not None:
        data = f"movielens-100k:{movielens}"
    with _clean_errors():
        settings = Settings(
            store_url=f"sqlite:///{folder / 'sieve.db'}",
            cache_url="memory://",
            model_dir=folder / "models",
            open_read=True,
            open_write=True,
            host="127.0.0.1",
            port=port,
            precompute=True,
        )
        console.print(f"loading [bold]{data}[/bold] into {settings.store_url}", soft_wrap=True)
        with open_store(settings.store_url) as store:
            raw = load_data(data)
            for problem in raw.problems[:20]:
                console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)
            if len(raw.problems) > 20:
                console.print(f"[yellow]… and {len(raw.problems) - 20} more rows skipped[/yellow]")
            n_items, n_users, n_events = import_data(store, raw)
            console.print(f"{n_items} items, {n_users} users, {n_events} new events")
            funnel, path = train_funnel(settings, store)
        out.print(f"model {funnel.version} saved to {path}", soft_wrap=True)
        base = f"http://127.0.0.1:{port}"
        out.print(
            f"try: curl {base}/popular  ·  curl {base}/recommendations/"
            f"{funnel.user_ids[0]}  ·  docs: {base}/docs  ·  dashboard: {base}/dashboard",
            soft_wrap=True,
        )
    if not no_serve:
        import logging

        import uvicorn

        from sieve.serve.app import create_app

        logging.basicConfig(level=logging.INFO)
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, access_log=False)


models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version_arg(value: str) -> str:
    """A version name on the command line, checked before any file is touched."""
    from sieve.registry import RegistryError, check_version

    try:
        return check_version(value)
    except RegistryError as e:
        raise typer.BadParameter(str(e)) from None


def _registry(model_dir: Path | None, config: Path | None) -> Any:
    from sieve.registry import ModelRegistry

    return ModelRegistry(_service_settings(config, model_dir=model_dir).model_dir)


@models_app.command("list")
def models_list(model_dir: ModelDirOpt = None, config: ConfigOpt = None) -> None:
    """Every registered version with its status, data and metrics."""
    from rich.table import Table

    with _clean_errors():
        registry = _registry(model_dir, config)
        current = registry.current()
        table = Table(title=f"models in {registry.root}")
        for col in ("version", "status", "created", "data", "metrics", "notes"):
            table.add_column(col)
        manifests, problems = registry.scan()
        for m in manifests:
            mark = " ◀ serving" if m.version == current else ""
            table.add_row(
                m.version + mark,
                m.status,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at)),
                ", ".join(f"{k}={v}" for k, v in m.data.items() if k != "store"),
                ", ".join(f"{k}={v:.4f}" for k, v in m.metrics.items()),
                "; ".join(m.notes),
            )
        out.print(table)
        for problem in problems:
            console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="the version to serve", callback=_version_arg)],
    model_dir: ModelDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve VERSION (a running service swaps to it without dropping requests)."""
    with _clean_errors():
        _registry(model_dir, config).promote(version, "promoted with `sieve models promote`")
        out.print(f"serving {version}")


@models_app.command("rollback")
def models_rollback(model_dir: ModelDirOpt = None, config: ConfigOpt = None) -> None:
    """Serve the version that served before the current one."""
    with _clean_errors():
        manifest = _registry(model_dir, config).rollback()
        out.print(f"serving {manifest.version}")


@app.command()
def worker(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model_dir: ModelDirOpt = None,
    funnel_config: Annotated[
        Path | None, typer.Option("--funnel-config", help="TOML of the candidate's configuration")
    ] = None,
    every: Annotated[
        float | None, typer.Option("--every", help="retrain at least every this many seconds")
    ] = 24 * 3600.0,
    after_events: Annotated[
        int | None, typer.Option("--after-events", help="retrain after this many new events")
    ] = 50_000,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="promote if ≥ serving × (1 − tolerance)")
    ] = 0.0,
    poll: Annotated[float, typer.Option("--poll", help="seconds between checks")] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="run one cycle now and exit")] = False,
) -> None:
    """Retrain beside the server: on a schedule, after N new events or when
    MODEL_DIR/RETRAIN appears; promote the candidate only if it is not worse
    than the serving model on the most recent events, else keep the old one
    and record why (`sieve models list` shows it)."""
    from sieve.training.worker import Retrainer, RetrainPolicy

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, model_dir=model_dir, funnel_config=funnel_config
        )
        policy = RetrainPolicy(every_seconds=every, after_events=after_events, tolerance=tolerance)
        retrainer = Retrainer(settings, policy)
        if once:
            d = retrainer.run_once("manual (`sieve worker --once`)")
            verdict = "promoted" if d.promoted else "rejected"
            out.print(f"{d.candidate} {verdict}: {d.why}", soft_wrap=True)
            return
        console.print(f"watching {settings.store_url} every {poll:.0f}s", soft_wrap=True)
        retrainer.run_forever(poll_seconds=poll)


# ------------------------------------------------------------- experiments
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

    from sieve.experiments.online import ExperimentError, experiment_report
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
                    response = sim.client.get(f"/experiments/{experiment}/report")
                    if response.status_code != 200:
                        raise UsageError(f"report of {experiment!r}: {response.text}")
                    report = response.json()
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
