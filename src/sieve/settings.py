"""Service settings: environment variables (`SIEVE_*`) over an optional TOML file.

Precedence, highest first: keyword arguments (CLI flags) > environment
variables (`SIEVE_STORE_URL`, `SIEVE_API_KEYS='[{...}]'`, …) > the TOML file
named by `--config` or `SIEVE_CONFIG` > the defaults below. Unknown keys and
bad values fail at start-up with a message naming the key, so a typo never
falls back to a default silently.

A TOML file uses the field names as top-level keys::

    store_url = "postgresql://sieve@db/sieve"
    cache_url = "redis://cache:6379/0?prefix=sieve:"
    model_dir = "/var/lib/sieve/models"

    [[api_keys]]
    name = "web-frontend"
    key_hash = "<sha256 hex of the key: `sieve keys hash`>"
    scopes = ["read"]

API keys are configured by their SHA-256 digest only (`sieve keys hash KEY`),
so a leaked config file does not leak a usable key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sieve.data.records import DEFAULT_MAX_FUTURE_SKEW_SECONDS
from sieve.data.schema import DEFAULT_EVENT_WEIGHTS

#: The scopes a key can hold; `admin` implies the other two.
Scope = Literal["read", "write", "admin"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_EVENT_TYPE = re.compile(r"^[a-z_]{1,32}$")


class ApiKey(BaseModel):
    """One API key: a name for logs, the SHA-256 hex digest of the key, its scopes."""

    # a raw key pasted into key_hash must not be echoed by the error message
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=64, description="Names the key in logs.")
    key_hash: str = Field(
        description="SHA-256 hex digest of the key (`sieve keys hash KEY`), never the key."
    )
    scopes: tuple[Scope, ...] = Field(
        default=("read",), description="read, write and/or admin (admin implies the other two)."
    )

    @field_validator("key_hash")
    @classmethod
    def _is_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX64.match(value):
            raise ValueError(
                "key_hash must be the 64-character SHA-256 hex digest of the key "
                "(run `sieve keys hash KEY`), not the key itself"
            )
        return value


class EventSemantics(BaseModel):
    """What counts as a click and as a conversion, and what each is worth.

    The one definition every consumer reads — the online counters' CTR, the
    experiment reports and their arm allocation, the bandits' rewards, the
    dashboard, Prometheus and the drift check — so "CTR" means one thing:

    - a *click* is an event of `click_types` (default: `click` only; a cart or
      a purchase is a later step of the same visit, usually preceded by its own
      click, and counting it again would let a list score above 100%);
    - a *conversion* is an event of `conversion_types` (default: `purchase`);
      its `value` is the revenue of the reports;
    - `reward_weights`: the reward a bandit gets for an event of a click or
      conversion type, in [0, 1] (Beta–Bernoulli bandits); a click type without
      an entry is worth 1, a conversion type without one 0;
    - `dwell_types`: events whose `value` is the seconds spent on the item
      (default: a `dwell` event; add `view` to read a view's value as its
      dwell); they are attributed to the list that showed the item like clicks;
    - `session_gap_seconds`: a user's session ends after this much inactivity
      (events and served lists), and is over once that time has passed;
    - `bounce_seconds`: an ended session whose last activity came at most this
      long after its first is a bounce (0: single-moment sessions only).

    Shown-list CTR (reports, dashboard, Prometheus) counts click events that
    cite a served request; the drift check counts distinct clicked slots.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    click_types: tuple[str, ...] = Field(
        default=("click",), description="Event types that count as a click (every CTR)."
    )
    conversion_types: tuple[str, ...] = Field(
        default=("purchase",),
        description="Event types that count as a conversion; their `value` is revenue.",
    )
    reward_weights: dict[str, float] = Field(
        default_factory=dict,
        description="A bandit's reward in [0, 1] per click or conversion type (default: a "
        "click type 1, a conversion type 0).",
    )
    dwell_types: tuple[str, ...] = Field(
        default=("dwell",),
        description="Event types whose `value` is a dwell time in seconds (add `view` when "
        "views carry their dwell as a value).",
    )
    session_gap_seconds: float = Field(
        default=1800.0,
        gt=0.0,
        le=7 * 86_400.0,
        description="Inactivity that ends a session: a user's events and served lists with no "
        "gap longer than this form one session.",
    )
    bounce_seconds: float = Field(
        default=10.0,
        ge=0.0,
        description="A session that ended within this many seconds of its start is a bounce "
        "(shorter than `session_gap_seconds`).",
    )

    @field_validator("click_types", "conversion_types", "dwell_types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(t for t in value if not _EVENT_TYPE.match(t))
        if bad:
            raise ValueError(f"event types must be 1-32 lowercase letters or '_', got {bad}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _weights(self) -> EventSemantics:
        if not self.click_types:
            raise ValueError("semantics.click_types: at least one event type must count as a click")
        known = set(self.click_types) | set(self.conversion_types)
        stray = sorted(set(self.reward_weights) - known)
        if stray:
            raise ValueError(
                f"semantics.reward_weights: {stray} are neither click nor conversion types "
                f"(clicks: {list(self.click_types)}, conversions: {list(self.conversion_types)})"
            )
        bad = {t: w for t, w in self.reward_weights.items() if not 0.0 <= w <= 1.0}
        if bad:
            raise ValueError(f"semantics.reward_weights must lie in [0, 1], got {bad}")
        if self.bounce_seconds >= self.session_gap_seconds:
            raise ValueError(
                f"semantics.bounce_seconds ({self.bounce_seconds}) must be shorter than "
                f"session_gap_seconds ({self.session_gap_seconds})"
            )
        return self

    def is_dwell(self, event_type: str) -> bool:
        """Whether an event of this type carries dwell seconds in its value."""
        return event_type in self.dwell_types

    def is_click(self, event_type: str) -> bool:
        """Whether an event of this type is a click."""
        return event_type in self.click_types

    def is_conversion(self, event_type: str) -> bool:
        """Whether an event of this type is a conversion."""
        return event_type in self.conversion_types

    def reward(self, event_type: str) -> float:
        """A bandit's reward for an event of this type (0 for other types)."""
        default = 1.0 if self.is_click(event_type) else 0.0
        if not (default or self.is_conversion(event_type)):
            return 0.0
        return float(self.reward_weights.get(event_type, default))

    def describe(self) -> dict[str, Any]:
        """The definition as JSON, for reports and dashboard labels."""
        return {
            "click_types": list(self.click_types),
            "conversion_types": list(self.conversion_types),
            "reward_weights": {
                t: self.reward(t) for t in (*self.click_types, *self.conversion_types)
            },
            "dwell_types": list(self.dwell_types),
            "session_gap_seconds": self.session_gap_seconds,
            "bounce_seconds": self.bounce_seconds,
        }


#: The definition used where no settings are at hand (library calls, tests).
DEFAULT_SEMANTICS = EventSemantics()

_BOARD_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")


class Leaderboard(BaseModel):
    """One named non-personalised list, served at `GET /leaderboards/{name}`.

    - `kind`: `most_bought` (items by their events of `event_types` in the
      last `days`), `top_rated` (Bayesian average of `rating` events in the
      last `days`, or all time when `days` is 0: (prior · global mean + Σ
      ratings) / (prior + count), with `prior` = `prior_ratings`), or
      `newest` (by the catalog's `created_at`);
    - `category`: only items of this category (None: all);
    - `n`: the list's length (at most 1000).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["most_bought", "top_rated", "newest"]
    days: float = Field(default=7.0, ge=0.0, le=3650.0)
    event_types: tuple[str, ...] = ("purchase",)
    prior_ratings: float = Field(default=10.0, ge=0.0)
    category: str | None = Field(default=None, min_length=1, max_length=256)
    n: int = Field(default=50, ge=1, le=1000)


def _default_leaderboards() -> dict[str, Leaderboard]:
    return {
        "most_bought": Leaderboard(kind="most_bought"),
        "top_rated": Leaderboard(kind="top_rated", days=0.0),
        "newest": Leaderboard(kind="newest"),
    }


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything `sieve serve`, `sieve train` and `sieve batch` need.

    - `store_url`: catalog + event log (`sqlite:///PATH` or `postgresql://…`);
    - `cache_url`: `memory://` (per process) or `redis://…` (shared: needed
      by several server processes, `workers` or replicas on several hosts);
    - `model_dir`: trained funnels live in `model_dir/<version>/`; the file
      `model_dir/CURRENT` names the one to serve. A path or a `file://` URL:
      with several hosts, a directory they all mount (an object store is
      mounted as one: s3fs, gcsfuse);
    - `funnel_config`: TOML of the funnel's configuration for `sieve train`;
    - `api_keys`: hashed keys with scopes (see `sieve.serve.auth`);
    - `open_read`: read endpoints need no key (demos, internal networks);
    - `open_write`: write endpoints need no key *from loopback clients* and
      only when `host` is a loopback address (the quickstart);
    - `max_batch`: most events / items / users in one request (413 above);
    - `max_n`: longest list a request may ask for;
    - `max_body_bytes`: largest request body, declared or chunked (413 above);
    - `event_weights`: accepted event types and their weight in a user's history;
    - `semantics`: which events are clicks and conversions and their reward
      (`EventSemantics`; TOML table `[semantics]`, or
      `SIEVE_SEMANTICS='{"click_types": ["click"]}'`), read by every CTR;
    - `store_timeout_seconds`: the longest any call to a database server
      (PostgreSQL) may take on the request path (0: no limit; SQLite's
      `busy_timeout` bounds its waits); past it the request gets a 503 with
      `Retry-After` (a request's history and session limits are part of the
      model: the funnel config's `[query]` section);
    - `batch_n`: list length precomputed by `sieve batch`;
    - `precompute`: `sieve serve` runs the batch precompute at start-up
      (the way to use it with the per-process `memory://` cache);
    - `answer_ttl_seconds`: a live answer to a plain request (no filter or
      context, no experiment, no exploration slot, no trace) is kept in the
      cache as the user's list for this long and served from there, as a
      precomputed one is, until the user's next event, a model swap or one of
      its items becoming unservable (0: every such request is answered live);
    - `live_concurrency`: live computations (a user's or a session's list,
      similar items, `POST /rank`) that one server process runs at once; the
      others wait their turn (`sieve.serve.lane`: Python threads computing
      together only take turns on the interpreter lock, so above 1 they add
      switching, not speed; more processes, `workers`, add speed);
    - `live_wait_seconds`: the longest a request waits for its turn before it
      gets a 503 with `Retry-After` (the server is overloaded; 0: no limit);
    - `ingest_yield_seconds`: the longest an event batch (`POST /events`)
      waits, before its work, for the live computations that arrived before
      it in its process to finish (`Lane.yield_to_live`: requests take the
      interpreter in arrival order, so a batch does not slow the answers
      users are already waiting for); the batch is stored a little later,
      never dropped (0: batches never wait);
    - `blas_threads`: threads of NumPy's and SciPy's BLAS (OpenBLAS) in a
      server process (0: the library's own default, one per core). One live
      computation runs at a time per process; a matrix product large enough
      for BLAS to thread took every core for itself, starving the event loop
      and the other requests' threads, and its threads spun idle on the other
      core afterwards (a live answer over a long history: 3.6 ms of wall time
      and 7.3 ms of CPU);
    - `model_poll_seconds`: how often a running service checks the model
      registry for a newly promoted version (0: only on `POST /admin/reload`);
    - `catalog_poll_seconds`: how often a server process reads the catalog
      changes other processes made (`POST /items` on another replica), so
      its funnel serves them (0: never; its own writes apply at once);
    - `workers`: server processes `sieve serve` runs on this host (they
      share the port; above 1 needs a shared cache, `redis://`);
    - `attribution_window_seconds`: an event of `attribution_types` without a
      `request_id` is attributed to the latest impression of its item to its
      user within this window;
    - `attribution_types`: the event types attributed that way;
    - `exploration_slots`: the last positions of a list chosen by a bandit
      among the next `exploration_pool` candidates, with the propensity of
      each choice logged (0: off; an experiment arm may set its own);
    - `exploration_policy`: the bandit of the exploration slots (`thompson`,
      `ucb1`, `epsilon`, or `linucb` over the context features the funnel
      config names in `[linucb]`);
    - `exploration_pool`: the candidates after the list that the exploration
      slots choose from;
    - `random_share`: the share of requests (0-1) served the random slice:
      `n` items drawn uniformly from the funnel's top `random_pool`
      candidates in a random order, each logged with its propensity n / pool
      (`sieve.explore.random_slice`); such a request skips the precomputed
      lists, its experiments and exploration slots;
    - `random_pool`: the top candidates the random slice draws from;
    - `drift_check_seconds`: how often the service compares recent traffic
      with the training snapshot (0: never); a check that fires writes the
      retraining trigger `model_dir/RETRAIN`;
    - `drift_psi_threshold`: a population-stability index (popularity, event
      mix, scores) above it fires the drift check;
    - `ctr_drop_threshold`: a relative drop of the shown-list CTR below the
      training-time CTR above it fires the drift check;
    - `drift_min_impressions`: shown slots needed before the CTR drop is judged;
    - `host`: the address `sieve serve` listens on (a loopback address
      keeps it private to this machine);
    - `port`: the port `sieve serve` listens on;
    - `max_future_skew_seconds`: an event timestamped more than this after
      the server's clock is refused (422 naming it): a far-future time would
      count at full weight in the decayed online counters until that date;
    - `leaderboards`: named non-personalised lists (`Leaderboard`; TOML
      tables `[leaderboards.NAME]`), recomputed by one process at most every
      `leaderboard_refresh_seconds` and kept in the cache for all of them;
    - `leaderboard_refresh_seconds`: how old a leaderboard may get before one
      process recomputes it (the others serve the previous one meanwhile).
    """

    model_config = SettingsConfigDict(
        env_prefix="SIEVE_",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        toml_file=None,
    )

    store_url: str = "sqlite:///sieve.db"
    cache_url: str = "memory://"
    model_dir: Path = Path("./sieve-models")
    funnel_config: Path | None = None
    api_keys: tuple[ApiKey, ...] = ()
    open_read: bool = False
    open_write: bool = False
    max_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    max_n: int = Field(default=200, ge=1, le=10_000)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    store_timeout_seconds: float = Field(default=2.0, ge=0.0, le=600.0)
    semantics: EventSemantics = Field(default_factory=EventSemantics)
    batch_n: int = Field(default=50, ge=1)
    precompute: bool = False
    answer_ttl_seconds: float = Field(default=300.0, ge=0.0, le=86_400.0)
    live_concurrency: int = Field(default=1, ge=1, le=64)
    live_wait_seconds: float = Field(default=10.0, ge=0.0, le=600.0)
    ingest_yield_seconds: float = Field(default=0.25, ge=0.0, le=10.0)
    blas_threads: int = Field(default=1, ge=0, le=256)
    model_poll_seconds: float = Field(default=2.0, ge=0.0)
    catalog_poll_seconds: float = Field(default=1.0, ge=0.0)
    workers: int = Field(default=1, ge=1, le=64)
    attribution_window_seconds: float = Field(default=1800.0, gt=0.0)
    attribution_types: tuple[str, ...] = ("click", "cart", "purchase")
    exploration_slots: int = Field(default=0, ge=0, le=50)
    exploration_policy: Literal["thompson", "ucb1", "epsilon", "linucb"] = "thompson"
    exploration_pool: int = Field(default=50, ge=1, le=1000)
    random_share: float = Field(default=0.0, ge=0.0, le=1.0)
    random_pool: int = Field(default=100, ge=1, le=1000)
    drift_check_seconds: float = Field(default=300.0, ge=0.0)
    drift_psi_threshold: float = Field(default=0.2, gt=0.0)
    ctr_drop_threshold: float = Field(default=0.3, gt=0.0, lt=1.0)
    drift_min_impressions: int = Field(default=1000, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # bad input (issue 9)
    max_future_skew_seconds: float = Field(default=DEFAULT_MAX_FUTURE_SKEW_SECONDS, ge=0.0)
    # signals and behaviours (issue 13)
    leaderboards: dict[str, Leaderboard] = Field(default_factory=_default_leaderboards)
    leaderboard_refresh_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the TOML file (if `load_settings` named one)."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("model_dir", mode="before")
    @classmethod
    def _model_dir(cls, value: Any) -> Any:
        """A path, or a `file://` URL (`file:///srv/models`, or `file:models`
        relative). Models are read from a directory: with several hosts, one
        they all mount (NFS, EFS, a volume). An object store (`s3://`,
        `gs://`) is not read directly: mount it (s3fs, gcsfuse), or give
        `sieve.registry.ModelRegistry` a backend for it — the registry is the
        one place that reads and writes model files."""
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or ":" not in value.split("/", 1)[0]:
            return value
        scheme, _, rest = value.partition(":")
        if len(scheme) == 1:  # a drive letter, not a scheme
            return value
        if scheme.lower() != "file":
            raise ValueError(
                f"model_dir: {scheme}:// is not supported; give a path or a file:// URL "
                "(an object store can be mounted as a directory)"
            )
        if rest.startswith("//"):
            host, _, path = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise ValueError(f"model_dir: file://{host}/… names another host; mount it")
            rest = "/" + path
        return unquote(rest)

    @field_validator("event_weights")
    @classmethod
    def _event_types(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one event type is needed")
        bad = sorted(t for t in value if not _EVENT_TYPE.match(t))
        if bad:
            raise ValueError(f"event types must be 1-32 lowercase letters or '_', got {bad}")
        return value

    @model_validator(mode="after")
    def _checks(self) -> Settings:
        names = [k.name for k in self.api_keys]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"api_keys: repeated key name(s) {repeated}")
        if self.open_write and not is_loopback(self.host):
            raise ValueError(
                f"open_write serves writes without a key and is allowed only on a loopback "
                f"host (127.0.0.1, ::1, localhost), not {self.host!r}"
            )
        bad_boards = sorted(n for n in self.leaderboards if not _BOARD_NAME.match(n))
        if bad_boards:
            raise ValueError(
                f"leaderboards: names must be 1-64 of a-z, 0-9, '_' or '-', got {bad_boards}"
            )
        semantic = {*self.semantics.click_types, *self.semantics.conversion_types}
        unknown = sorted(semantic - set(self.event_weights))
        if unknown:
            raise ValueError(
                f"semantics: {unknown} are not accepted event types (event_weights: "
                f"{sorted(self.event_weights)}); add them to event_weights or drop them"
            )
        return self


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, the TOML file `config` (or `$SIEVE_CONFIG`) and
    `overrides` (None values are ignored, so unset CLI flags keep lower layers)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    path = config or os.environ.get("SIEVE_CONFIG") or None
    if path is None:
        return Settings(**given)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"settings file {file} not found")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=file)

    return FileSettings(**given)


__all__ = [
    "DEFAULT_SEMANTICS",
    "ApiKey",
    "EventSemantics",
    "Leaderboard",
    "Scope",
    "Settings",
    "is_loopback",
    "load_settings",
]
