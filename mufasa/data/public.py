"""Public recommendation datasets, read in the formats their publishers ship, into the canonical schema.

Each loader returns what :func:`mufasa.data.movielens.load_ml100k` returns: ``(interactions, items, sources)``,
canonical frames (see :mod:`mufasa.data.schema`) whose index is the source row, plus the
:class:`~mufasa.data.readers.TableSource` of each, so that the GX suites can point at the source lines.

**MovieLens 1M** (``movielens-1m``; https://grouplens.org/datasets/movielens/1m/), one folder holding

- ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp`` (Unix seconds), no header;
- ``movies.dat``: ``MovieID::Title::Genres``, title with the release year (``Toy Story (1995)``), genres
  ``|``-separated, no header. Both latin-1 encoded (titles such as ``Misérables, Les (1995)``).

**MovieLens CSV** (``movielens-csv``: ML-20M, 25M, 32M and ml-latest(-small);
https://grouplens.org/datasets/movielens/), one folder holding, UTF-8, comma-separated, with a header:

- ``ratings.csv``: ``userId,movieId,rating,timestamp`` (Unix seconds);
- ``movies.csv``: ``movieId,title,genres``; titles are CSV-quoted where they contain commas; genres
  ``|``-separated, ``(no genres listed)`` meaning none.

For both MovieLens formats the title is split like ML-100k's: ``Toy Story (1995)`` becomes title ``Toy Story``
and year 1995 (a title without a trailing year keeps its text and gets no year). User and movie ids are the
files' own integers.

**Amazon Reviews 2023** (``amazon-2023``; https://amazon-reviews-2023.github.io/), two JSON Lines files of one
category (plain or ``.gz``), one JSON object per line:

- reviews (e.g. ``All_Beauty.jsonl``): ``user_id`` (string), ``parent_asin`` (string), ``timestamp`` (Unix
  **milliseconds**), ``rating`` (1.0-5.0); other keys (review title, text, images...) are ignored;
- metadata (e.g. ``meta_All_Beauty.jsonl``): ``parent_asin``, ``title``, ``main_category``, ``categories``
  (list of strings), ``images`` (list of objects with ``hi_res``/``large``/``thumb``/``variant``); others ignored.

The canonical ids are integers, so string ids are mapped to dense integers in sorted order: ``user_id`` is the
1-based rank of the reviewer's ``user_id`` among the sorted distinct reviewer ids of the reviews file, and
``item_id`` the 1-based rank of the item's ``parent_asin`` among the sorted ``parent_asin`` of the items kept.
The items table keeps the original ``parent_asin`` (and ``image_url``, the main image's largest URL) as extra
columns; the interactions table has no room for extra columns, so reviewer ids are recovered by that rule.
Only items that have at least one review are kept (metadata files cover whole categories). Timestamps become
Unix seconds (milliseconds floor-divided by 1000). Genres are ``categories`` (``|`` inside a name becomes
``/``), or ``main_category`` where ``categories`` is empty. Images are never downloaded (no network at run
time): with ``image_root`` set, an item gets ``image_path = <parent_asin>.jpg`` (or ``.jpeg``/``.png``/
``.webp``, first found) when that file exists in the folder, and no image otherwise.

Bad input raises :class:`~mufasa.data.schema.DataValidationError` whose problems name the file, the column (or
JSON key) and the 1-based lines; a missing file names the expected path and where to download the dataset.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from mufasa.data.readers import (
    TableSource,
    decode_text,
    parse_int_column,
    parse_timestamp_column,
    read_typed_csv,
)
from mufasa.data.schema import GENRE_SEPARATOR, DataValidationError, Problem

ML1M_URL = "https://grouplens.org/datasets/movielens/1m/"
MOVIELENS_URL = "https://grouplens.org/datasets/movielens/ (e.g. https://grouplens.org/datasets/movielens/25m/)"
AMAZON_2023_URL = "https://amazon-reviews-2023.github.io/"

ML_NO_GENRES = "(no genres listed)"
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")  # tried in this order per item
JSONL_CHUNK_LINES = 100_000  # lines parsed per chunk: bounded memory whatever the file size

# The keys read from Amazon's JSONL (every other key is skipped by the parser). Types are the published ones;
# a line that disagrees (e.g. a numeric user_id) is re-read exactly, so the schema is a fast path, not a rule.
REVIEW_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("parent_asin", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())]
)
_IMAGE = pa.struct([("hi_res", pa.string()), ("large", pa.string()), ("thumb", pa.string()), ("variant", pa.string())])
META_SCHEMA = pa.schema(
    [
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("main_category", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("images", pa.list_(_IMAGE)),
    ]
)

_MAX_EXAMPLES = 5
_DAT_SEP = "::"
_DAT_SEP_INTERNAL = "\x1f"  # ASCII unit separator: '::' -> one char so pandas' fast C parser can split it
# "Title (1995)", "Title (2006-2007)" (ml-latest series); the year is the first one.
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class HeaderlessSource(TableSource):
    """A text file without a header line (MovieLens ``.dat``, JSON Lines): data row ``i`` is line ``i + 1``.

    Build it with ``kind="csv"`` so that problems say "line" (the readers' convention for text files).
    """

    def row_number(self, index: int) -> int:
        return int(index) + 1


def _missing_files(paths: list[Path], dataset: str, url: str, layout: str) -> None:
    """Raise one error naming every missing file, the dataset and where to get it."""
    problems = [
        Problem(str(p), None, f"file not found: {dataset} expects it here; download it from {url} and {layout}")
        for p in paths
        if not p.is_file()
    ]
    if problems:
        raise DataValidationError(problems)


def _merge(problems: list[Problem]) -> list[Problem]:
    """One problem per (file, column, message), keeping the first example rows (problems come per chunk)."""
    merged: dict[tuple[str, str | None, str], Problem] = {}
    for p in problems:
        key = (p.file, p.column, p.message)
        if key not in merged:
            merged[key] = p
            continue
        first = merged[key]
        merged[key] = replace(
            first,
            rows=(first.rows + p.rows)[:_MAX_EXAMPLES],
            examples=(first.examples + p.examples)[:_MAX_EXAMPLES],
        )
    return list(merged.values())


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` -> (``"Toy Story"``, 1995); titles without a trailing year keep their text, year NA."""
    titles = titles.astype("string").str.strip()
    parts = titles.str.extract(_TITLE_YEAR)
    has_year = parts["year"].notna() & (parts["title"].str.len() > 0)
    title = titles.where(~has_year, parts["title"].str.strip()).astype("string")
    year = pd.to_numeric(parts["year"].where(has_year), errors="coerce").astype("Int64")
    return title, year


# ------------------------------------------------------------------------------------------------ MovieLens


def _decode(path: Path, source: TableSource, encoding: str) -> str:
    text = decode_text(path.read_bytes(), source, encoding)
    if not text.strip():
        raise DataValidationError([source.problem(None, "file is empty")])
    return text


def _read_dat(path: Path, names: tuple[str, ...]) -> tuple[pd.DataFrame, HeaderlessSource]:
    """A MovieLens ``::``-separated, latin-1, header-less ``.dat`` file as strings (index = 0-based row)."""
    source = HeaderlessSource(str(path), "csv")
    text = _decode(path, source, "latin-1")
    first = text.split("\n", 1)[0]
    if _DAT_SEP not in first:
        raise DataValidationError([source.problem(None, f"not '{_DAT_SEP}'-separated", [0], [first[:80]])])
    try:
        df = pd.read_csv(
            io.StringIO(text.replace(_DAT_SEP, _DAT_SEP_INTERNAL)),
            sep=_DAT_SEP_INTERNAL,
            header=None,
            names=list(names),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            quoting=3,  # csv.QUOTE_NONE: titles may start with a double quote
        )
    except pd.errors.ParserError as exc:
        message = str(exc).strip().replace("fields", f"'{_DAT_SEP}'-separated fields")
        raise DataValidationError([source.problem(None, f"cannot parse: {message}")]) from exc
    return df, source


def _read_csv(path: Path, columns: tuple[str, ...], text: str | None = None) -> tuple[pd.DataFrame, TableSource]:
    """A MovieLens CSV (header line, UTF-8) as strings, with ``columns`` checked and selected."""
    source = TableSource(str(path), "csv")
    try:
        df = pd.read_csv(
            io.StringIO(text) if text is not None else path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError([source.problem(None, "file is empty")]) from exc
    except UnicodeDecodeError as exc:
        raise DataValidationError([source.problem(None, f"bytes are not valid utf-8: {exc.reason}")]) from exc
    except pd.errors.ParserError as exc:
        raise DataValidationError([source.problem(None, f"cannot parse as comma-separated text: {exc}")]) from exc
    df.columns = [str(c).strip() for c in df.columns]
    _check_columns(df, columns, source)
    return df[list(columns)], source


def _check_columns(df: pd.DataFrame, columns: tuple[str, ...], source: TableSource, require_rows: bool = True) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(
            [
                source.problem(c, f"required column '{c}' is missing (found columns: {list(df.columns)})")
                for c in missing
            ]
        )
    if require_rows and len(df) == 0:
        raise DataValidationError([source.problem(None, "file has a header but no data rows")])


def _ratings(df: pd.DataFrame, source: TableSource, cols: tuple[str, str, str, str]) -> pd.DataFrame:
    """Canonical interactions from MovieLens rating columns (user, movie, rating, timestamp), as strings."""
    user, movie, rating, ts = cols
    problems: list[Problem] = []
    out = pd.DataFrame(index=df.index)
    out["user_id"] = parse_int_column(df, user, source, problems)
    out["item_id"] = parse_int_column(df, movie, source, problems)
    out["timestamp"] = parse_timestamp_column(df, ts, source, problems)
    value = pd.to_numeric(df[rating], errors="coerce")
    bad = df[rating].notna() & value.isna()
    if bad.any():
        problems.append(source.problem(rating, "rating is not a number", df.index[bad], df[rating][bad]))
    out["rating"] = value.astype("float64")
    if problems:
        raise DataValidationError(problems)
    return out


def _movies(df: pd.DataFrame, source: TableSource, cols: tuple[str, str, str]) -> pd.DataFrame:
    """Canonical items from MovieLens movie columns (id, "Title (year)", genres), as strings."""
    movie, title_col, genres_col = cols
    problems: list[Problem] = []
    item_id = parse_int_column(df, movie, source, problems)
    if problems:
        raise DataValidationError(problems)
    title, year = split_title_year(df[title_col])
    genres = df[genres_col].astype("string").fillna("").str.strip()
    genres = genres.where(genres != ML_NO_GENRES, "")
    return pd.DataFrame(
        {
            "item_id": item_id,
            "title": title,
            "genres": genres.astype("string"),
            "year": year,
            "image_path": pd.Series(pd.NA, index=df.index, dtype="string"),
        }
    )


def load_movielens_1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, TableSource]]:
    """MovieLens 1M (``ratings.dat``, ``movies.dat`` in ``folder``) in the canonical schema, file order kept."""
    folder = Path(folder)
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    _missing_files(
        [ratings_path, movies_path], "MovieLens 1M", ML1M_URL, f"unzip ml-1m.zip so that {folder} holds its .dat files"
    )
    errors: list[Problem] = []  # read both files before raising, so one run reports both
    interactions = items = None
    try:
        raw, ratings_src = _read_dat(ratings_path, ("UserID", "MovieID", "Rating", "Timestamp"))
        interactions = _ratings(raw, ratings_src, ("UserID", "MovieID", "Rating", "Timestamp"))
    except DataValidationError as exc:
        errors.extend(exc.problems)
    try:
        raw, movies_src = _read_dat(movies_path, ("MovieID", "Title", "Genres"))
        items = _movies(raw, movies_src, ("MovieID", "Title", "Genres"))
    except DataValidationError as exc:
        errors.extend(exc.problems)
    if errors:
        raise DataValidationError(errors)
    return interactions, items, {"interactions": ratings_src, "items": movies_src}


def _read_ratings_csv(path: Path) -> tuple[pd.DataFrame, TableSource]:
    """``ratings.csv`` (up to 32M rows): typed columnar read (pyarrow); on any bad or missing value, re-read as
    text to name the rows."""
    cols = ("userId", "movieId", "rating", "timestamp")
    source = TableSource(str(path), "csv")
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8")
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError([source.problem(None, "file is empty")]) from exc
    header.columns = [str(c).strip() for c in header.columns]
    _check_columns(header, cols, source, require_rows=False)
    types = {"userId": ("user_id", pa.int64()), "movieId": ("item_id", pa.int64()),
             "timestamp": ("timestamp", pa.int64()), "rating": ("rating", pa.float64())}
    typed = read_typed_csv(path, types)
    if typed is not None and len(typed.columns) == len(types):
        return typed[["user_id", "item_id", "timestamp", "rating"]], source
    raw, source = _read_csv(path, cols)
    out = _ratings(raw, source, cols)  # raises with rows when a value is bad
    return out, source


def load_movielens_csv(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, TableSource]]:
    """MovieLens 20M/25M/32M/latest (``ratings.csv``, ``movies.csv`` in ``folder``) in the canonical schema."""
    folder = Path(folder)
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    _missing_files(
        [ratings_path, movies_path],
        "MovieLens (CSV release)",
        MOVIELENS_URL,
        f"unzip it so that {folder} holds ratings.csv and movies.csv",
    )
    errors: list[Problem] = []
    interactions = items = None
    try:
        interactions, ratings_src = _read_ratings_csv(ratings_path)
    except DataValidationError as exc:
        errors.extend(exc.problems)
    try:
        movies_src = TableSource(str(movies_path), "csv")
        text = _decode(movies_path, movies_src, "utf-8")
        raw, movies_src = _read_csv(movies_path, ("movieId", "title", "genres"), text)
        items = _movies(raw, movies_src, ("movieId", "title", "genres"))
    except DataValidationError as exc:
        errors.extend(exc.problems)
    if errors:
        raise DataValidationError(errors)
    return interactions, items, {"interactions": ratings_src, "items": movies_src}


# ---------------------------------------------------------------------------------------- Amazon Reviews 2023


def iter_jsonl(
    path: Path, schema: pa.Schema, source: HeaderlessSource, chunk_lines: int = JSONL_CHUNK_LINES
) -> Iterator[pd.DataFrame]:
    """Yield frames of the ``schema`` keys for ``chunk_lines`` lines at a time; index = 0-based line.

    Absent keys are None; other keys are skipped while parsing (they are never materialised). Reads ``.gz``
    transparently; blank lines are skipped (line numbers stay exact). Each chunk is parsed by pyarrow's JSON
    reader; a chunk it refuses (bad JSON, a value of another type) is re-read line by line, which either accepts
    it (e.g. a numeric id) or raises a problem naming the line that is not UTF-8 JSON or not a JSON object.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    with opener(path, "rb") as fh:
        while True:
            lines = list(islice(fh, chunk_lines))
            if not lines:
                break
            index = [line_no + i for i, line in enumerate(lines) if line.strip()]
            frame = _parse_chunk_arrow(lines, schema, index)
            if frame is None:
                frame = _parse_chunk_lines(lines, schema.names, line_no, source)
            line_no += len(lines)
            if len(frame):
                yield frame


def _parse_chunk_arrow(lines: list[bytes], schema: pa.Schema, index: list[int]) -> pd.DataFrame | None:
    """Fast path: the chunk through pyarrow (C++), or None if it refuses or its row count disagrees."""
    buf = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    try:
        table = pa_json.read_json(
            io.BytesIO(buf),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=len(buf) + 1),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(index):
        return None
    data = {}
    for f in schema:
        column = table.column(f.name)
        # nested (lists of categories/images) as Python lists/dicts; scalars through pandas (None/NaN for nulls)
        data[f.name] = column.to_pylist() if pa.types.is_nested(f.type) else column.to_pandas().to_numpy()
    return pd.DataFrame(data, index=pd.Index(index, dtype="int64"))


def _parse_chunk_lines(lines: list[bytes], keys: list[str], line_no: int, source: HeaderlessSource) -> pd.DataFrame:
    """Slow, exact path: one ``json.loads`` per line; the first bad line raises a problem naming it."""
    columns: dict[str, list] = {k: [] for k in keys}
    index: list[int] = []
    for offset, line in enumerate(lines):
        i = line_no + offset
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            what = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise DataValidationError(
                [source.problem(None, f"not valid JSON ({what})", [i], [line[:80].decode("utf-8", "replace")])]
            ) from exc
        if not isinstance(obj, dict):
            raise DataValidationError([source.problem(None, "line is not a JSON object", [i])])
        for k in keys:
            columns[k].append(obj.get(k))
        index.append(i)
    return pd.DataFrame(columns, index=pd.Index(index, dtype="int64"))


def _string_ids(chunk: pd.DataFrame, column: str, source: TableSource, problems: list[Problem]) -> pd.Series:
    """A string id column (null -> problem with rows; numbers are kept as their text)."""
    raw = chunk[column]
    null = raw.isna() | (raw.astype(str).str.strip() == "")
    if null.any():
        problems.append(source.problem(column, "missing (null) id", raw.index[null]))
    nested = raw.map(lambda v: isinstance(v, (dict, list)))
    if nested.any():
        problems.append(source.problem(column, "id is not a string", raw.index[nested], raw[nested]))
    return raw.where(~null & ~nested).astype("string[pyarrow]").str.strip()


def _absent_keys(chunk: pd.DataFrame, keys: tuple[str, ...], source: TableSource) -> list[Problem]:
    """Keys absent from every line of the first chunk: most likely the wrong file, so say that once."""
    return [
        source.problem(k, f"required key '{k}' is absent from every line read (is this the right file?)")
        for k in keys
        if len(chunk) and chunk[k].isna().all()
    ]


def _read_reviews(path: Path, chunk_lines: int) -> tuple[pd.DataFrame, HeaderlessSource]:
    """Reviews JSONL -> frame (user, asin, timestamp in seconds, rating), index = 0-based line."""
    source = HeaderlessSource(str(path), "csv")
    problems: list[Problem] = []
    parts: list[pd.DataFrame] = []
    for n, chunk in enumerate(iter_jsonl(path, REVIEW_SCHEMA, source, chunk_lines)):
        if n == 0:
            absent = _absent_keys(chunk, ("user_id", "parent_asin", "timestamp"), source)
            if absent:
                raise DataValidationError(absent)
        found: list[Problem] = []
        user = _string_ids(chunk, "user_id", source, found)
        asin = _string_ids(chunk, "parent_asin", source, found)
        ts_problems: list[Problem] = []
        ts_ms = parse_timestamp_column(chunk, "timestamp", source, ts_problems)
        found += [replace(p, message=p.message.replace("Unix seconds", "Unix milliseconds")) for p in ts_problems]
        rating = pd.to_numeric(chunk["rating"], errors="coerce")
        bad = chunk["rating"].notna() & rating.isna()
        if bad.any():
            found.append(source.problem("rating", "rating is not a number", chunk.index[bad], chunk["rating"][bad]))
        problems.extend(found)
        if not found:
            parts.append(
                pd.DataFrame(
                    {"user": user, "asin": asin, "timestamp": ts_ms // 1000, "rating": rating.astype("float64")}
                )
            )
    if problems:
        raise DataValidationError(_merge(problems))
    if not parts:
        raise DataValidationError([source.problem(None, "file is empty (no JSON lines)")])
    return pd.concat(parts), source


def _genres(categories: object, main_category: object) -> str:
    names = [c for c in categories if isinstance(c, str) and c.strip()] if isinstance(categories, list) else []
    if not names and isinstance(main_category, str) and main_category.strip():
        names = [main_category]
    return GENRE_SEPARATOR.join(n.strip().replace(GENRE_SEPARATOR, "/") for n in names)


def _image_url(images: object) -> str | None:
    """The main image's largest URL (``variant == "MAIN"`` first, else the first image); None without images."""
    if not isinstance(images, list):
        return None
    entries = [im for im in images if isinstance(im, dict)]
    entries.sort(key=lambda im: im.get("variant") != "MAIN")  # stable: MAIN first, file order otherwise
    for im in entries:
        for key in ("hi_res", "large", "thumb"):
            if isinstance(im.get(key), str) and im[key]:
                return im[key]
    return None


def _read_meta(path: Path, wanted: set[str], chunk_lines: int) -> tuple[pd.DataFrame, HeaderlessSource]:
    """Metadata JSONL -> frame (asin, title, genres, image_url) for the ``wanted`` items, index = 0-based line."""
    source = HeaderlessSource(str(path), "csv")
    problems: list[Problem] = []
    parts: list[pd.DataFrame] = []
    for n, chunk in enumerate(iter_jsonl(path, META_SCHEMA, source, chunk_lines)):
        if n == 0:
            absent = _absent_keys(chunk, ("parent_asin", "title"), source)
            if absent:
                raise DataValidationError(absent)
        found: list[Problem] = []
        asin = _string_ids(chunk, "parent_asin", source, found)
        problems.extend(found)
        if found:
            continue
        keep = asin.isin(wanted).to_numpy(dtype=bool)
        if not keep.any():
            continue
        sub = chunk[keep]
        titles = sub["title"].map(lambda t: t if isinstance(t, str) else (None if t is None else str(t)))
        parts.append(
            pd.DataFrame(
                {
                    "asin": asin[keep].astype("string"),
                    "title": titles.astype("string").str.strip(),
                    "genres": [_genres(c, m) for c, m in zip(sub["categories"], sub["main_category"])],
                    "image_url": [_image_url(im) for im in sub["images"]],
                },
                index=sub.index,
            )
        )
    if problems:
        raise DataValidationError(_merge(problems))
    if not parts:
        return pd.DataFrame({"asin": [], "title": [], "genres": [], "image_url": []}).astype("string"), source
    meta = pd.concat(parts)
    dup = meta["asin"].duplicated(keep="first")
    if dup.any():
        raise DataValidationError(
            [source.problem("parent_asin", "duplicate parent_asin", meta.index[dup], meta["asin"][dup])]
        )
    return meta, source


def _image_paths(asins: pd.Series, image_root: Path | None) -> pd.Series:
    """``<asin><ext>`` for the items whose image file exists under ``image_root`` (first of IMAGE_EXTENSIONS)."""
    out = pd.Series(pd.NA, index=asins.index, dtype="string")
    if image_root is None:
        return out
    if not image_root.is_dir():
        raise DataValidationError(
            [
                Problem(
                    str(image_root),
                    None,
                    "image folder not found: put images named <parent_asin>.jpg there (they are never downloaded), "
                    "or set amazon_2023.image_root to null",
                )
            ]
        )
    names = {e.name for e in os.scandir(image_root) if e.is_file()}
    found = [next((a + ext for ext in IMAGE_EXTENSIONS if a + ext in names), None) for a in asins]
    return pd.Series(found, index=asins.index, dtype="string")


def load_amazon_2023(
    reviews: Path, meta: Path, image_root: Path | None = None, *, chunk_lines: int = JSONL_CHUNK_LINES
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, TableSource]]:
    """Amazon Reviews 2023 (one category's reviews + metadata JSONL) in the canonical schema.

    Interactions keep the reviews' line order; items are the reviewed items in ``parent_asin`` order (= item id
    order). See the module docstring for the id mapping, genres and images.
    """
    reviews, meta = Path(reviews), Path(meta)
    _missing_files(
        [reviews, meta],
        "Amazon Reviews 2023",
        AMAZON_2023_URL,
        "point ingest.amazon_2023.reviews / .meta at one category's review and metadata files (.jsonl or .jsonl.gz)",
    )
    rev, rev_src = _read_reviews(reviews, chunk_lines)
    wanted = set(rev["asin"].unique().tolist())
    items_raw, meta_src = _read_meta(meta, wanted, chunk_lines)

    asins = pd.Index(items_raw["asin"].to_numpy(dtype=object)).sort_values()
    pos = asins.get_indexer(rev["asin"].to_numpy(dtype=object))
    unknown = pos < 0
    if unknown.any():
        raise DataValidationError(
            [
                rev_src.problem(
                    "parent_asin",
                    f"{int(unknown.sum())} review(s) name an item that is not in the metadata file {meta}",
                    rev.index[unknown],
                    rev["asin"][unknown],
                )
            ]
        )
    user_codes, _ = pd.factorize(rev["user"], sort=True)
    interactions = pd.DataFrame(
        {
            "user_id": (user_codes + 1).astype("int64"),
            "item_id": (pos + 1).astype("int64"),
            "timestamp": rev["timestamp"].astype("int64"),
            "rating": rev["rating"].astype("float64"),
        },
        index=rev.index,
    )
    items_raw = items_raw.sort_values("asin", kind="stable")
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, len(items_raw) + 1, dtype="int64"),
            "title": items_raw["title"].astype("string"),
            "genres": items_raw["genres"].astype("string"),
            "year": pd.Series(pd.NA, index=items_raw.index, dtype="Int64"),
            "image_path": _image_paths(items_raw["asin"], Path(image_root) if image_root is not None else None),
            "parent_asin": items_raw["asin"].astype("string"),
            "image_url": items_raw["image_url"].astype("string"),
        },
        index=items_raw.index,
    )
    return interactions, items, {"interactions": rev_src, "items": meta_src}
