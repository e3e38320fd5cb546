"""`sieve evaluate`, `sieve tune` (offline evaluation and hyperparameter
search on a data spec) and `sieve version`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sieve import __version__
from sieve.cli.common import (
    DataOpt,
    ModelDirOpt,
    UsageError,
    _clean_errors,
    _progress,
    app,
    console,
    out,
)

#: The models `sieve evaluate` runs when none are named.
DEFAULT_MODELS = "popular,itemknn,ease,als,bpr"


def _default_models(n_items: int) -> list[str]:
    """`DEFAULT_MODELS` for a catalog of `n_items`: sparse EASE in place of
    dense EASE past `DENSE_MAX_ITEMS`, whose O(n³) fit would take most of the
    run (30,000 items: 534 s against sparse EASE's 22 s, at the same NDCG@10)."""
    from sieve.models.ease import DENSE_MAX_ITEMS

    names = _parse_models(DEFAULT_MODELS)
    if n_items > DENSE_MAX_ITEMS:
        names = ["sparse-ease" if n == "ease" else n for n in names]
    return names


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
    from sieve.data.schema import EventWeights

    return _load_raw(data, columns, sep).to_dataset(EventWeights(min_rating=min_rating))


def _load_raw(data: str, columns: dict[str, str | None], sep: str) -> Any:
    from sieve.data.io import ColumnMapping, load_data

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
    return raw


def _check_split(spec: str, flag: str) -> None:
    """A bad split spec, reported before any data loads."""
    from sieve.data.split import SPLIT_SPECS, parse_split_spec

    try:
        parse_split_spec(spec)
    except ValueError as e:
        raise UsageError(
            f"{flag} {spec}: {e} (the forms: {', '.join(SPLIT_SPECS)}, e.g. random:0.8)"
        ) from None


SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="The split: random:RATIO, temporal:RATIO, leave-last:K, "
        "user-holdout:FRACTION or folds:PATH.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice.")]
MinRatingOpt = Annotated[
    float | None,
    typer.Option("--min-rating", help="Ratings below this are not positives (default: all are)."),
]
UserCol = Annotated[str | None, typer.Option("--user-col", help="CSV/Parquet: user id column.")]
ItemCol = Annotated[str | None, typer.Option("--item-col", help="CSV/Parquet: item id column.")]
ValueCol = Annotated[
    str | None, typer.Option("--value-col", help="CSV/Parquet: rating/value column.")
]
TimeCol = Annotated[str | None, typer.Option("--time-col", help="CSV/Parquet: timestamp column.")]
TypeCol = Annotated[str | None, typer.Option("--type-col", help="CSV/Parquet: event type column.")]
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
        "--sep", help="CSV field separator ('\\t' or 'tab' for a tab).", callback=parse_sep
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
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated models; the first is the baseline; NAME:auto chooses the "
            "model's parameters from the training data (a shape rule and a bounded search). "
            f"Default: {DEFAULT_MODELS}, with sparse-ease in place of ease above 10,000 items.",
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Length of the evaluated lists.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML with a table of parameters per model.")
    ] = None,
    min_rating: MinRatingOpt = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="User attribute for per-group fairness.")
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
            help="Model that answers the cold test users (no interaction before the test) of "
            "every model without a cold-start path of its own, e.g. trending.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="With logged data: the start of the window (epoch seconds or an ISO time).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="With logged data: the end of the window (default: now)."),
    ] = None,
    slice_: Annotated[
        str,
        typer.Option(
            "--slice",
            help="With logged data: evaluate on the random slice, on all traffic, or auto (the "
            "random slice when it has enough requests).",
        ),
    ] = "auto",
    model_dir: ModelDirOpt = None,
    max_requests: Annotated[
        int | None,
        typer.Option(
            "--max-requests", min=1, help="With logged data: read at most this many requests."
        ),
    ] = None,
    test_data: Annotated[
        str | None,
        typer.Option(
            "--test-data",
            help="A fixed test set (same format as --data, e.g. lists:test.txt with "
            "--data lists:train.txt): evaluate on it instead of --split.",
        ),
    ] = None,
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate/--in-process",
            help="Fit and list each model in a worker process, so a crash or an out-of-memory "
            "kill fails that model only (default), or all in this process (faster start).",
        ),
    ] = True,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=0,
            help="Processes that share a model's lists where it computes them in blocks of "
            "users (the funnel); 0: one per core.",
        ),
    ] = 0,
    auto_budget: Annotated[
        float,
        typer.Option(
            "--auto-budget",
            min=1.0,
            help="Seconds of parameter search per model:auto and split (on validation data "
            "carved from the training part).",
        ),
    ] = 60.0,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help="Memory a model's fit may plan to use, e.g. 8G (default: SIEVE_MEMORY_BUDGET, "
            "else 80% of the memory available); a fit estimated over it is refused.",
        ),
    ] = None,
) -> None:
    """Evaluate models offline with intervals and paired tests.

    Every metric comes with its 95% interval, and every model is tested
    against the first one listed; cold and warm test users are also
    reported separately.

    With `--data logged:STORE_URL`, estimate instead each candidate's CTR on
    the lists the service logged in `[--since, --until)` (off-policy: IPS,
    SNIPS, doubly robust, with intervals): a candidate is a model name or a
    funnel config (.toml) trained on the events before the window, or a
    registered version (`current`, `version:V`, with --model-dir)."""
    if data.startswith("logged:"):
        from sieve.cli.offpolicy import run_logged

        with _clean_errors():
            run_logged(
                data,
                _parse_models(models if models is not None else DEFAULT_MODELS),
                since,
                until,
                slice_,
                model_dir,
                max_requests,
                json_path,
            )
        return
    from sieve.data.split import make_splits
    from sieve.evaluate.protocol import ModelSpec
    from sieve.evaluate.protocol import evaluate as run_evaluation
    from sieve.evaluate.report import failures_table, table, write_html, write_json
    from sieve.models.base import model_class
    from sieve.models.memory import parse_bytes

    with _clean_errors():
        _check_split(split, "--split")  # fails before the data loads
        try:
            budget = parse_bytes(memory_budget) if memory_budget else None
        except ValueError as e:
            raise UsageError(f"--memory-budget: {e}") from None
        names = _parse_models(models if models is not None else DEFAULT_MODELS)
        for name in names:
            base, _, mode = name.partition(":")
            if mode not in ("", "auto"):
                raise UsageError(f"--models: {name!r}: the only suffix is ':auto'")
            model_class(base)
        if fallback is not None:
            try:
                model_class(fallback)
            except KeyError as e:
                raise UsageError(f"--fallback: {e.args[0]}") from None
        params = _model_params(config)
        unknown = sorted(set(params) - {n.partition(":")[0] for n in names} - {fallback})
        if unknown:
            console.print(
                f"[yellow]note:[/yellow] {config} has settings for models not evaluated: {unknown}"
            )
        console.print(f"loading [bold]{data}[/bold]", soft_wrap=True)
        cols = _columns(user_col, item_col, value_col, time_col, type_col)
        if test_data is None:
            ds = _load(data, min_rating, cols, sep)
            console.print(f"{ds}; split [bold]{split}[/bold], seed {seed}")
            splits = make_splits(ds, split, seed)
        else:
            from sieve.data.schema import EventWeights
            from sieve.data.split import fixed_split

            console.print(f"test set [bold]{test_data}[/bold] (--split is not used)")
            ds, fixed = fixed_split(
                _load_raw(data, cols, sep),
                _load_raw(test_data, cols, sep),
                EventWeights(min_rating=min_rating),
            )
            console.print(f"{ds}; {fixed}")
            splits = [fixed]
            split = fixed.name
        if models is None:
            names = _default_models(ds.n_items)
            if "sparse-ease" in names:
                console.print(
                    f"[yellow]note:[/yellow] {ds.n_items:,} items: the default models run "
                    "sparse-ease in place of ease (dense EASE's fit grows with the cube of "
                    "the catalog); name ease in --models to run it"
                )
        specs = [
            ModelSpec(
                n,
                n.partition(":")[0],
                params.get(n.partition(":")[0], {}),
                auto=n.endswith(":auto"),
                auto_budget_s=auto_budget,
            )
            for n in names
        ]
        fallback_spec = (
            ModelSpec(fallback, fallback, params.get(fallback, {})) if fallback else None
        )
        columns = {
            k: v
            for k, v in _columns(user_col, item_col, value_col, time_col, type_col).items()
            if v is not None
        }
        settings = {
            "data": data,
            **({"columns": columns, "sep": sep} if data.startswith(("csv:", "parquet:")) else {}),
            "test_data": test_data,
            "split": split,
            "seed": seed,
            "models": names,
            "fallback": fallback,
            "k": k,
            "min_rating": min_rating,
            "group_by": group_by,
            "config": None if config is None else str(config),
            "params": params,
            "isolate": isolate,
            "memory_budget": memory_budget,
            "jobs": jobs,
            "version": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with _progress() as progress:
            steps = 3 + any(bool(s.holdout_users.any()) for s in splits)
            fallback_used = fallback is not None and any(
                not model_class(s.name).serves_cold_start for s in specs
            )
            total = len(splits) * (len(specs) * steps + fallback_used)
            task = progress.add_task("evaluating", total=total)

            def step(what: str) -> None:
                progress.update(task, description=what, advance=1)

            def partial(so_far: Any) -> None:
                if json_path:  # each model's results on disk as soon as they are done
                    write_json(so_far, json_path, status="running")

            result = run_evaluation(
                ds,
                splits,
                specs,
                k=k,
                group_by=group_by,
                on_step=step,
                settings=settings,
                fallback=fallback_spec,
                isolate=isolate,
                memory_budget=budget,
                on_result=partial,
                jobs=jobs,
            )
        if result.models:
            out.print(table(result))
        failed = failures_table(result)
        if failed is not None:
            out.print(failed)
        if json_path:
            console.print(f"wrote {write_json(result, json_path)}")
        if report:
            console.print(f"wrote {write_html(result, report)}")


@app.command()
def tune(
    model: Annotated[str, typer.Option("--model", help="The model to tune.")],
    data: DataOpt = "synthetic",
    split: SplitOpt = "random:0.8",
    seed: SeedOpt = 42,
    metric: Annotated[
        str, typer.Option("--metric", help="E.g. ndcg@10, precision@10, rmse.")
    ] = "ndcg@10",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Number of trials.")] = 30,
    validation: Annotated[
        str, typer.Option("--validation", help="Split of the TRAINING part into fit/validation.")
    ] = "random:0.8",
    out_path: Annotated[
        Path, typer.Option("--out", help="TOML file to write (or update) the best parameters in.")
    ] = Path("sieve-tuned.toml"),
    min_rating: MinRatingOpt = None,
    user_col: UserCol = None,
    item_col: ItemCol = None,
    value_col: ValueCol = None,
    time_col: TimeCol = None,
    type_col: TypeCol = None,
    sep: SepOpt = ",",
) -> None:
    """Search a model's hyperparameters; write the best to TOML.

    The search runs on validation data carved out of the training split
    (never the test set); `sieve evaluate --config` reads the file."""
    import tomli_w

    from sieve.config import read_toml
    from sieve.data.split import make_splits
    from sieve.evaluate.tune import tune as run_tune
    from sieve.models.base import model_class

    with _clean_errors():
        _check_split(split, "--split")
        _check_split(validation, "--validation")
        model_class(model)
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
