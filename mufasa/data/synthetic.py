"""Synthetic recommendation data with planted multi-scale interest structure.

Why this exists
---------------
Unit tests, CI and long-sequence benchmarks need data that (a) is generated
in seconds without any download, (b) is byte-for-byte reproducible from a
seed, and (c) contains *known* structure, so that a test can assert that a
model actually learned something instead of merely "the loss went down".
Every signal a MUFASA component is meant to exploit is planted on purpose:

* **Text** -- titles are built from genre vocabularies (and cluster-preferred
  words inside a genre), so a text encoder can recover genre and cluster.
* **Images** -- the genre fixes the background hue and the fine cluster fixes
  a drawn shape, so an image encoder can recover both as well.
* **Short range** -- a user's history is a sequence of coherent *blocks*; within
  a block items come from one fine interest cluster, with an occasional step
  to a neighbouring cluster of the same genre.
* **Long range** -- with probability ``replay_prob`` a new block replays an
  earlier block of the same user verbatim (same items, same order).  Only a
  model that can attend far back (e.g. sparse attention over long sequences)
  can predict such a block from its first few items.
* **Coarse scale** -- each user has 2-4 preferred genres with Dirichlet
  weights, so genre-level taste is stable over the whole history.

Generative process
------------------
Items ``1..n_items`` are split as evenly as possible over
``n_genres * clusters_per_genre`` global clusters (cluster ``c`` belongs to
genre ``c // clusters_per_genre``).  About a quarter of the items get a second
genre.  Inside each cluster items have a Zipf-like popularity.  Release years
are drawn around a per-cluster centre year.

For every user we draw a length (log-uniform in ``[min_events, max_events]``),
a set of preferred genres and weights, then a run of candidate blocks with
Geometric(1/mean_block_len) lengths.  Each block is either fresh (genre from
the user's weights, local cluster uniform, a +/-1 random walk over the
genre's clusters with per-step probability ``within_block_drift``, items
drawn by inverse CDF from the current cluster) or a replay of a uniformly
chosen earlier block.  Blocks are laid end to end and the one crossing the
user's length is truncated.  Timestamps use minute-scale gaps inside blocks,
hour-to-day gaps between blocks and ~2% same-second ties, and are compressed
per user when necessary so that nothing lies at or after 2025-01-01.

Everything is vectorised over *all* blocks/events at once (no per-block Python
loop), so 10M events take seconds and memory stays at a few int64 columns.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

__all__ = [
    "stand_in_features",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate",
    "render_item_image",
    "write_images",
    "write_files",
    "genre_name",
    "genre_vocabulary",
    "FILLER_WORDS",
    "END_TIMESTAMP",
]

# 2025-01-01T00:00:00Z; real logs never contain future events, and downstream
# temporal splits assume all timestamps are in the past.
END_TIMESTAMP: int = 1_735_689_600

# Share of items with a second genre; MovieLens-like catalogues are mostly
# single-genre with a sizeable multi-genre minority.
SECOND_GENRE_PROB: float = 0.25
# Zipf exponent of within-cluster popularity: 1.0 gives a realistic head/tail
# without letting one item dominate a cluster.
ZIPF_EXPONENT: float = 1.0
# Dirichlet concentration of a user's genre weights: 1.0 is uniform on the
# simplex, so both single-genre-dominated and balanced users occur.
DIRICHLET_ALPHA: float = 1.0
# Year range of the catalogue and spread of years around a cluster's centre.
YEAR_MIN, YEAR_MAX, YEAR_SPREAD = 1950, 2024, 6.0
# Within-block gaps: minutes (a session of consecutive consumption).
WITHIN_GAP_MIN_S, WITHIN_GAP_MEAN_S = 20.0, 240.0
# Between-block gaps: log-uniform hours to days (a new session / new mood).
BETWEEN_GAP_MIN_S, BETWEEN_GAP_MAX_S = 3_600.0, 3 * 86_400.0
# Real logs contain same-second duplicates (batch imports, double clicks);
# sorting code must cope with them, so plant some.
TIE_PROB: float = 0.02
# Users start at different times so that global temporal splits are not
# trivially aligned with user starts.
USER_START_SPREAD_S: int = 180 * 86_400

# Named genres and their title vocabularies (>= 12 words each, pairwise
# disjoint, disjoint from FILLER_WORDS).  Words are listed so that slicing
# ``vocab[j::clusters_per_genre]`` gives each cluster a distinct word subset.
_NAMED_GENRES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Space", ("Star", "Galaxy", "Orbit", "Nebula", "Comet", "Rocket", "Planet", "Cosmos",
               "Asteroid", "Nova", "Eclipse", "Voyager", "Quasar", "Pulsar", "Lunar", "Meteor")),
    ("Romance", ("Love", "Heart", "Kiss", "Wedding", "Darling", "Valentine", "Embrace", "Desire",
                 "Sweetheart", "Passion", "Honeymoon", "Rose", "Promise", "Forever", "Bride", "Crush")),
    ("Horror", ("Blood", "Scream", "Ghost", "Terror", "Zombie", "Haunting", "Curse", "Demon",
                "Grave", "Nightmare", "Crypt", "Phantom", "Skull", "Vampire", "Fear", "Massacre")),
    ("Comedy", ("Laugh", "Joke", "Prank", "Clown", "Giggle", "Hijinks", "Blunder", "Silly",
                "Goofball", "Party", "Chaos", "Roommates", "Vacation", "Wacky", "Banana", "Mischief")),
    ("Western", ("Cowboy", "Saloon", "Outlaw", "Sheriff", "Canyon", "Ranch", "Stagecoach", "Frontier",
                 "Bandit", "Revolver", "Desert", "Mustang", "Rodeo", "Gold", "Prairie", "Gunslinger")),
    ("Mystery", ("Clue", "Detective", "Secret", "Riddle", "Case", "Cipher", "Enigma", "Alibi",
                 "Suspect", "Witness", "Puzzle", "Inspector", "Shadow", "Motive", "Evidence", "Manor")),
    ("Fantasy", ("Dragon", "Wizard", "Kingdom", "Sword", "Quest", "Elf", "Spell", "Throne",
                 "Castle", "Knight", "Sorcerer", "Prophecy", "Goblin", "Realm", "Amulet", "Unicorn")),
    ("War", ("Battle", "Soldier", "Siege", "Trench", "Platoon", "Bomber", "Frontline", "Regiment",
             "Invasion", "Victory", "Sniper", "Armistice", "Tank", "Fleet", "Garrison", "Medal")),
)
# Shared, genre-neutral words: realistic noise that a text model must learn
# to ignore.
FILLER_WORDS: tuple[str, ...] = ("The", "Last", "Return", "Night", "Legend", "Day", "Story", "Beyond")
# Fixed-length syllables make generated pseudo-words uniquely decodable, so
# vocabularies of generic genres never collide with each other.
_SYLLABLES: tuple[str, ...] = ("ka", "lo", "ri", "zu", "me", "ta", "vo", "ni",
                               "sa", "du", "pe", "xi", "bo", "fa", "gu", "ye")
_GENERIC_VOCAB_SIZE = 16
_ROMAN = ("", "", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X",
          "XI", "XII", "XIII", "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX")
_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "hstripes", "vstripes", "diamond", "cross", "ring")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator; defaults give a small, fast, test-sized dataset."""

    # A few hundred users: enough for stable statistics in tests, seconds to train on.
    n_users: int = 300
    # 600 items = 25 per cluster at default dims: clusters are big enough to have a popularity tail.
    n_items: int = 600
    # Six genres is the number of distinctly named vocabularies a reader can eyeball.
    n_genres: int = 6
    # Four fine clusters per genre give a second, finer scale of interest below genre.
    clusters_per_genre: int = 4
    # 20 events per user is the usual "k-core"-style minimum of public datasets.
    min_events: int = 20
    # 200 keeps default histories short for tests; benchmarks raise it for long sequences.
    max_events: int = 200
    # ~12 items per session-like block: long enough to be learnable, short vs. histories.
    mean_block_len: float = 12.0
    # 0.3 lets a block wander to adjacent clusters (graded similarity) without losing coherence.
    within_block_drift: float = 0.3
    # 0.15 makes replays common enough to matter but rare enough that recency alone is not enough.
    replay_prob: float = 0.15
    # Long-range test targets (0 = off): the last ``tail_replay`` events of every user replay a segment of that
    # user's own history that ended at least ``tail_replay_gap`` events before the replay starts, so the
    # validation and test targets (the last two events) are predictable only by looking that far back. Users too
    # short for it (< 2 * tail_replay + tail_replay_gap events) are left as they are.
    tail_replay: int = 0
    tail_replay_gap: int = 256
    # 32x32 RGB is the smallest size at which shapes stay recognisable; keeps PNGs tiny.
    image_size: int = 32
    # 2020-09-13: well before END_TIMESTAMP, leaving years of room for long histories.
    start_timestamp: int = 1_600_000_000
    # Fixed seed so the default dataset is identical everywhere.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise ValueError("n_users must be >= 1")
        if self.n_genres < 1 or self.clusters_per_genre < 1:
            raise ValueError("n_genres and clusters_per_genre must be >= 1")
        if self.n_items < self.n_genres * self.clusters_per_genre:
            raise ValueError("n_items must be >= n_genres * clusters_per_genre so no cluster is empty")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError("need 1 <= min_events <= max_events")
        if self.mean_block_len < 1.0:
            raise ValueError("mean_block_len must be >= 1")
        if not 0.0 <= self.within_block_drift <= 1.0:
            raise ValueError("within_block_drift must be in [0, 1]")
        if not 0.0 <= self.replay_prob <= 1.0:
            raise ValueError("replay_prob must be in [0, 1]")
        if self.tail_replay < 0 or self.tail_replay == 1 or self.tail_replay_gap < 0:
            raise ValueError("tail_replay must be 0 (off) or >= 2, tail_replay_gap >= 0")
        if self.image_size < 4:
            raise ValueError("image_size must be >= 4")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        # Each event needs >= 1 s of room (ties aside) before END_TIMESTAMP.
        if self.start_timestamp < 0 or 4 * self.max_events > END_TIMESTAMP - self.start_timestamp:
            raise ValueError("start_timestamp leaves too little time before 2025-01-01 for max_events")


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames with == is ambiguous
class SyntheticDataset:
    """Generated data.  ``items`` rows are ordered by ``item_id`` (1..n_items)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    item_genre: np.ndarray
    item_cluster: np.ndarray
    genre_names: tuple[str, ...]


def genre_name(g: int) -> str:
    """Readable name of genre ``g`` (0-based); generic ``GenreK`` past the named ones."""
    return _NAMED_GENRES[g][0] if g < len(_NAMED_GENRES) else f"Genre{g + 1}"


def genre_vocabulary(g: int) -> tuple[str, ...]:
    """Title words of genre ``g``; pseudo-words for generic genres."""
    if g < len(_NAMED_GENRES):
        return _NAMED_GENRES[g][1]
    words = []
    for w in range(_GENERIC_VOCAB_SIZE):
        n = (g - len(_NAMED_GENRES)) * _GENERIC_VOCAB_SIZE + w
        digits = []
        # At least 3 syllables so the words look like names, not abbreviations.
        while n > 0 or len(digits) < 3:
            digits.append(n % len(_SYLLABLES))
            n //= len(_SYLLABLES)
        words.append("".join(_SYLLABLES[d] for d in digits).capitalize())
    return tuple(words)


def _cluster_words(vocab: tuple[str, ...], local_cluster: int, clusters_per_genre: int) -> tuple[str, ...]:
    # Interleaved slices give every cluster its own word subset, so titles
    # separate clusters (not just genres) whenever the vocabulary is big enough.
    if clusters_per_genre <= len(vocab):
        return vocab[local_cluster::clusters_per_genre]
    return (vocab[local_cluster % len(vocab)],)


# --------------------------------------------------------------------------- items


def _make_items(rng: np.random.Generator, cfg: SyntheticConfig):
    n, n_genres, cpg = cfg.n_items, cfg.n_genres, cfg.clusters_per_genre
    n_clusters = n_genres * cpg
    # Round-robin then shuffle: every cluster (hence genre) gets an equal share +/- 1.
    item_cluster = rng.permutation(np.arange(n, dtype=np.int64) % n_clusters)
    item_genre = item_cluster // cpg

    if n_genres > 1:
        has_second = rng.random(n) < SECOND_GENRE_PROB
        second = (item_genre + rng.integers(1, n_genres, size=n)) % n_genres
        second = np.where(has_second, second, -1)
    else:
        second = np.full(n, -1, dtype=np.int64)

    # Year correlated with cluster: e.g. a "1970s space opera" cluster.
    centre = rng.uniform(YEAR_MIN + 2 * YEAR_SPREAD, YEAR_MAX - 2 * YEAR_SPREAD, size=n_clusters)
    year = np.clip(np.rint(centre[item_cluster] + rng.normal(0.0, YEAR_SPREAD, size=n)), YEAR_MIN, YEAR_MAX)
    year = year.astype(np.int64)

    # Items grouped by cluster, random order inside: that order is the popularity rank.
    order = np.lexsort((rng.random(n), item_cluster))
    sorted_cluster = item_cluster[order]
    counts = np.bincount(item_cluster, minlength=n_clusters)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - np.repeat(starts, counts)
    weight = (rank + 1.0) ** -ZIPF_EXPONENT
    cs = np.cumsum(weight)
    before = np.repeat(cs[starts] - weight[starts], counts)
    total = np.repeat(np.bincount(sorted_cluster, weights=weight, minlength=n_clusters), counts)
    cdf = (cs - before) / total
    cluster_end = starts + counts
    cdf[cluster_end - 1] = 1.0
    # Offsetting each cluster's CDF by its index lets one searchsorted serve all clusters.
    global_cdf = sorted_cluster + cdf

    titles = _make_titles(rng, cfg, item_cluster, second, year)
    genres = [
        genre_name(int(g)) if s < 0 else f"{genre_name(int(g))}|{genre_name(int(s))}"
        for g, s in zip(item_genre, second)
    ]
    width = max(6, len(str(n)))
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype=np.int64),
            "title": pd.Series(titles, dtype=object),
            "genres": pd.Series(genres, dtype=object),
            "year": pd.array(year, dtype="Int64"),
            "image_path": pd.Series([f"item_{i:0{width}d}.png" for i in range(1, n + 1)], dtype=object),
        }
    )
    return items, item_genre, item_cluster, order, global_cdf, cluster_end


def _make_titles(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    item_cluster: np.ndarray,
    second: np.ndarray,
    year: np.ndarray,
) -> list[str]:
    n, cpg = cfg.n_items, cfg.clusters_per_genre
    # Draw all randomness up front (vectorised, fixed count) so determinism does
    # not depend on which branches the Python loop takes.
    three = rng.random(n) < 0.5
    a = rng.random((n, 3))
    b = rng.random((n, 2))
    vocabs = [genre_vocabulary(g) for g in range(cfg.n_genres)]
    index_of = [{w: i for i, w in enumerate(v)} for v in vocabs]
    cwords = [[_cluster_words(vocabs[g], j, cpg) for j in range(cpg)] for g in range(cfg.n_genres)]

    titles: list[str] = []
    seen: dict[str, int] = {}
    for i in range(n):
        g, j = divmod(int(item_cluster[i]), cpg)
        vocab, pref = vocabs[g], cwords[g][j]
        # The head word always comes from the cluster's preferred words: the
        # strongest, cleanest text signal.
        w1 = pref[int(a[i, 0] * len(pref))]
        w2 = pref[int(a[i, 1] * len(pref))] if b[i, 0] < 0.6 else vocab[int(a[i, 1] * len(vocab))]
        if w2 == w1:
            w2 = vocab[(index_of[g][w1] + 1) % len(vocab)]
        words = [w1, w2]
        if three[i]:
            # Secondary-genre words only in 3-word titles, so the primary genre
            # always keeps the majority of genre-bearing words.
            if second[i] >= 0 and b[i, 1] < 0.5:
                sv = vocabs[int(second[i])]
                words.append(sv[int(a[i, 2] * len(sv))])
            elif b[i, 1] < 0.75:
                words.insert(0, FILLER_WORDS[int(a[i, 2] * len(FILLER_WORDS))])
            else:
                w3 = vocab[int(a[i, 2] * len(vocab))]
                words.append(w3 if w3 not in words else vocab[(index_of[g][w3] + 2) % len(vocab)])
        base = " ".join(words)
        key = f"{base} ({year[i]})"
        k = seen.get(key, 0) + 1
        seen[key] = k
        if k == 1:
            titles.append(key)
        else:
            suffix = _ROMAN[k] if k < len(_ROMAN) else f"Part {k}"
            titles.append(f"{base} {suffix} ({year[i]})")
    return titles


# --------------------------------------------------------------------------- users


def _user_lengths(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    # Log-uniform: many short histories, a long tail of heavy users, as in real logs.
    raw = np.exp(rng.uniform(np.log(cfg.min_events), np.log(cfg.max_events + 1), size=cfg.n_users))
    return np.clip(np.floor(raw).astype(np.int64), cfg.min_events, cfg.max_events)


def _simulate(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    lengths: np.ndarray,
    item_order: np.ndarray,
    global_cdf: np.ndarray,
    cluster_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (0-based item index, timestamp) per event, users laid out in order."""
    n_users, n_genres, cpg = cfg.n_users, cfg.n_genres, cfg.clusters_per_genre

    # --- user tastes: k preferred genres stored in the first k columns.
    k_max = min(4, n_genres)
    k = rng.integers(min(2, n_genres), k_max + 1, size=n_users)
    pref = np.argsort(rng.random((n_users, n_genres)), axis=1)[:, :k_max]
    w = rng.standard_gamma(DIRICHLET_ALPHA, size=(n_users, k_max))
    w[np.arange(k_max)[None, :] >= k[:, None]] = 0.0
    cumw = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)

    # --- candidate blocks: generously over-provisioned so a user's blocks almost
    # always cover their length; the rare shortfall is fixed up below.
    n_cand = np.ceil(2.0 * lengths / cfg.mean_block_len).astype(np.int64) + 8
    n_blocks = int(n_cand.sum())
    cand_start = np.concatenate(([0], np.cumsum(n_cand)[:-1]))
    cand_start_rep = np.repeat(cand_start, n_cand)
    local_idx = np.arange(n_blocks, dtype=np.int64) - cand_start_rep
    gen_len = rng.geometric(1.0 / cfg.mean_block_len, size=n_blocks).astype(np.int64)
    is_replay = (rng.random(n_blocks) < cfg.replay_prob) & (local_idx > 0)
    src = cand_start_rep + np.floor(rng.random(n_blocks) * local_idx).astype(np.int64)
    del cand_start_rep, local_idx
    # Resolve replay-of-replay chains to the fresh block they ultimately copy
    # (pointer jumping: O(log chain length) vectorised passes).
    origin = np.where(is_replay, src, np.arange(n_blocks, dtype=np.int64))
    del src
    while True:
        nxt = origin[origin]
        if np.array_equal(nxt, origin):
            break
        origin = nxt
    block_len = gen_len[origin]
    del gen_len

    totals = np.add.reduceat(block_len, cand_start)
    short = np.flatnonzero(totals < lengths)
    if short.size:
        # The last candidate is never a replay source, so it can be stretched
        # into a fresh block covering the deficit without touching other blocks.
        last = cand_start[short] + n_cand[short] - 1
        is_replay[last] = False
        origin[last] = last
        block_len[last] += lengths[short] - totals[short]

    start_global = np.cumsum(block_len) - block_len
    start_in_user = start_global - np.repeat(start_global[cand_start], n_cand)
    len_rep = np.repeat(lengths, n_cand)
    keep = start_in_user < len_rep
    kept = np.flatnonzero(keep)
    kept_len = np.minimum(block_len[kept], len_rep[kept] - start_in_user[kept])
    cand_to_kept = np.cumsum(keep) - 1
    del start_global, start_in_user, len_rep, keep, block_len
    n_kept = kept.size
    kept_user = np.searchsorted(cand_start, kept, side="right") - 1
    kept_replay = is_replay[kept]
    kept_origin = cand_to_kept[origin[kept]]
    del is_replay, origin, cand_to_kept, kept

    # --- fresh-block interest: genre from the user's weights, local cluster uniform.
    u = rng.random(n_kept)
    col = (u[:, None] >= cumw[kept_user]).sum(axis=1)
    col = np.minimum(col, k[kept_user] - 1)  # float round-off guard
    block_genre = pref[kept_user, col]
    block_local = rng.integers(0, cpg, size=n_kept)
    del u, col

    # --- events
    n_events = int(lengths.sum())
    idx_dtype = np.int32 if n_kept < 2**31 - 1 else np.int64
    ev_block = np.repeat(np.arange(n_kept, dtype=idx_dtype), kept_len)
    blk_ev_start = np.concatenate(([0], np.cumsum(kept_len)[:-1]))

    # Random walk over the genre's clusters (ring adjacency), restarted per block.
    local_ev = block_local[ev_block]
    if cfg.within_block_drift > 0 and cpg > 1:
        steps = np.where(rng.random(n_events) < cfg.within_block_drift,
                         np.where(rng.random(n_events) < 0.5, -1, 1), 0).astype(np.int8)
        steps[blk_ev_start] = 0
        cs = np.cumsum(steps, dtype=np.int64)
        del steps
        cs -= cs[blk_ev_start][ev_block]
        local_ev = np.mod(local_ev + cs, cpg)
        del cs
    cluster_ev = block_genre[ev_block] * cpg + local_ev
    del local_ev

    # Inverse-CDF draw inside each event's cluster, all clusters in one searchsorted.
    pos = np.searchsorted(global_cdf, cluster_ev + rng.random(n_events), side="right")
    # c + u can round up to c + 1 in floating point; clamp to the cluster's last item.
    pos = np.minimum(pos, cluster_end[cluster_ev] - 1)
    del cluster_ev
    item_idx = item_order[pos]
    del pos

    # Replays copy their origin block's events position by position; origins
    # are fresh and lie earlier, hence are complete and already drawn.
    rep_ev = np.flatnonzero(kept_replay[ev_block])
    if rep_ev.size:
        rb = ev_block[rep_ev]
        src_ev = blk_ev_start[kept_origin[rb]] + (rep_ev - blk_ev_start[rb])
        item_idx[rep_ev] = item_idx[src_ev]
        del rb, src_ev
    del rep_ev

    # --- timestamps
    gaps = WITHIN_GAP_MIN_S + rng.exponential(WITHIN_GAP_MEAN_S - WITHIN_GAP_MIN_S, size=n_events)
    gaps[rng.random(n_events) < TIE_PROB] = 0.0
    gaps[blk_ev_start] = np.exp(rng.uniform(np.log(BETWEEN_GAP_MIN_S), np.log(BETWEEN_GAP_MAX_S), size=n_kept))
    user_ev_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps[user_ev_start] = 0.0
    spread = min(USER_START_SPREAD_S, (END_TIMESTAMP - cfg.start_timestamp) // 2)
    user_t0 = cfg.start_timestamp + np.floor(rng.uniform(0, spread, size=n_users)).astype(np.int64)
    # Heavy users would overrun 2025-01-01; squeeze their gaps proportionally.
    # One second per event is reserved for the ">= 1 s" rounding below.
    budget = (END_TIMESTAMP - 1 - user_t0 - lengths).astype(np.float64)
    total = np.add.reduceat(gaps, user_ev_start)
    scale = np.minimum(1.0, np.maximum(budget, 0.0) / np.maximum(total, 1.0))
    positive = gaps > 0
    gaps *= np.repeat(scale, lengths)
    igaps = np.floor(gaps).astype(np.int64)
    del gaps
    np.maximum(igaps, positive, out=igaps)  # keep planted ties as the only ties-by-design
    del positive
    ts = np.cumsum(igaps)
    del igaps
    ts += np.repeat(user_t0 - ts[user_ev_start], lengths)
    return item_idx.astype(np.int64, copy=False), ts


def tail_replay_sources(config: SyntheticConfig, lengths: np.ndarray) -> np.ndarray:
    """(U,) the event index (within each user's history) where the segment that user's tail replays starts;
    -1 for users too short to have one. Drawn from its own stream: the rest of the data does not change."""
    rng = np.random.default_rng([config.seed, 0x7A11])
    r, gap = config.tail_replay, config.tail_replay_gap
    room = lengths - 2 * r - gap  # the source may start at 0 .. room
    draw = np.floor(rng.random(len(lengths)) * (np.maximum(room, 0) + 1)).astype(np.int64)
    return np.where(room >= 0, draw, -1)


def _plant_tail_replays(config: SyntheticConfig, lengths: np.ndarray, item_idx: np.ndarray) -> None:
    """Copy each user's source segment (:func:`tail_replay_sources`) over its last ``tail_replay`` events."""
    r = config.tail_replay
    src = tail_replay_sources(config, lengths)
    users = np.flatnonzero(src >= 0)
    if not users.size:
        return
    start = np.concatenate(([0], np.cumsum(lengths)[:-1]))[users]
    offs = np.arange(r)
    dst = (start + lengths[users] - r)[:, None] + offs
    item_idx[dst.ravel()] = item_idx[((start + src[users])[:, None] + offs).ravel()]


def generate(config: SyntheticConfig) -> SyntheticDataset:
    """Generate a dataset; identical output for identical configs."""
    rng = np.random.default_rng(config.seed)
    items, item_genre, item_cluster, order, global_cdf, cluster_end = _make_items(rng, config)
    lengths = _user_lengths(rng, config)
    item_idx, ts = _simulate(rng, config, lengths, order, global_cdf, cluster_end)
    item_idx += 1  # 0-based index -> 1-based item_id, in place to avoid another 8 B/event copy
    if config.tail_replay:
        _plant_tail_replays(config, lengths, item_idx)
    interactions = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, config.n_users + 1, dtype=np.int64), lengths),
            "item_id": item_idx,
            "timestamp": ts,
        },
        copy=False,
    )
    return SyntheticDataset(
        interactions=interactions,
        items=items,
        item_genre=item_genre,
        item_cluster=item_cluster,
        genre_names=tuple(genre_name(g) for g in range(config.n_genres)),
    )


# --------------------------------------------------------------------------- images


def _hue(genre: int) -> float:
    # Van der Corput sequence: any prefix of genres gets maximally spread hues,
    # without the renderer having to know n_genres.
    h, denom, g = 0.0, 1.0, genre
    while g:
        denom *= 2.0
        h += (g & 1) / denom
        g >>= 1
    return h


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def render_item_image(item_genre: int, item_cluster: int, item_id: int, size: int, seed: int) -> np.ndarray:
    """Render an item's (size, size, 3) uint8 image.

    The genre sets the background hue and the (darker, same-hue) foreground; the
    global cluster picks the shape (``cluster % 8``, so all clusters of one genre
    differ as long as clusters_per_genre <= 8); per-item jitter and pixel noise
    keep items of one cluster distinct.
    """
    rng = np.random.default_rng([seed, item_genre, item_cluster, item_id])
    hue = _hue(item_genre)
    bg = _rgb(hue, 0.6, 0.9)
    fg = _rgb(hue, 0.9, 0.3)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cx, cy = (size - 1) / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    r = size * rng.uniform(0.28, 0.36)
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = _SHAPES[item_cluster % len(_SHAPES)]
    if shape == "circle":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg)
    elif shape == "cross":
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fg)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fg)
    elif shape == "ring":
        draw.ellipse(box, outline=fg, width=max(1, size // 10))
    else:
        band = max(1, size // 8)
        phase = int(rng.integers(0, band))
        for p in range(phase, size, 2 * band):
            if shape == "hstripes":
                draw.rectangle((0, p, size - 1, p + band - 1), fill=fg)
            else:
                draw.rectangle((p, 0, p + band - 1, size - 1), fill=fg)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.normal(0.0, 6.0, size=arr.shape).round().astype(np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_images(dataset: SyntheticDataset, image_root: Path, config: SyntheticConfig) -> int:
    """Write one PNG per item to ``image_root / image_path``; returns the count.

    Fixed PNG parameters and no metadata chunks make the files byte-identical
    across runs, so DVC hashes stay stable.
    """
    image_root = Path(image_root)
    image_root.mkdir(parents=True, exist_ok=True)
    items = dataset.items
    for item_id, rel, g, c in zip(
        items["item_id"].to_numpy(), items["image_path"], dataset.item_genre, dataset.item_cluster
    ):
        arr = render_item_image(int(g), int(c), int(item_id), config.image_size, config.seed)
        path = image_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)
    return len(items)


def write_files(
    dataset: SyntheticDataset,
    out_dir: Path,
    fmt: Literal["csv", "parquet"] = "csv",
    config: SyntheticConfig | None = None,
) -> dict[str, Path]:
    """Write ``interactions.<fmt>``, ``items.<fmt>`` and, given ``config``, ``images/``."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unsupported format {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in (("interactions", dataset.interactions), ("items", dataset.items)):
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths[name] = path
    if config is not None:
        paths["images"] = out_dir / "images"
        write_images(dataset, paths["images"], config)
    return paths


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def stand_in_features(dataset: SyntheticDataset, side_dim: int | None = None, seed: int = 0,
                      image_share: float = 0.7, text_noise: float = 0.3):
    """Stand-ins for the frozen encoders that carry the generator's planted signal (plus noise), for tests and
    benchmarks of the fusion layer that must not load the real encoders.

    text (N, 384): bag of random word vectors over the generated titles (titles are built from genre/cluster
    word lists, so shared words = related items, as MiniLM would see them) + noise, unit rows; image (N, 1280):
    genre + cluster + item directions scaled like CNN activations, zero rows for the ~``1 - image_share`` items
    without an image; side: primary-genre one-hot + standardised year, padded to ``side_dim`` (default: no
    padding) with a knowledge-graph-like block (cluster direction + noise). Returns
    :class:`~mufasa.data.features.ItemFeatures`.
    """
    from mufasa.data.features import ItemFeatures

    rng = np.random.default_rng(seed)
    g, c = dataset.item_genre, dataset.item_cluster
    n, n_genres, n_clusters = len(g), int(g.max()) + 1, int(c.max()) + 1
    words = [re.sub(r"\(\d+\)", "", t).split() for t in dataset.items["title"]]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    word_vec = _unit_rows(rng.normal(size=(len(vocab), 384)))
    text = np.stack([word_vec[[vocab[w] for w in ws]].sum(0) for ws in words])
    text = _unit_rows(_unit_rows(text) + text_noise * _unit_rows(rng.normal(size=(n, 384)))).astype(np.float32)
    image = 10 * _unit_rows(
        _unit_rows(rng.normal(size=(n_genres, 1280)))[g]
        + _unit_rows(rng.normal(size=(n_clusters, 1280)))[c]
        + _unit_rows(rng.normal(size=(n, 1280)))
    )
    mask = rng.random(n) < image_share
    image[~mask] = 0.0
    side_dim = n_genres + 1 if side_dim is None else side_dim
    if side_dim < n_genres + 1:
        raise ValueError(f"side_dim {side_dim} < {n_genres + 1} (genres + year)")
    side = np.zeros((n, side_dim), np.float32)
    side[np.arange(n), g] = 1.0
    years = dataset.items["year"].to_numpy(dtype=float)
    side[:, n_genres] = (years - years.mean()) / years.std()
    extra = side_dim - n_genres - 1
    if extra > 0:
        side[:, n_genres + 1:] = _unit_rows(_unit_rows(rng.normal(size=(n_clusters, extra)))[c]
                                            + _unit_rows(rng.normal(size=(n, extra))))
    return ItemFeatures(text, image.astype(np.float32), mask, side)
