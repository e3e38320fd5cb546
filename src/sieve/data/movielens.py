"""MovieLens importers: 100K (`u.data`, `u.item`, `u.user`), 1M and 10M
(`::`-separated `.dat` files) and "latest"/20M/25M/32M (CSV with tags and
links). Each returns `RawData` with the problems of malformed rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.data.raw import ImportProblem, RawData
from sieve.data.reading import _decode, _read_csv, _require_folder, _split_lines
from sieve.data.rows import (
    _as_str,
    _blank,
    _event_ids,
    _events_frame,
    _fail_future,
    _items_frame,
    _Rows,
    _seconds,
    _sorted,
    _users_frame,
)
from sieve.data.schema import empty_items, empty_users

#: Genre names of MovieLens 100K, used when `u.genre` is absent.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

#: Occupation codes of MovieLens 1M `users.dat` (from its README).
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip

_NO_GENRES = {"(no genres listed)", ""}


def _rating_events(rows: _Rows, path: Path, latest: float | None = None) -> pd.DataFrame:
    """Events of a MovieLens ratings file with columns user, item, rating, ts."""
    user = rows.text("user", "user id")
    item = rows.text("item", "item id")
    rating = rows.number("rating", "rating")
    ts = rows.number("ts", "timestamp")
    _fail_future(rows, ts, latest)
    rows.check_all_bad(path, events=True)
    return _events_frame(rows, _event_ids(rows), user, item, "rating", rating, ts)


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _year_seconds(titles: pd.Series) -> NDArray[np.float64]:
    """January 1st of the year in a MovieLens title, "Heat (1995)"; NaN without one."""
    years = titles.str.extract(_YEAR, expand=False)
    dt = pd.to_datetime(years, format="%Y", errors="coerce")
    return _seconds(pd.Series(dt))


def _tags_by_item(rows: _Rows, path: Path) -> dict[str, list[str]]:
    """Distinct tags of each item (first-seen order) from a tags file."""
    rows.text("user", "user id")
    item = rows.text("item", "item id")
    tag = rows.text("tag", "tag")
    rows.check_all_bad(path)
    good = rows.good()
    frame = pd.DataFrame({"item": item[good].to_numpy(), "tag": tag[good].to_numpy()})
    frame = frame.drop_duplicates()
    return {str(k): [str(t) for t in v] for k, v in frame.groupby("item", sort=False)["tag"]}


def load_movielens_100k(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 100K from its folder: `u.data` ratings, `u.item` movies, `u.user`.

    Items get title, release date (`created_at`), genres (`categories`, the
    placeholder genre "unknown" left out) and the IMDb URL; users get age,
    gender, occupation and zip code. Ratings after `latest` (epoch seconds;
    default now plus a few minutes) are reported, as in every loader here.
    """
    folder = _require_folder(path)
    events_path = folder / "u.data"
    ratings = _split_lines(events_path, "\t", ["user", "item", "rating", "ts"])
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    genres = _ml100k_genres(folder / "u.genre")
    items = empty_items()
    if (folder / "u.item").is_file():
        items = _ml100k_items(folder / "u.item", genres, problems)
    users = empty_users()
    if (folder / "u.user").is_file():
        users = _ml100k_users(folder / "u.user", problems)
    return RawData(events, items, users, _sorted(problems))


def _ml100k_genres(path: Path) -> list[str]:
    if not path.is_file():
        return list(ML100K_GENRES)
    names = [ln.split("|")[0].strip() for ln in _decode(path, None).splitlines() if ln.strip()]
    return names


def _ml100k_items(path: Path, genres: list[str], problems: list[ImportProblem]) -> pd.DataFrame:
    names = [
        "item",
        "title",
        "release",
        "video_release",
        "imdb_url",
        *(f"g{k}" for k in range(len(genres))),
    ]
    rows = _split_lines(path, "|", names)  # UTF-8, else Latin-1 (the original)
    item = rows.text("item", "item id")
    title = rows.text("title", "title", required=False)
    release = rows.text("release", "release date", required=False)
    dt = pd.to_datetime(release, format="%d-%b-%Y", errors="coerce")
    undated = dt.isna().to_numpy() & ~_blank(release)
    rows.fail(undated, "release date {!r} is not a date like 01-Jan-1995", release)
    flags = np.empty((len(rows), len(genres)), dtype=object)
    for k in range(len(genres)):
        flags[:, k] = rows.text(f"g{k}", "genre flag").to_numpy(dtype=object)
    bad_flag = ~np.isin(flags, ["0", "1"]).all(axis=1)
    rows.fail(bad_flag, "genre flags must be 0 or 1")
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    is_genre = flags[good] == "1"
    keep = np.array([g != "unknown" for g in genres], dtype=bool)
    cats = [[genres[k] for k in np.flatnonzero(row & keep)] for row in is_genre]
    urls = rows.text("imdb_url", "IMDb URL", required=False)[good]
    videos = rows.text("video_release", "video release date", required=False)[good]
    attrs = [
        {k: v for k, v in (("imdb_url", u), ("video_release_date", vr)) if v}
        for u, vr in zip(urls, videos, strict=True)
    ]
    return _items_frame(item[good].tolist(), title[good].tolist(), cats, _seconds(dt[good]), attrs)


def _ml100k_users(path: Path, problems: list[ImportProblem]) -> pd.DataFrame:
    rows = _split_lines(path, "|", ["user", "age", "gender", "occupation", "zip"])
    user = rows.text("user", "user id")
    age = rows.number("age", "age")
    gender = rows.text("gender", "gender", required=False)
    occupation = rows.text("occupation", "occupation", required=False)
    zipcode = rows.text("zip", "zip code", required=False)
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    attrs = [
        {"age": int(a), "gender": g, "occupation": o, "zip": z}
        for a, g, o, z in zip(age[good], gender[good], occupation[good], zipcode[good], strict=True)
    ]
    return _users_frame(user[good].tolist(), attrs)


def load_movielens_1m(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 1M from its folder: `ratings.dat`, `movies.dat`, `users.dat` (`::`-separated)."""
    return _load_movielens_dat(_require_folder(path), latest)


def load_movielens_10m(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens 10M from its folder: `ratings.dat` (half-star ratings), `movies.dat`,
    and `tags.dat` if present (tags go to item text and `attributes["tags"]`)."""
    return _load_movielens_dat(_require_folder(path), latest)


def _load_movielens_dat(folder: Path, latest: float | None = None) -> RawData:
    events_path = folder / "ratings.dat"
    ratings = _split_lines(events_path, "::", ["user", "item", "rating", "ts"])
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    tags: dict[str, list[str]] = {}
    if (folder / "tags.dat").is_file():
        t = _split_lines(folder / "tags.dat", "::", ["user", "item", "tag", "ts"])
        tags = _tags_by_item(t, folder / "tags.dat")
        problems.extend(t.problems)
    items = empty_items()
    if (folder / "movies.dat").is_file():
        m = _split_lines(folder / "movies.dat", "::", ["item", "title", "genres"])
        items = _movies_frame(m, folder / "movies.dat", tags)
        problems.extend(m.problems)
    users = empty_users()
    if (folder / "users.dat").is_file():
        names = ["user", "gender", "age", "occupation", "zip"]
        u = _split_lines(folder / "users.dat", "::", names)
        users = _ml1m_users(u, folder / "users.dat")
        problems.extend(u.problems)
    return RawData(events, items, users, _sorted(problems))


def _movies_frame(rows: _Rows, path: Path, tags: dict[str, list[str]]) -> pd.DataFrame:
    """Items of a movies file with columns item, title, genres (`|`-separated)."""
    item = rows.text("item", "movie id")
    title = rows.text("title", "title", required=False)
    genres = rows.text("genres", "genres", required=False)
    rows.check_all_bad(path)
    good = rows.good()
    title = title[good].reset_index(drop=True)
    cats = [[] if g in _NO_GENRES else g.split("|") for g in genres[good]]
    return _items_frame(
        item[good].tolist(), title.tolist(), cats, _year_seconds(title), [{}] * len(title), tags
    )


def _ml1m_users(rows: _Rows, path: Path) -> pd.DataFrame:
    user = rows.text("user", "user id")
    gender = rows.text("gender", "gender", required=False)
    age = rows.number("age", "age")
    occ = rows.number("occupation", "occupation")
    zipcode = rows.text("zip", "zip code", required=False)
    unknown = ~np.isin(occ, np.arange(len(ML1M_OCCUPATIONS))) & ~np.isnan(occ)
    rows.fail(unknown, "occupation code {:g} is not in 0..20", occ)
    rows.check_all_bad(path)
    good = rows.good()
    attrs = [
        {"age": int(a), "gender": g, "occupation": ML1M_OCCUPATIONS[int(o)], "zip": z}
        for a, g, o, z in zip(age[good], gender[good], occ[good], zipcode[good], strict=True)
    ]
    return _users_frame(user[good].tolist(), attrs)


def load_movielens_latest(path: str | Path, *, latest: float | None = None) -> RawData:
    """MovieLens "latest" (also 20M/25M/32M) from its folder: `ratings.csv`,
    `movies.csv`, `tags.csv` and `links.csv` when present.

    Tags are not events: they are added to the item's text and
    `attributes["tags"]`; links add `imdb_id`/`tmdb_id` attributes.
    """
    folder = _require_folder(path)
    events_path = folder / "ratings.csv"
    ratings = _read_csv(events_path, ",", ["userId", "movieId", "rating", "timestamp"])
    ratings.columns = {
        "user": ratings.columns["userId"],
        "item": ratings.columns["movieId"],
        "rating": ratings.columns["rating"],
        "ts": ratings.columns["timestamp"],
    }
    events = _rating_events(ratings, events_path, latest)
    problems = ratings.problems
    tags: dict[str, list[str]] = {}
    if (folder / "tags.csv").is_file():
        t = _read_csv(folder / "tags.csv", ",", ["userId", "movieId", "tag"])
        t.columns = {
            "user": t.columns["userId"],
            "item": t.columns["movieId"],
            "tag": t.columns["tag"],
        }
        tags = _tags_by_item(t, folder / "tags.csv")
        problems.extend(t.problems)
    items = empty_items()
    if (folder / "movies.csv").is_file():
        m = _read_csv(folder / "movies.csv", ",", ["movieId", "title", "genres"], multiline=True)
        m.columns = {
            "item": m.columns["movieId"],
            "title": m.columns["title"],
            "genres": m.columns["genres"],
        }
        items = _movies_frame(m, folder / "movies.csv", tags)
        problems.extend(m.problems)
        if (folder / "links.csv").is_file():
            _add_links(items, folder / "links.csv", problems)
    return RawData(events, items, empty_users(), _sorted(problems))


def _add_links(items: pd.DataFrame, path: Path, problems: list[ImportProblem]) -> None:
    """Add IMDb/TMDb ids of `links.csv` to the items' attributes (in place)."""
    rows = _read_csv(path, ",", ["movieId", "imdbId", "tmdbId"])
    movie = rows.text("movieId", "movie id")
    rows.check_all_bad(path)
    problems.extend(rows.problems)
    good = rows.good()
    imdb = _as_str(rows.columns["imdbId"])[good]
    tmdb = _as_str(rows.columns["tmdbId"])[good]
    links = {m: (i, t) for m, i, t in zip(movie[good], imdb, tmdb, strict=True)}
    for iid, attrs in zip(items["item_id"], items["attributes"], strict=True):
        if iid in links:
            i, t = links[iid]
            attrs.update({k: v for k, v in (("imdb_id", i), ("tmdb_id", t)) if v})
