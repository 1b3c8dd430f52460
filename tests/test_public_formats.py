"""Public datasets in their published formats (MovieLens 1M ``.dat``, MovieLens CSV, Amazon Reviews 2023 JSONL):
fixtures written here byte for byte in those formats, read into the canonical schema, ingested through the real
stage, and bad or missing input rejected with the file, the column and the line named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.data.public import load_amazon_2023, load_movielens_1m, load_movielens_csv, split_title_year
from mufasa.data.schema import DataValidationError
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline.fingerprint import source_fingerprint
from mufasa.pipeline.params import load_params
from mufasa.pipeline.paths import ProjectPaths

NOW = 1_800_000_000  # fixed "now" so the fixtures' timestamps are never in the future

# ---------------------------------------------------------------------------------------------- fixtures

ML1M_RATINGS = (
    "1::1::5::978300760\n"
    "1::2::3::978302109\n"
    "1::3::4::978301968\n"
    "2::1::4::978298413\n"
    "2::3::2::978299000\n"
    "2::2::5::978300000\n"
)
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama|Musical\n"
    '3::"Great Performances" Cats (1998)::Musical\n'
)

MLCSV_RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,1147880044\n"
    "1,2,3.5,1147868817\n"
    "1,3,1.5,1147868828\n"
    "7,1,5.0,1147879000\n"
    "7,2,0.5,1147879100\n"
    "7,3,2.0,1147879200\n"
)
MLCSV_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '2,"American President, The (1995)",Comedy|Drama|Romance\n'
    "3,Babylon 5,(no genres listed)\n"
)

# Amazon: ids are strings (one parent_asin looks like a number: an ISBN), timestamps in milliseconds, reviews
# carry keys the loader must ignore (their own "title" and "images" are the review's, not the item's).
AMZ_REVIEWS = [
    {"rating": 5.0, "title": "Great", "text": "Loved it", "images": [], "asin": "B0C1", "parent_asin": "B0C",
     "user_id": "AFZZ", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
    {"rating": 4.0, "title": "Ok", "text": "Fine, I guess", "images": [], "asin": "B0A", "parent_asin": "B0A",
     "user_id": "AFZZ", "timestamp": 1588687800000, "helpful_vote": 1, "verified_purchase": True},
    {"rating": 1.0, "title": "Meh", "text": "No", "images": [], "asin": "0123456789", "parent_asin": "0123456789",
     "user_id": "AAAA", "timestamp": 1600000000999, "helpful_vote": 0, "verified_purchase": False},
    {"rating": 3.0, "title": "Hm", "text": "x", "images": [], "asin": "B0A", "parent_asin": "B0A",
     "user_id": "AAAA", "timestamp": 1600000100000, "helpful_vote": 0, "verified_purchase": False},
    {"rating": 2.0, "title": "Eh", "text": "y", "images": [], "asin": "B0C2", "parent_asin": "B0C",
     "user_id": "AAAA", "timestamp": 1600000200000, "helpful_vote": 0, "verified_purchase": False},
]
AMZ_META = [
    {"main_category": "All Beauty", "title": "Rose Hand Cream, 50 ml", "average_rating": 4.2, "rating_number": 10,
     "features": [], "description": [], "price": None, "store": "X",
     "categories": ["Beauty", "Skin Care", "Hands & Nails"],
     "images": [{"thumb": "https://t/B0A_t.jpg", "large": "https://t/B0A_l.jpg", "variant": "PT01",
                 "hi_res": None},
                {"thumb": "https://t/B0A_main_t.jpg", "large": "https://t/B0A_main_l.jpg", "variant": "MAIN",
                 "hi_res": "https://t/B0A_main_hr.jpg"}],
     "videos": [], "details": {}, "parent_asin": "B0A", "bought_together": None},
    {"main_category": "Books", "title": "Not reviewed in this file", "categories": ["Books"], "images": [],
     "parent_asin": "B0Z"},
    {"main_category": "All Beauty", "title": "Lip Balm | Mint", "categories": [], "images": [],
     "parent_asin": "B0C"},
    {"main_category": "Books", "title": "A Book", "categories": ["Books", "Kids | Teens"], "images": [],
     "parent_asin": "0123456789"},
]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_ml1m(folder: Path, ratings: str = ML1M_RATINGS, movies: str = ML1M_MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_mlcsv(folder: Path, ratings: str = MLCSV_RATINGS, movies: str = MLCSV_MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings, encoding="utf-8")
    (folder / "movies.csv").write_text(movies, encoding="utf-8")
    return folder


def write_amazon(folder: Path, reviews: str | None = None, meta: str | None = None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    r, m = folder / "All_Beauty.jsonl", folder / "meta_All_Beauty.jsonl"
    r.write_text(jsonl(AMZ_REVIEWS) if reviews is None else reviews, encoding="utf-8")
    m.write_text(jsonl(AMZ_META) if meta is None else meta, encoding="utf-8")
    return r, m


def write_params(root: Path, source: str, **section) -> None:
    key = source.replace("-", "_")
    raw = {"ingest": {"source": source, "now": NOW, **({key: section} if section else {})}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def only_problem(err: DataValidationError, file_suffix: str, column: str | None):
    matching = [p for p in err.problems if p.file.endswith(file_suffix) and p.column == column]
    assert len(matching) == 1, str(err)
    return matching[0]


# -------------------------------------------------------------------------------------------- MovieLens 1M


def test_movielens_1m_is_read_into_the_canonical_schema(tmp_path):
    interactions, items, sources = load_movielens_1m(write_ml1m(tmp_path / "ml-1m"))
    assert list(interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert interactions["user_id"].tolist() == [1, 1, 1, 2, 2, 2]
    assert interactions["item_id"].tolist() == [1, 2, 3, 1, 3, 2]
    assert interactions["timestamp"].tolist()[:2] == [978300760, 978302109]
    assert str(interactions["timestamp"].dtype) == "int64" and str(interactions["rating"].dtype) == "float64"
    assert interactions["rating"].tolist() == [5.0, 3.0, 4.0, 4.0, 2.0, 5.0]
    by_id = items.set_index("item_id")
    assert by_id.loc[1, "title"] == "Toy Story" and by_id.loc[1, "year"] == 1995
    assert by_id.loc[1, "genres"].split("|") == ["Animation", "Children's", "Comedy"]
    assert by_id.loc[2, "title"] == "Misérables, Les" and by_id.loc[2, "year"] == 1995  # latin-1 decoded
    assert by_id.loc[3, "title"] == '"Great Performances" Cats' and by_id.loc[3, "year"] == 1998
    assert items["image_path"].isna().all() and str(items["year"].dtype) == "Int64"
    assert sources["interactions"].path.endswith("ratings.dat") and sources["items"].path.endswith("movies.dat")


def test_movielens_1m_bad_row_names_file_column_and_line(tmp_path):
    bad = ML1M_RATINGS + "x7::1::5::978300760\n"  # line 7
    with pytest.raises(DataValidationError) as err:
        load_movielens_1m(write_ml1m(tmp_path / "ml-1m", ratings=bad))
    problem = only_problem(err.value, "ratings.dat", "UserID")
    assert "not an integer" in problem.message and problem.rows == (7,) and problem.row_label == "line"
    assert "line 7 ('x7')" in str(err.value)


def test_movielens_1m_reports_problems_of_both_files_and_wrong_field_counts(tmp_path):
    folder = write_ml1m(
        tmp_path / "ml-1m", ratings=ML1M_RATINGS + "1::2::3::4::5\n", movies=ML1M_MOVIES + "four::Heat (1995)::Crime\n"
    )
    with pytest.raises(DataValidationError) as err:
        load_movielens_1m(folder)
    ratings = only_problem(err.value, "ratings.dat", None)
    assert "line 7" in ratings.message and "'::'-separated fields" in ratings.message
    movies = only_problem(err.value, "movies.dat", "MovieID")
    assert movies.rows == (4,) and movies.examples == ("four",)


# ------------------------------------------------------------------------------------------- MovieLens CSV


def test_movielens_csv_is_read_into_the_canonical_schema(tmp_path):
    interactions, items, _ = load_movielens_csv(write_mlcsv(tmp_path / "ml-25m"))
    assert interactions["user_id"].tolist() == [1, 1, 1, 7, 7, 7]
    assert interactions["item_id"].tolist() == [1, 2, 3, 1, 2, 3]
    assert interactions["timestamp"].tolist()[0] == 1147880044
    assert interactions["rating"].tolist()[:2] == [4.0, 3.5]
    by_id = items.set_index("item_id")
    assert by_id.loc[2, "title"] == "American President, The" and by_id.loc[2, "year"] == 1995  # quoted comma
    assert by_id.loc[2, "genres"] == "Comedy|Drama|Romance"
    assert by_id.loc[3, "title"] == "Babylon 5" and pd.isna(by_id.loc[3, "year"])  # no year in the title
    assert by_id.loc[3, "genres"] == ""  # "(no genres listed)"


def test_movielens_csv_bad_value_falls_back_to_a_located_error(tmp_path):
    folder = write_mlcsv(tmp_path / "ml-25m", ratings=MLCSV_RATINGS + "7,oops,2.0,1147879300\n")  # line 8
    with pytest.raises(DataValidationError) as err:
        load_movielens_csv(folder)
    problem = only_problem(err.value, "ratings.csv", "movieId")
    assert problem.rows == (8,) and problem.examples == ("oops",) and "not an integer" in problem.message


def test_movielens_csv_missing_column_is_named(tmp_path):
    folder = write_mlcsv(tmp_path / "ml-25m", movies="movieId,title\n1,Toy Story (1995)\n")
    with pytest.raises(DataValidationError) as err:
        load_movielens_csv(folder)
    assert "required column 'genres' is missing" in only_problem(err.value, "movies.csv", "genres").message


def test_title_year_split_matches_ml100k_convention():
    raw = pd.Series(["Toy Story (1995)", "(500) Days of Summer (2009)", "Show (2006–2007)", "(1995)"])
    title, year = split_title_year(raw)
    assert title.tolist() == ["Toy Story", "(500) Days of Summer", "Show", "(1995)"]
    assert year.tolist()[:3] == [1995, 2009, 2006] and pd.isna(year.iloc[3])


# -------------------------------------------------------------------------------------- Amazon Reviews 2023


@pytest.mark.parametrize("chunk_lines", [2, 100_000])  # several chunks, and one
def test_amazon_2023_is_read_with_dense_ids_and_seconds(tmp_path, chunk_lines):
    reviews, meta = write_amazon(tmp_path / "amz")
    images = tmp_path / "amz" / "images"
    images.mkdir()
    (images / "B0A.jpg").write_bytes(b"not decoded here")
    (images / "B0Z.jpg").write_bytes(b"unreviewed item")
    interactions, items, sources = load_amazon_2023(reviews, meta, images, chunk_lines=chunk_lines)

    # items: the reviewed ones only, ids = 1-based rank of the sorted parent_asin
    assert items["parent_asin"].tolist() == ["0123456789", "B0A", "B0C"]
    assert items["item_id"].tolist() == [1, 2, 3]
    assert items["title"].tolist() == ["A Book", "Rose Hand Cream, 50 ml", "Lip Balm | Mint"]
    assert items["genres"].tolist() == ["Books|Kids / Teens", "Beauty|Skin Care|Hands & Nails", "All Beauty"]
    assert items["image_path"].tolist()[1] == "B0A.jpg" and items["image_path"].isna().tolist() == [True, False, True]
    assert items["image_url"].tolist()[1] == "https://t/B0A_main_hr.jpg"
    assert items["year"].isna().all()
    assert items.index.tolist() == [3, 0, 2]  # 0-based metadata lines, for located errors

    # interactions: file order; users = rank of sorted user_id ("AAAA" -> 1, "AFZZ" -> 2); ms -> s
    assert interactions["user_id"].tolist() == [2, 2, 1, 1, 1]
    assert interactions["item_id"].tolist() == [3, 2, 1, 2, 3]
    assert interactions["timestamp"].tolist() == [1588687728, 1588687800, 1600000000, 1600000100, 1600000200]
    assert interactions["rating"].tolist() == [5.0, 4.0, 1.0, 3.0, 2.0]
    assert sources["interactions"].row_number(0) == 1  # JSONL has no header: index 0 is line 1


def test_amazon_2023_reads_gzip(tmp_path):
    folder = tmp_path / "amz"
    folder.mkdir()
    reviews, meta = folder / "All_Beauty.jsonl.gz", folder / "meta_All_Beauty.jsonl.gz"
    reviews.write_bytes(gzip.compress(jsonl(AMZ_REVIEWS).encode()))
    meta.write_bytes(gzip.compress(jsonl(AMZ_META).encode()))
    interactions, items, _ = load_amazon_2023(reviews, meta)
    assert len(interactions) == 5 and len(items) == 3 and items["image_path"].isna().all()


def test_amazon_2023_missing_key_is_located_across_chunks(tmp_path):
    rows = [dict(r) for r in AMZ_REVIEWS]
    del rows[2]["parent_asin"]  # line 3
    rows[4]["parent_asin"] = None  # line 5 (another chunk)
    reviews, meta = write_amazon(tmp_path / "amz", reviews=jsonl(rows))
    with pytest.raises(DataValidationError) as err:
        load_amazon_2023(reviews, meta, chunk_lines=2)
    problem = only_problem(err.value, "All_Beauty.jsonl", "parent_asin")
    assert "missing (null) id" in problem.message and problem.rows == (3, 5) and problem.row_label == "line"


def test_amazon_2023_bad_json_line_and_unknown_item_are_located(tmp_path):
    text = jsonl(AMZ_REVIEWS).splitlines(keepends=True)
    reviews, meta = write_amazon(tmp_path / "amz", reviews="".join(text[:3] + ['{"user_id": "X", \n'] + text[3:]))
    with pytest.raises(DataValidationError) as err:
        load_amazon_2023(reviews, meta)
    problem = only_problem(err.value, "All_Beauty.jsonl", None)
    assert "not valid JSON" in problem.message and problem.rows == (4,)

    rows = AMZ_REVIEWS + [dict(AMZ_REVIEWS[0], parent_asin="B0NOPE")]  # line 6
    reviews, meta = write_amazon(tmp_path / "amz", reviews=jsonl(rows))
    with pytest.raises(DataValidationError) as err:
        load_amazon_2023(reviews, meta)
    problem = only_problem(err.value, "All_Beauty.jsonl", "parent_asin")
    assert "not in the metadata file" in problem.message and problem.rows == (6,) and problem.examples == ("B0NOPE",)


def test_amazon_2023_wrong_file_and_missing_image_folder(tmp_path):
    reviews, meta = write_amazon(tmp_path / "amz")
    with pytest.raises(DataValidationError) as err:
        load_amazon_2023(meta, meta)  # metadata given as reviews: no user_id / timestamp keys
    assert {p.column for p in err.value.problems} == {"user_id", "timestamp"}
    assert all("absent from every line" in p.message for p in err.value.problems)
    with pytest.raises(DataValidationError, match="image folder not found"):
        load_amazon_2023(reviews, meta, tmp_path / "no-images")


# ------------------------------------------------------------------------------ through the ingest stage


def test_ingest_stage_accepts_each_public_format(tmp_path):
    write_ml1m(tmp_path / "data" / "input" / "ml-1m")
    write_mlcsv(tmp_path / "data" / "input" / "ml-25m")
    reviews, meta = write_amazon(tmp_path / "data" / "input" / "amazon-2023")
    (tmp_path / "data" / "input" / "amazon-2023" / "images").mkdir()
    (tmp_path / "data" / "input" / "amazon-2023" / "images" / "B0C.png").write_bytes(b"x")
    paths = ProjectPaths(tmp_path)
    expected = {"movielens-1m": (6, 3), "movielens-csv": (6, 3), "amazon-2023": (5, 3)}
    for source, (n_inter, n_items) in expected.items():
        section = {"image_root": "data/input/amazon-2023/images"} if source == "amazon-2023" else {}
        write_params(tmp_path, source, **section)
        result = ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, paths)
        stored_items = pd.read_parquet(paths.raw_items)
        stored_inter = pd.read_parquet(paths.raw_interactions)
        assert (len(stored_inter), len(stored_items)) == (n_inter, n_items), source
        assert result.metrics["n_interactions"] == n_inter
        manifest = json.loads(paths.raw_manifest.read_text())
        assert manifest["source"] == source
        if source == "movielens-1m":
            assert stored_items.set_index("item_id").loc[2, "title"] == "Misérables, Les"
            assert manifest["files"]["interactions"] == "data/input/ml-1m/ratings.dat"
    # Amazon (last): the image root travels in the manifest, where the features stage resolves image_path
    assert manifest["image_root"] == "data/input/amazon-2023/images"
    assert stored_items["image_path"].tolist() == [None, None, "B0C.png"]
    assert stored_items["parent_asin"].tolist() == ["0123456789", "B0A", "B0C"]


def test_ingest_stage_locates_value_errors_in_the_source_lines(tmp_path):
    # A timestamp in the future (ms) passes the reader and is caught by the GX suite: the line must still be right.
    rows = AMZ_REVIEWS[:3] + [dict(AMZ_REVIEWS[3], timestamp=(NOW + 10) * 1000)] + AMZ_REVIEWS[4:]  # line 4
    write_amazon(tmp_path / "data" / "input" / "amazon-2023", reviews=jsonl(rows))
    write_params(tmp_path, "amazon-2023")
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, ProjectPaths(tmp_path))
    problem = only_problem(err.value, "All_Beauty.jsonl", "timestamp")
    assert "in the future" in problem.message and problem.rows == (4,) and problem.row_label == "line"
    assert not ProjectPaths(tmp_path).raw_items.exists()


def test_fingerprint_covers_the_public_files_and_only_the_active_section(tmp_path):
    folder = write_ml1m(tmp_path / "data" / "input" / "ml-1m")
    write_params(tmp_path, "movielens-1m")
    cfg = load_params(tmp_path / "params.yaml").ingest
    before = source_fingerprint(cfg, tmp_path)
    (folder / "ratings.dat").write_bytes((ML1M_RATINGS + "3::1::4::978300999\n").encode("latin-1"))
    after = source_fingerprint(cfg, tmp_path)
    assert after != before
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["ingest"]["amazon_2023"] = {"reviews": "elsewhere.jsonl"}  # another source's settings
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert source_fingerprint(load_params(tmp_path / "params.yaml").ingest, tmp_path) == after


@pytest.mark.parametrize(
    ("source", "expected_file", "url"),
    [
        ("movielens-1m", "data/input/ml-1m/ratings.dat", "https://grouplens.org/datasets/movielens/1m/"),
        ("movielens-csv", "data/input/ml-25m/movies.csv", "https://grouplens.org/datasets/movielens/"),
        ("amazon-2023", "data/input/amazon-2023/meta_All_Beauty.jsonl", "https://amazon-reviews-2023.github.io/"),
    ],
)
def test_missing_files_name_the_path_and_where_to_download(tmp_path, source, expected_file, url):
    write_params(tmp_path, source)
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, ProjectPaths(tmp_path))
    problem = only_problem(err.value, expected_file, None)
    assert problem.file == str(tmp_path / expected_file)
    assert "file not found" in problem.message and url in problem.message
    assert len(err.value.problems) == 2  # both files of the dataset are reported at once


def test_cli_exits_2_on_missing_public_dataset(tmp_path):
    write_params(tmp_path, "movielens-1m")
    result = CliRunner().invoke(app, ["stage", "ingest", "--root", str(tmp_path), "--no-track"])
    assert result.exit_code == 2
    assert "ratings.dat" in result.output and "grouplens.org" in result.output
