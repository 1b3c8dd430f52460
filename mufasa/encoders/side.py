"""Side-information features: genres (multi-hot), release year, knowledge-graph entities (TF-IDF + SVD).

All three are fitted on the item table only (no interactions), unsupervised and deterministic, so computing
them over the whole catalogue leaks nothing from the evaluation split. Every function returns float32 arrays
with one row per input item, in input order.

Entities follow latent semantic analysis (Deerwester et al., JASIS 1990): a bag of KG tokens per item ->
TF-IDF (Sparck Jones 1972; sklearn's smoothed idf) -> truncated SVD -> L2-normalised rows, i.e. a dense
"which entities does this item share with others" code whose dot products are cosine similarities. For
MovieLens-100k the KG triples come from RecBole's Freebase links (``mufasa.data.movielens.load_ml100k_kg``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfTransformer

# ---- genres ------------------------------------------------------------------------------------------------


def _is_na(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def genre_multi_hot(genres: Sequence[str | None], sep: str = "|") -> tuple[np.ndarray, list[str]]:
    """``"Action|Comedy"`` strings -> ((N, G) float32 multi-hot, vocab of G genre names sorted).

    Tokens are whitespace-stripped; empty tokens, empty strings and None/NA give no genre (an all-zero row).
    The vocabulary is sorted so the column order depends only on the set of genres, not on row order.
    """
    if isinstance(genres, str):
        raise TypeError("genres must be a sequence of strings (one per item), not a single string")
    if not sep:
        raise ValueError("sep must be a non-empty string")
    per_item: list[set[str]] = []
    for i, value in enumerate(genres):
        if _is_na(value):
            per_item.append(set())
            continue
        if not isinstance(value, str):
            raise TypeError(f"genres {i} is {value!r} ({type(value).__name__}), expected str or None")
        per_item.append({tok.strip() for tok in value.split(sep) if tok.strip()})
    vocab = sorted(set().union(*per_item)) if per_item else []
    column = {g: j for j, g in enumerate(vocab)}
    matrix = np.zeros((len(per_item), len(vocab)), dtype=np.float32)  # (N, G)
    for i, tokens in enumerate(per_item):
        matrix[i, [column[g] for g in tokens]] = 1.0
    return matrix, vocab


# ---- year --------------------------------------------------------------------------------------------------

# Decade buckets: data-independent edges, so a bucket means the same thing on every dataset. Films before
# 1950 are rare in MovieLens, hence one open bucket; the last bucket is open-ended too.
YEAR_BUCKET_EDGES: tuple[int, ...] = (1950, 1960, 1970, 1980, 1990, 2000, 2010)


def year_feature_names(edges: Sequence[int] = YEAR_BUCKET_EDGES) -> list[str]:
    """Column names of ``year_features``: ``year_z, year_missing, year_lt_<e0>, year_<e0>_<e1>, ..., year_ge_<eK>``."""
    names = ["year_z", "year_missing", f"year_lt_{edges[0]}"]
    names += [f"year_{a}_{b}" for a, b in zip(edges[:-1], edges[1:])]
    return names + [f"year_ge_{edges[-1]}"]


def year_features(years: Sequence[int | None], edges: Sequence[int] = YEAR_BUCKET_EDGES) -> np.ndarray:
    """Release years -> (N, 2 + len(edges) + 1) float32; columns as ``year_feature_names(edges)``:

    - ``year_z``: (year - mean) / std over the items that have a year (population std); 0 when missing,
      and 0 for everyone when all known years are equal (std 0);
    - ``year_missing``: 1.0 when the year is None/NaN/NA (so a 0 z-score is never mistaken for "average year");
    - one-hot coarse bucket: ``< edges[0]``, ``[edges[k], edges[k+1])``, ``>= edges[-1]``; all 0 when missing.

    The z-score gives a linear trend, the buckets let a model bend it per era; both are cheap for MFL's
    side-information head. Raises ``ValueError`` for non-integral or non-numeric years.
    """
    if list(edges) != sorted(set(edges)) or not edges:
        raise ValueError(f"edges must be strictly increasing and non-empty, got {edges}")
    values = np.full(len(years), np.nan, dtype=np.float64)
    for i, year in enumerate(years):
        if _is_na(year):
            continue
        try:
            as_float = float(year)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"year {i} is {year!r}, expected an integer year or None") from exc
        if not math.isfinite(as_float) or as_float != round(as_float):
            raise ValueError(f"year {i} is {year!r}, expected an integer year or None")
        values[i] = as_float

    known = ~np.isnan(values)
    n_cols = 2 + len(edges) + 1
    out = np.zeros((len(values), n_cols), dtype=np.float32)  # (N, 2 + B)
    if known.any():
        mean, std = values[known].mean(), values[known].std()
        if std > 0:
            out[known, 0] = (values[known] - mean) / std
    out[~known, 1] = 1.0
    # bucket k: 0 -> below edges[0]; k -> [edges[k-1], edges[k]); len(edges) -> at/after edges[-1]
    bucket = np.searchsorted(np.asarray(edges, dtype=np.float64), values[known], side="right")
    out[np.flatnonzero(known), 2 + bucket] = 1.0
    return out


# ---- knowledge-graph entities ------------------------------------------------------------------------------


def entity_tokens(triples: pd.DataFrame) -> pd.Series:
    """``relation=entity`` token per triple (e.g. ``film.film.actor=m.02vxxgs``).

    The relation prefix keeps roles apart: the same person as actor and as director are different signals.
    """
    return triples["relation"].astype(str) + "=" + triples["entity"].astype(str)


def entity_features(
    item_ids: Sequence[Hashable],
    triples: pd.DataFrame,
    dim: int = 64,
    seed: int = 0,
    min_items: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """KG triples ``[item_id, relation, entity]`` -> ((N, dim) float32 unit rows, (N,) bool mask).

    Steps: binary bag of ``relation=entity`` tokens per item (a KG is a set of facts, so duplicate triples
    count once) -> keep tokens shared by at least ``min_items`` items (a token on one item adds no item-item
    similarity, only noise and width) -> TF-IDF (l2-normalised rows, smoothed idf) fitted on the items that
    have tokens -> ``TruncatedSVD(algorithm="arpack", random_state=seed)`` -> L2-normalised rows.

    ``mask[i]`` is False (and the row all zeros) when item i has no kept token: no triples, only unshared
    entities, or triples for ids not in ``item_ids`` (those are ignored; if *no* triple matches, that is a
    ``ValueError``: a dtype mismatch, not a catalogue without entities). When the token vocabulary or the
    number of items with tokens is too small for ``dim`` SVD components, fewer are computed and the rest of
    the columns stay zero (cosine similarities are unaffected); with at most ``dim`` tokens the TF-IDF rows are
    used as they are (no SVD needed: nothing to compress). Deterministic: sorted vocabulary, seeded ARPACK
    start vector, sklearn's sign convention on the singular vectors. With *tied* singular values the basis of
    the tied subspace is not unique and BLAS rounding (CPU kernel, memory alignment) may rotate it between
    machines; item-item similarities stay identical (within float tolerance).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if min_items < 1:
        raise ValueError(f"min_items must be >= 1, got {min_items}")
    missing_cols = {"item_id", "relation", "entity"} - set(triples.columns)
    if missing_cols:
        raise ValueError(f"triples lack column(s) {sorted(missing_cols)}; need item_id, relation, entity")
    index = pd.Index(list(item_ids))
    if not index.is_unique:
        raise ValueError("item_ids must be unique")
    n = len(index)
    features = np.zeros((n, dim), dtype=np.float32)  # (N, dim)
    mask = np.zeros(n, dtype=bool)

    clean = triples.dropna(subset=["item_id", "relation", "entity"])
    rows = index.get_indexer(clean["item_id"])
    known = rows >= 0
    if len(clean) and not known.any():  # almost always ids of different dtypes (e.g. "50" vs 50)
        raise ValueError(
            f"no triple's item_id matches item_ids (triples: {clean['item_id'].dtype}, items: {index.dtype}); "
            "convert both to the same type"
        )
    facts = pd.DataFrame({"row": rows[known], "token": entity_tokens(clean[known]).to_numpy()}).drop_duplicates()
    if facts.empty:
        return features, mask
    # keep tokens shared by enough items
    support = facts.groupby("token")["row"].nunique()
    facts = facts[facts["token"].isin(support.index[support >= min_items])]
    if facts.empty:
        return features, mask

    vocab = np.sort(facts["token"].unique())  # sorted -> column order independent of triple order
    cols = np.searchsorted(vocab, facts["token"].to_numpy())
    item_rows = np.sort(facts["row"].unique())  # items that have at least one kept token
    local = np.searchsorted(item_rows, facts["row"].to_numpy())
    # Canonical (row, column) order: the CSR arrays, and so every float sum inside TF-IDF and ARPACK, are then
    # bit-identical whatever the order of the input triples (with near-equal singular values, a different
    # summation order rotates the SVD basis).
    order = np.lexsort((cols, local))
    counts = sp.csr_matrix(
        (np.ones(len(facts), dtype=np.float64), (local[order], cols[order])), shape=(len(item_rows), len(vocab))
    )  # (M, V) binary
    counts.sort_indices()
    tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True).fit_transform(counts)  # (M, V)

    n_tokens = len(vocab)
    if n_tokens <= dim:
        dense = tfidf.toarray()  # (M, V), V <= dim: already small, SVD would only rotate it
    else:
        # ARPACK needs k < min(M, V); the rank is at most min(M, V) anyway
        k = min(dim, len(item_rows) - 1, n_tokens - 1)
        if k < 1:  # one item with tokens (min_items=1): nothing to compare it with; code it as e_0
            dense = np.ones((1, 1))
        else:
            svd = TruncatedSVD(n_components=k, algorithm="arpack", random_state=seed)
            dense = svd.fit_transform(tfidf)  # (M, k)
    norms = np.linalg.norm(dense, axis=1)
    usable = norms > 1e-12  # a row can vanish if all its tokens fall outside the kept components
    dense = dense[usable] / norms[usable, None]
    target = item_rows[usable]
    features[target, : dense.shape[1]] = dense.astype(np.float32)
    mask[target] = True
    return features, mask
