"""Tests for the CSV loader: the real files' quirks, a small valid dataset, and one test
per kind of bad input, each checking that the error names the file and where."""

from __future__ import annotations

import hashlib
import time
import zipfile
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from olist_churn_dagster.lib.ingest import schema
from olist_churn_dagster.lib.ingest.loader import (
    MAX_FIELD_BYTES,
    InputDataError,
    load_dataset,
    purchase_date_range,
    resolve_source,
)

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "olist-real"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real Olist files not present at {REAL.resolve()}"
)
REAL_TABLES = ["order_payments", "products", "sellers", "category_translation"]


def _id(label: str) -> str:
    return hashlib.md5(label.encode()).hexdigest()


def _ts(text: str) -> datetime:
    return datetime.strptime(text, schema.TIMESTAMP_FORMAT)


# --------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real() -> dict[str, pl.DataFrame]:
    """The real tables the tests look at, loaded as a raw load reads them."""
    return load_dataset(REAL, tables=REAL_TABLES)


@needs_real
def test_real_row_counts(real: dict[str, pl.DataFrame]) -> None:
    counts = {name: real[name].height for name in REAL_TABLES}
    assert counts == {
        "order_payments": 103_886,
        "products": 32_951,
        "sellers": 3_095,
        "category_translation": 71,
    }


@needs_real
def test_real_tables_are_typed_per_schema(real: dict[str, pl.DataFrame]) -> None:
    for name in REAL_TABLES:
        assert real[name].schema == schema.TABLES[name].schema


@needs_real
def test_real_seller_zip_prefixes_keep_leading_zeros(real: dict[str, pl.DataFrame]) -> None:
    zips = real["sellers"]["seller_zip_code_prefix"]
    assert zips.str.starts_with("0").any()
    assert (zips.str.len_chars() == 5).all()


@needs_real
def test_real_translation_bom_and_crlf(real: dict[str, pl.DataFrame]) -> None:
    raw = (REAL / "product_category_name_translation.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and not raw.endswith(b"\n")
    df = real["category_translation"]
    assert df.columns == ["product_category_name", "product_category_name_english"]
    assert df["product_category_name_english"][-1] == "security_and_services"
    assert not df["product_category_name_english"].str.contains("\r").any()


@needs_real
def test_real_products_without_category(real: dict[str, pl.DataFrame]) -> None:
    assert real["products"]["product_category_name"].null_count() == 610


@needs_real
def test_real_quoted_and_unquoted_ids(real: dict[str, pl.DataFrame]) -> None:
    lines = (REAL / "olist_sellers_dataset.csv").read_text().splitlines()[1:]
    assert any(line.startswith('"') for line in lines)
    assert any(not line.startswith('"') for line in lines)
    ids = real["sellers"]["seller_id"]
    assert (ids.str.len_chars() == 32).all()
    assert not ids.str.contains('"').any()
    assert ids.n_unique() == ids.len()


@needs_real
def test_real_load_dataset_timing() -> None:
    start = time.perf_counter()
    frames = load_dataset(REAL, tables=REAL_TABLES)
    elapsed = time.perf_counter() - start
    print(f"load_dataset on the four real files: {elapsed:.3f}s")
    assert sum(df.height for df in frames.values()) == 103_886 + 32_951 + 3_095 + 71
    assert elapsed < 5


# --------------------------------------------------------------------------- a valid set

ORDERS = [_id(f"order{i}") for i in range(4)]
CUSTOMERS = [_id(f"customer{i}") for i in range(4)]
SELLERS = [_id(f"seller{i}") for i in range(2)]
PRODUCTS = [_id(f"product{i}") for i in range(2)]
MESSAGE = 'Bom, mas "caro".\nRecomendo'


def valid_frames() -> dict[str, pl.DataFrame]:
    """Four orders, two sellers, two products: every table referencing the others."""

    def frame(name: str, data: dict[str, list]) -> pl.DataFrame:
        return pl.DataFrame(data, schema=schema.TABLES[name].schema)

    purchase = ["2017-01-05 10:00:00", "2017-02-10 11:30:00", "2017-03-15 09:00:00",
                "2017-04-20 18:45:00"]  # fmt: skip
    delivered = [_ts("2017-01-12 10:00:00"), _ts("2017-02-20 12:00:00"), None, None]
    return {
        "orders": frame(
            "orders",
            {
                "order_id": ORDERS,
                "customer_id": CUSTOMERS,
                "order_status": ["delivered", "delivered", "canceled", "shipped"],
                "order_purchase_timestamp": [_ts(t) for t in purchase],
                # Approved before purchase happens in the real data: it must be accepted.
                "order_approved_at": [_ts("2017-01-05 09:59:00"), None, None, None],
                "order_delivered_carrier_date": [_ts("2017-01-06 10:00:00"), None, None, None],
                "order_delivered_customer_date": delivered,
                "order_estimated_delivery_date": [_ts(t) for t in purchase],
            },
        ),
        "order_items": frame(
            "order_items",
            {
                "order_id": [ORDERS[0], ORDERS[0], ORDERS[1], ORDERS[2], ORDERS[3]],
                "order_item_id": [1, 2, 1, 1, 1],
                "product_id": [PRODUCTS[0], PRODUCTS[1], PRODUCTS[0], PRODUCTS[1], PRODUCTS[1]],
                "seller_id": [SELLERS[0], SELLERS[1], SELLERS[0], SELLERS[1], SELLERS[1]],
                "shipping_limit_date": [_ts(t) for t in purchase[:1] + purchase],
                "price": [10.5, 20.0, 99.9, 5.0, 0.0],
                "freight_value": [1.5, 2.0, 0.0, 3.25, 1.0],
            },
        ),
        "order_payments": frame(
            "order_payments",
            {
                "order_id": [ORDERS[0], ORDERS[1], ORDERS[1], ORDERS[2], ORDERS[3]],
                "payment_sequential": [1, 1, 2, 1, 1],
                "payment_type": ["credit_card", "boleto", "voucher", "debit_card", "boleto"],
                "payment_installments": [3, 1, 1, 0, 1],
                "payment_value": [35.0, 50.0, 49.9, 8.25, 1.0],
            },
        ),
        "order_reviews": frame(
            "order_reviews",
            {
                "review_id": [_id("review0"), _id("review1")],
                "order_id": [ORDERS[0], ORDERS[1]],
                "review_score": [5, 2],
                "review_comment_title": [None, "ok"],
                "review_comment_message": [MESSAGE, None],
                "review_creation_date": [_ts("2017-01-13 00:00:00"), _ts("2017-02-21 00:00:00")],
                "review_answer_timestamp": [_ts("2017-01-14 08:00:00"), None],
            },
        ),
        "customers": frame(
            "customers",
            {
                "customer_id": CUSTOMERS,
                "customer_unique_id": [_id(f"person{i}") for i in range(4)],
                "customer_zip_code_prefix": ["01001", "20040", "30130", "01310"],
                "customer_city": ["sao paulo", "rio de janeiro", "belo horizonte", "sao paulo"],
                "customer_state": ["SP", "RJ", "MG", "SP"],
            },
        ),
        "products": frame(
            "products",
            {
                "product_id": PRODUCTS,
                "product_category_name": ["perfumaria", None],
                "product_name_lenght": [40, None],
                "product_description_lenght": [287, None],
                "product_photos_qty": [1, None],
                "product_weight_g": [225, 700],
                "product_length_cm": [16, 30],
                "product_height_cm": [10, 5],
                "product_width_cm": [14, 20],
            },
        ),
        "sellers": frame(
            "sellers",
            {
                "seller_id": SELLERS,
                "seller_zip_code_prefix": ["01234", "13023"],
                "seller_city": ["sao paulo", "campinas"],
                "seller_state": ["SP", "SP"],
            },
        ),
        "category_translation": frame(
            "category_translation",
            {
                "product_category_name": ["perfumaria"],
                "product_category_name_english": ["perfumery"],
            },
        ),
        "geolocation": frame(
            "geolocation",
            {
                "geolocation_zip_code_prefix": ["01001", "01001"],
                "geolocation_lat": [-23.55, -23.551],
                "geolocation_lng": [-46.63, -46.634],
                "geolocation_city": ["sao paulo", "são paulo"],
                "geolocation_state": ["SP", "SP"],
            },
        ),
    }


def write_dataset(folder: Path, frames: dict[str, pl.DataFrame]) -> Path:
    for name, df in frames.items():
        schema.write_table_csv(df, folder / schema.TABLES[name].file_name)
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "raw", valid_frames())


def path_of(folder: Path, name: str) -> Path:
    return folder / schema.TABLES[name].file_name


def edit(folder: Path, name: str, old: bytes, new: bytes, count: int = 1) -> None:
    """Replace bytes in one file, failing loudly if the text to replace is not there."""
    path = path_of(folder, name)
    data = path.read_bytes()
    assert old in data, f"{old!r} not in {path.name}"
    path.write_bytes(data.replace(old, new, count))


def append(folder: Path, name: str, text: bytes) -> None:
    path = path_of(folder, name)
    path.write_bytes(path.read_bytes() + text)


def expect_error(
    source: Path,
    name: str,
    *,
    column: str | None = None,
    row: int | None = None,
    line: int | None = None,
    words: tuple[str, ...] = (),
    **kwargs,
) -> InputDataError:
    """load_dataset must refuse the source with an error that says file, column, row."""
    with pytest.raises(InputDataError) as info:
        load_dataset(source, **kwargs)
    error, message = info.value, str(info.value)
    file_name = schema.TABLES[name].file_name
    assert error.file == file_name and file_name in message, message
    if column is not None:
        assert error.column == column and f"'{column}'" in message, message
    if row is not None:
        assert error.row == row and f"row {row}" in message, message
    if line is not None:
        assert f"line {line}" in message, message
    for word in words:
        assert word in message, message
    return error


# --------------------------------------------------------------------------- valid input


def test_valid_dataset_round_trips(dataset: Path) -> None:
    frames = load_dataset(dataset)
    expected = valid_frames()
    assert set(frames) == set(schema.TABLES)
    for name, df in frames.items():
        assert df.schema == schema.TABLES[name].schema, name
        assert df.equals(expected[name]), name


def test_review_message_with_comma_quote_newline(dataset: Path) -> None:
    assert b'"Bom, mas ""caro"".\nRecomendo"' in path_of(dataset, "order_reviews").read_bytes()
    reviews = load_dataset(dataset)["order_reviews"]
    assert reviews["review_comment_message"][0] == MESSAGE
    assert reviews["review_comment_title"][0] is None


def test_geolocation_is_optional(dataset: Path) -> None:
    path_of(dataset, "geolocation").unlink()
    assert "geolocation" not in load_dataset(dataset)


def test_tables_subset_and_unknown_name(dataset: Path) -> None:
    assert set(load_dataset(dataset, tables=["sellers", "products"])) == {"sellers", "products"}
    with pytest.raises(KeyError, match="unknown table"):
        load_dataset(dataset, tables=["nope"])


def test_bom_crlf_no_final_newline_and_quoted_ids(dataset: Path) -> None:
    path = path_of(dataset, "sellers")
    lines = path.read_text().splitlines()
    quoted = [lines[0], f'"{SELLERS[0]}","01234",sao paulo,SP', f"{SELLERS[1]},13023,campinas,SP"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(quoted).encode())
    assert load_dataset(dataset)["sellers"].equals(valid_frames()["sellers"])


def test_integral_floats_and_date_only_timestamps(dataset: Path) -> None:
    edit(dataset, "products", b",40,287,", b",40.0,287.0,")
    edit(dataset, "orders", b"2017-01-05 10:00:00", b"2017-01-05")
    assert load_dataset(dataset)["products"]["product_name_lenght"].to_list() == [40, None]
    purchase = load_dataset(dataset)["orders"]["order_purchase_timestamp"][0]
    assert purchase == datetime(2017, 1, 5)


def test_blank_lines_are_skipped(dataset: Path) -> None:
    append(dataset, "sellers", b"\n\r\n")
    edit(dataset, "customers", b"\n", b"\n\n")  # a blank line after the header
    assert load_dataset(dataset)["sellers"].height == 2
    assert load_dataset(dataset)["customers"].equals(valid_frames()["customers"])
    edit(dataset, "customers", b",RJ\n", b",XX,RJ\n")
    expect_error(dataset, "customers", row=2, line=4, words=("found 6 fields",))


def test_zip_equals_folder(dataset: Path, tmp_path: Path) -> None:
    archive = tmp_path / "drop" / "brazilian-ecommerce.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(dataset.iterdir()):
            zf.write(path, f"olist/{path.name}")
    from_folder = load_dataset(dataset)
    for source in (archive, archive.parent):
        assert resolve_source(source) == archive
        from_zip = load_dataset(source)
        assert from_zip.keys() == from_folder.keys()
        for name, df in from_folder.items():
            assert from_zip[name].equals(df), name
    assert purchase_date_range(archive) == purchase_date_range(dataset)


def test_purchase_date_range(dataset: Path) -> None:
    assert purchase_date_range(dataset) == (date(2017, 1, 5), date(2017, 4, 20))


def test_purchase_date_range_refuses_bad_value(dataset: Path) -> None:
    edit(dataset, "orders", b"2017-02-10 11:30:00", b"yesterday")
    with pytest.raises(InputDataError, match=r"olist_orders_dataset.csv.*row 2.*yesterday"):
        purchase_date_range(dataset)


def test_purchase_date_range_missing_column(dataset: Path) -> None:
    edit(dataset, "orders", b"order_purchase_timestamp", b"purchased_at")
    with pytest.raises(InputDataError, match="missing column 'order_purchase_timestamp'"):
        purchase_date_range(dataset)


def test_purchase_date_range_missing_file(dataset: Path) -> None:
    path_of(dataset, "orders").unlink()
    with pytest.raises(InputDataError, match=r"olist_orders_dataset\.csv.*not found"):
        purchase_date_range(dataset)


def test_check_references_off_accepts_orphans(dataset: Path) -> None:
    frames = valid_frames()
    frames["sellers"] = frames["sellers"].head(1)
    write_dataset(dataset, frames)
    assert load_dataset(dataset, check_references=False)["sellers"].height == 1


# --------------------------------------------------------------------------- sources


def test_source_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="source not found"):
        resolve_source(tmp_path / "nowhere")


def test_source_without_files(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"olist_orders_dataset\.csv"):
        resolve_source(tmp_path)


def test_source_with_two_zips(tmp_path: Path) -> None:
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("x.txt", "x")
    with pytest.raises(InputDataError, match=r"a\.zip, b\.zip"):
        resolve_source(tmp_path)


def test_source_file_not_zip(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_text("not a zip")
    with pytest.raises(InputDataError, match=r"folder of Olist CSV files or a \.zip"):
        resolve_source(tmp_path / "data.zip")


# --------------------------------------------------------------------------- bad files


def test_missing_file(dataset: Path) -> None:
    path_of(dataset, "order_items").unlink()
    error = expect_error(dataset, "order_items", words=("not found", str(dataset)))
    assert error.column is None


def test_missing_file_in_zip(dataset: Path, tmp_path: Path) -> None:
    archive = tmp_path / "partial.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path_of(dataset, "orders"), schema.TABLES["orders"].file_name)
    error = expect_error(archive, "order_items", words=("not found", "partial.zip"))
    assert schema.TABLES["customers"].file_name in str(error)


def test_empty_file(dataset: Path) -> None:
    path_of(dataset, "customers").write_bytes(b"")
    expect_error(dataset, "customers", words=("empty (0 bytes)",))


def test_header_only(dataset: Path) -> None:
    path = path_of(dataset, "sellers")
    path.write_text(path.read_text().splitlines()[0] + "\n")
    expect_error(dataset, "sellers", words=("no data rows",))


def test_missing_column(dataset: Path) -> None:
    frames = valid_frames()
    frames["sellers"] = frames["sellers"].drop("seller_city")
    write_dataset(dataset, frames)
    expect_error(dataset, "sellers", column="seller_city", words=("missing", "expected exactly"))


def test_extra_column(dataset: Path) -> None:
    frames = valid_frames()
    frames["sellers"] = frames["sellers"].with_columns(pl.lit("x").alias("seller_rating"))
    write_dataset(dataset, frames)
    expect_error(dataset, "sellers", column="seller_rating", words=("unexpected",))


def test_renamed_column(dataset: Path) -> None:
    edit(dataset, "products", b"product_name_lenght", b"product_name_length")
    error = expect_error(dataset, "products", column="product_name_lenght", words=("renamed",))
    assert "'product_name_length'" in str(error)


def test_duplicated_column(dataset: Path) -> None:
    edit(dataset, "sellers", b"seller_city", b"seller_state")
    expect_error(dataset, "sellers", column="seller_state", words=("more than once",))


@pytest.mark.parametrize(
    ("name", "column", "old", "new", "row", "expected"),
    [
        ("order_items", "price", b",99.9,", b",99,9,", None, None),
        ("order_items", "price", b",99.9,", b",cheap,", 3, "a finite number"),
        ("order_payments", "payment_installments", b",3,35.0", b",three,35.0", 1, "an integer"),
        ("products", "product_weight_g", b",225,", b",225.5,", 1, "an integer"),
        ("orders", "order_purchase_timestamp", b"2017-03-15 09:00:00", b"15/03/2017", 3,
         "a timestamp"),
        ("order_reviews", "review_creation_date", b"2017-02-21 00:00:00", b"2017-02-30", 2,
         "a timestamp"),
    ],
)  # fmt: skip
def test_wrong_type(
    dataset: Path,
    name: str,
    column: str,
    old: bytes,
    new: bytes,
    row: int | None,
    expected: str | None,
) -> None:
    edit(dataset, name, old, new)
    if row is None:  # a decimal comma adds a field: caught as a wrong field count
        expect_error(dataset, name, row=3, line=4, words=("found 8 fields, expected 7",))
        return
    expect_error(
        dataset,
        name,
        column=column,
        row=row,
        words=(expected, new.decode().strip(",").split(",")[0]),
    )


def test_truncated_last_line(dataset: Path) -> None:
    path = path_of(dataset, "customers")
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b",")])  # cut inside the last row, no newline
    expect_error(dataset, "customers", row=4, line=5, words=("expected 5", "cut short"))


def test_too_many_fields(dataset: Path) -> None:
    edit(dataset, "customers", b",RJ\n", b",RJ,extra\n")
    expect_error(dataset, "customers", row=2, line=3, words=("found 6 fields, expected 5",))


def test_unterminated_quote(dataset: Path) -> None:
    path = path_of(dataset, "order_reviews")
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"Recomendo")])  # file cut inside the quoted message
    expect_error(dataset, "order_reviews", line=2, words=("never closed",))


def test_stray_quote_inside_field(dataset: Path) -> None:
    edit(dataset, "sellers", b",campinas,", b',camp"inas,')
    expect_error(dataset, "sellers", line=3, words=("never closed",))


def test_text_after_closing_quote(dataset: Path) -> None:
    edit(dataset, "sellers", b",campinas,", b',"camp"inas,')
    expect_error(dataset, "sellers", line=3, words=("malformed CSV", "camp"))


def test_paired_quotes_inside_unquoted_field_are_text(dataset: Path) -> None:
    edit(dataset, "sellers", b",campinas,", b',camp"in"as,')
    assert load_dataset(dataset)["sellers"]["seller_city"][1] == 'camp"in"as'


def test_non_utf8_bytes(dataset: Path) -> None:
    edit(dataset, "customers", b"belo horizonte", "belo horizônte".encode("latin-1"))
    error = expect_error(dataset, "customers", line=4, words=("UTF-8", "byte 0xf4", "offset"))
    assert error.line == 4


def test_huge_field(dataset: Path) -> None:
    edit(dataset, "order_reviews", b"Recomendo", b"x" * (MAX_FIELD_BYTES + 10))
    expect_error(
        dataset, "order_reviews", column="review_comment_message", line=2, words=("exceeds",)
    )


# --------------------------------------------------------------------------- bad rows


def test_duplicate_primary_key(dataset: Path) -> None:
    frames = valid_frames()
    frames["sellers"] = pl.concat([frames["sellers"], frames["sellers"].head(1)])
    write_dataset(dataset, frames)
    expect_error(dataset, "sellers", column="seller_id", row=1, words=("duplicate", SELLERS[0]))


def test_duplicate_composite_key(dataset: Path) -> None:
    frames = valid_frames()
    frames["order_items"] = frames["order_items"].with_columns(
        pl.when(pl.int_range(pl.len()) == 1)
        .then(1)
        .otherwise("order_item_id")
        .alias("order_item_id")
    )
    write_dataset(dataset, frames)
    expect_error(dataset, "order_items", words=("order_id, order_item_id", "rows 1, 2"))


def test_null_primary_key(dataset: Path) -> None:
    edit(dataset, "customers", CUSTOMERS[2].encode(), b"")
    expect_error(dataset, "customers", column="customer_id", row=3, words=("empty",))


def test_unknown_order_status(dataset: Path) -> None:
    edit(dataset, "orders", b",shipped,", b",lost,")
    expect_error(dataset, "orders", column="order_status", row=4, words=("'lost'", "delivered"))


@pytest.mark.parametrize("score", [b"0", b"6"])
def test_review_score_out_of_range(dataset: Path, score: bytes) -> None:
    edit(dataset, "order_reviews", b",2,ok,", b"," + score + b",ok,")
    expect_error(dataset, "order_reviews", column="review_score", row=2, words=("1 to 5",))


@pytest.mark.parametrize(
    ("name", "column", "old", "new", "row"),
    [
        ("order_items", "price", b",99.9,", b",-99.9,", 3),
        ("order_items", "freight_value", b",3.25\n", b",-3.25\n", 4),
        ("order_payments", "payment_value", b",49.9\n", b",-49.9\n", 3),
    ],
)
def test_negative_amount(
    dataset: Path, name: str, column: str, old: bytes, new: bytes, row: int
) -> None:
    edit(dataset, name, old, new)
    expect_error(dataset, name, column=column, row=row, words=(">= 0",))


def test_delivery_before_purchase(dataset: Path) -> None:
    edit(dataset, "orders", b"2017-02-20 12:00:00", b"2017-02-01 12:00:00")
    expect_error(
        dataset,
        "orders",
        column="order_delivered_customer_date",
        row=2,
        words=(ORDERS[1], "before it was purchased"),
    )


def test_future_timestamp(dataset: Path) -> None:
    edit(dataset, "order_reviews", b"2017-01-14 08:00:00", b"2999-01-14 08:00:00")
    expect_error(
        dataset, "order_reviews", column="review_answer_timestamp", row=1, words=("future",)
    )


def test_future_promise_is_allowed(dataset: Path) -> None:
    frames = valid_frames()
    far = pl.lit(datetime(2999, 1, 1))
    frames["orders"] = frames["orders"].with_columns(far.alias("order_estimated_delivery_date"))
    write_dataset(dataset, frames)
    assert load_dataset(dataset)["orders"]["order_estimated_delivery_date"].dt.year()[0] == 2999


@pytest.mark.parametrize(
    ("child", "column", "parent", "keep"),
    [
        ("order_items", "order_id", "orders", pl.col("order_id") != ORDERS[3]),
        ("order_items", "seller_id", "sellers", pl.col("seller_id") != SELLERS[1]),
        ("order_items", "product_id", "products", pl.col("product_id") != PRODUCTS[0]),
        ("order_payments", "order_id", "orders", None),
        ("order_reviews", "order_id", "orders", None),
        ("orders", "customer_id", "customers", pl.col("customer_id") != CUSTOMERS[0]),
    ],
)  # fmt: skip
def test_unknown_reference(
    dataset: Path, child: str, column: str, parent: str, keep: pl.Expr | None
) -> None:
    frames = valid_frames()
    if keep is None:  # point one row of the child at an order that does not exist
        ghost = _id("ghost order")
        frames[child] = frames[child].with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(ghost)).otherwise(column).alias(column)
        )
    else:
        frames[parent] = frames[parent].filter(keep)
    write_dataset(dataset, frames)
    error = expect_error(dataset, child, column=column, words=("unknown to", "e.g."))
    assert schema.TABLES[parent].file_name in str(error)
    assert error.row is not None
