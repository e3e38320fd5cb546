"""Content-based recommendation from item text (TF-IDF profiles).

Each item is the document "title text cat_<category> …" (categories become
single tokens so that "cat_drama" never matches the word "drama"). Item
vectors are L2-normalised TF-IDF rows; a user's profile is the mean of the
vectors of the items in their history row, weighted by the row's values, and
an item's score is its cosine with the profile. Only text is needed, so items
nobody has interacted with are recommended too, and any user is scored from
the row alone.

The state keeps the vocabulary and idf, not a fitted scikit-learn object, so it
saves like any other model; `vectorize` rebuilds the same transform to embed
the text of a new item after `load`.

`encoder = "minilm"` replaces the TF-IDF rows by sentence embeddings of
"title. text. Categories: …" (all-MiniLM-L6-v2 shipped in a package, the
`neural` extra; `sieve.models.semantic`): the rows are then dense unit
vectors, one column per dimension, and everything above works unchanged
(profiles, cosines, the content index); texts that share meaning but no
word now match. The funnel's content source reads `sources.content_terms`
columns of a profile: raise it to 384 for this encoder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import Recommender, top_k
from sieve.types import ItemList


@dataclasses.dataclass(frozen=True)
class ContentConfig(Config):
    """ContentTFIDF hyperparameters.

    - `min_df`: drop terms found in fewer items than this.
    - `max_df`: drop terms found in more than this fraction of items.
    - `max_features`: keep only the most frequent terms (None = all).
    - `ngram_max`: longest word n-gram used as a term (1 = single words).
    - `sublinear_tf`: use 1 + log(tf) instead of raw term counts.
    - `stop_words`: "english" removes common English words; "none" keeps all.
    - `encoder`: "tfidf" (the terms above) or "minilm" (sentence embeddings,
      needs the `neural` extra; the TF-IDF settings are then unused).
    """

    min_df: int = 1
    max_df: float = 1.0
    max_features: int | None = None
    ngram_max: int = 1
    sublinear_tf: bool = True
    stop_words: Literal["english", "none"] = "english"
    encoder: Literal["tfidf", "minilm"] = "tfidf"

    def validate(self) -> None:
        if self.min_df < 1:
            raise ConfigError("ContentConfig.min_df must be >= 1")
        if not 0 < self.max_df <= 1:
            raise ConfigError("ContentConfig.max_df must be in (0, 1]")
        if self.max_features is not None and self.max_features < 1:
            raise ConfigError("ContentConfig.max_features must be >= 1")
        if self.ngram_max < 1:
            raise ConfigError("ContentConfig.ngram_max must be >= 1")


@dataclasses.dataclass(frozen=True)
class ContentState:
    """Item TF-IDF rows (items × terms, L2-normalised), the terms in column
    order, and their idf weights."""

    item_matrix: sp.csr_matrix
    terms: NDArray[np.object_]
    idf: NDArray[np.float64]


def category_token(category: str) -> str:
    """The single token standing for a category, e.g. "Sci-Fi" -> "cat_sci_fi"."""
    return "cat_" + re.sub(r"\W+", "_", category.strip().lower()).strip("_")


def item_document(title: str, text: str, categories: Iterable[str] = ()) -> str:
    """The text indexed for one item: title, body and category tokens."""
    cats = " ".join(category_token(c) for c in categories if str(c).strip())
    return " ".join(part for part in (str(title), str(text), cats) if part)


def item_documents(
    dataset: Dataset, document: Callable[[str, str, Iterable[str]], str] = item_document
) -> list[str]:
    """Every item of `dataset` as one text, in index order, made by `document`
    from its title, body and categories (missing text reads as empty)."""
    items = dataset.items
    return [
        document(t, x, c)
        for t, x, c in zip(
            items["title"].fillna("").astype(str),
            items["text"].fillna("").astype(str),
            dataset.item_categories(),
            strict=True,
        )
    ]


class ContentTFIDF(Recommender[ContentConfig, ContentState]):
    """TF-IDF content model: cosine between item text and the user's profile."""

    name = "content"
    config_class = ContentConfig
    state_class = ContentState

    def __init__(self, config: ContentConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._counter_cache: tuple[ContentState, CountVectorizer | None] | None = None

    def _fit(self, dataset: Dataset) -> ContentState:
        if self.config.encoder == "minilm":
            return self._fit_semantic(dataset)
        docs = item_documents(dataset)
        cfg = self.config
        vectorizer = TfidfVectorizer(
            lowercase=True,
            stop_words=_stop_words(cfg),
            ngram_range=(1, cfg.ngram_max),
            min_df=cfg.min_df,
            max_df=cfg.max_df,
            max_features=cfg.max_features,
            sublinear_tf=cfg.sublinear_tf,
        )
        try:
            vectorizer.fit(docs)
        except ValueError as exc:  # no item has any indexable text
            if "empty vocabulary" not in str(exc):
                raise
            terms = np.array([], dtype=object)
            idf = np.array([], dtype=np.float64)
        else:
            vocab: dict[str, int] = vectorizer.vocabulary_
            terms = np.empty(len(vocab), dtype=object)
            for term, col in vocab.items():
                terms[col] = term
            idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        matrix = _tfidf(self._counter(terms), docs, idf, cfg.sublinear_tf)
        return ContentState(item_matrix=matrix, terms=terms, idf=idf)

    def _fit_semantic(self, dataset: Dataset) -> ContentState:
        from sieve.models.semantic import DIM, encode, semantic_document

        docs = item_documents(dataset, semantic_document)
        terms = np.array([f"dim{k}" for k in range(DIM)], dtype=object)
        return ContentState(
            item_matrix=sp.csr_matrix(encode(docs)),
            terms=terms,
            idf=np.ones(DIM, dtype=np.float64),
        )

    def _counter(self, terms: NDArray[np.object_]) -> CountVectorizer | None:
        if len(terms) == 0:
            return None
        return CountVectorizer(
            lowercase=True,
            stop_words=_stop_words(self.config),
            ngram_range=(1, self.config.ngram_max),
            vocabulary=[str(t) for t in terms],
        )

    def vectorize(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows (L2-normalised) of new documents in the fitted term
        space; build each document with `item_document` (with the "minilm"
        encoder: their sentence embeddings)."""
        state = self.state
        if self.config.encoder == "minilm":
            from sieve.models.semantic import encode

            return sp.csr_matrix(encode([_semantic_text(t) for t in texts]))
        if self._counter_cache is None or self._counter_cache[0] is not state:
            self._counter_cache = (state, self._counter(state.terms))
        counter = self._counter_cache[1]
        return _tfidf(counter, list(texts), state.idf, self.config.sublinear_tf)

    @property
    def n_items(self) -> int:
        return int(self.state.item_matrix.shape[0])

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        x = self.state.item_matrix
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        profiles = sp.csr_matrix(rows @ x)
        norms = np.sqrt(np.asarray(profiles.multiply(profiles).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        profiles = sp.csr_matrix(sp.diags(1.0 / norms) @ profiles)
        return np.asarray((profiles @ x.T).toarray(), dtype=np.float32)

    def similar_items(self, item: int, n: int = 10) -> ItemList:
        """Items by cosine of their TF-IDF rows (only positive similarities)."""
        self._check_items(np.array([item]))
        x = self.state.item_matrix
        sims = np.asarray((x @ x[item].T).toarray(), dtype=np.float32).ravel()
        sims[item] = -np.inf
        sims[sims <= 0] = -np.inf
        idx, val = top_k(sims[None, :], n)
        keep = idx[0] >= 0
        return ItemList(idx[0][keep], val[0][keep])

    def item_vectors(self) -> NDArray[np.float32]:
        """Dense TF-IDF rows (items × terms): mind the memory on large
        vocabularies; `state.item_matrix` is the sparse form."""
        return np.asarray(self.state.item_matrix.toarray(), dtype=np.float32)


def _semantic_text(document: str) -> str:
    """An `item_document` made readable for the sentence encoder: category
    tokens back to words ("cat_sci_fi" -> "sci fi")."""
    return re.sub(r"\bcat_(\w+)", lambda m: m.group(1).replace("_", " "), document)


def _stop_words(cfg: ContentConfig) -> str | None:
    return None if cfg.stop_words == "none" else cfg.stop_words


def _tfidf(
    counter: CountVectorizer | None,
    docs: list[str],
    idf: NDArray[np.float64],
    sublinear_tf: bool,
) -> sp.csr_matrix:
    """The TfidfVectorizer transform from term counts: (1+log) tf, × idf, L2."""
    if counter is None:
        return sp.csr_matrix((len(docs), 0), dtype=np.float32)
    counts = sp.csr_matrix(counter.transform(docs), dtype=np.float64)
    if sublinear_tf:
        counts.data = 1.0 + np.log(counts.data)
    counts.data *= idf[counts.indices]
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    counts.data /= np.repeat(norms, np.diff(counts.indptr))
    return sp.csr_matrix(counts, dtype=np.float32)
