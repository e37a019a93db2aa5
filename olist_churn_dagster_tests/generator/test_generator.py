"""The built-in generator: contract (files, columns, dtypes), determinism and realism."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from olist_churn_dagster.generator import marketplace as generator
from olist_churn_dagster.generator.marketplace import (
    build_tables,
    default_real_dir,
    generate_dataset,
    load_reference,
    resolve_span,
)
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.sales import seller_sale_days

SCALE = 0.05
SEED = 7
START, END = date(2023, 1, 1), date(2025, 1, 31)
SNAPSHOT = datetime(2025, 2, 1)
HORIZON = 45
c = pl.col


def _read(folder: Path) -> dict[str, pl.DataFrame]:
    return {
        name: pl.read_csv(folder / spec.file_name, schema=spec.schema)
        for name, spec in TABLES.items()
    }


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("generated")
    counts = generate_dataset(folder, scale=SCALE, seed=SEED, start=START, end=END)
    return folder, counts


@pytest.fixture(scope="module")
def tables(out: tuple[Path, dict[str, int]]) -> dict[str, pl.DataFrame]:
    return _read(out[0])


def test_writes_the_nine_files_with_exact_headers(out: tuple[Path, dict[str, int]]) -> None:
    folder, counts = out
    assert sorted(p.name for p in folder.iterdir()) == sorted(s.file_name for s in TABLES.values())
    for name, spec in TABLES.items():
        with open(folder / spec.file_name, encoding="utf-8") as f:
            assert f.readline().rstrip("\n").split(",") == list(spec.columns), name
        assert counts[name] > 0, name


def test_every_table_round_trips_through_csv(
    tables: dict[str, pl.DataFrame], out: tuple[Path, dict[str, int]]
) -> None:
    """Typed read-back equals the in-memory tables: dtypes, nulls, quoting of comments
    with commas, quotes and line breaks, and leading zeros all survive the CSV."""
    expected = build_tables(scale=SCALE, seed=SEED, start=START, end=END, ref=load_reference(None))
    for name, df in expected.items():
        assert tables[name].schema == TABLES[name].schema, name
        assert tables[name].equals(df), name
        assert out[1][name] == df.height
    messages = tables["order_reviews"]["review_comment_message"].drop_nulls()
    for needle in (",", '"', "\n"):
        assert messages.str.contains(needle, literal=True).any(), needle


def test_same_seed_same_bytes_other_seed_other_bytes(
    tmp_path: Path, out: tuple[Path, dict[str, int]]
) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    generate_dataset(again, scale=SCALE, seed=SEED, start=START, end=END)
    generate_dataset(other, scale=SCALE, seed=SEED + 1, start=START, end=END)
    for spec in TABLES.values():
        first = (out[0] / spec.file_name).read_bytes()
        assert (again / spec.file_name).read_bytes() == first, spec.file_name
    orders = TABLES["orders"].file_name
    assert (other / orders).read_bytes() != (out[0] / orders).read_bytes()


def test_ids_and_zip_prefixes_look_real(tables: dict[str, pl.DataFrame]) -> None:
    hex32 = r"^[0-9a-f]{32}$"
    for name, col in [
        ("orders", "order_id"),
        ("orders", "customer_id"),
        ("customers", "customer_unique_id"),
        ("sellers", "seller_id"),
        ("products", "product_id"),
        ("order_reviews", "review_id"),
    ]:
        assert tables[name][col].str.contains(hex32).all(), (name, col)
    for name, col in [
        ("customers", "customer_zip_code_prefix"),
        ("sellers", "seller_zip_code_prefix"),
        ("geolocation", "geolocation_zip_code_prefix"),
    ]:
        assert tables[name][col].str.contains(r"^\d{5}$").all(), (name, col)
    zips = tables["customers"]["customer_zip_code_prefix"]
    assert zips.str.starts_with("0").mean() > 0.15  # the São Paulo area starts with 0
    for key in ("order_id", "customer_id"):
        assert tables["orders"][key].is_unique().all()


def test_row_counts_scale_like_the_real_dataset(tables: dict[str, pl.DataFrame]) -> None:
    n = {k: v.height for k, v in tables.items()}
    assert 99_441 * SCALE * 0.85 < n["orders"] < 99_441 * SCALE * 1.15
    assert 1.08 < n["order_items"] / n["orders"] < 1.2
    assert 1.02 < n["order_payments"] / n["orders"] < 1.08
    assert 0.93 < n["order_reviews"] / n["orders"] <= 1.0
    assert n["customers"] == n["orders"]
    unique_customers = tables["customers"]["customer_unique_id"].n_unique()
    assert 0.94 < unique_customers / n["orders"] < 0.99  # some customers come back
    assert 3_095 * SCALE * 0.7 < n["sellers"] < 3_095 * SCALE * 1.3
    assert 32_951 * SCALE * 0.7 < n["products"] < 32_951 * SCALE * 1.3
    assert n["category_translation"] == 71


def test_counts_grow_linearly_with_scale(tmp_path: Path) -> None:
    small = generate_dataset(tmp_path / "s", scale=0.03, seed=SEED, start=START, end=END)
    large = generate_dataset(tmp_path / "l", scale=0.09, seed=SEED, start=START, end=END)
    for name in ("orders", "order_items", "order_payments", "customers"):
        assert 2.7 < large[name] / small[name] < 3.3, name
    for name in ("sellers", "products"):  # few and heavy-tailed at this size: noisier
        assert 2.2 < large[name] / small[name] < 3.8, name


def test_statuses_payments_reviews_have_the_real_mix(tables: dict[str, pl.DataFrame]) -> None:
    status = tables["orders"]["order_status"].value_counts(normalize=True)
    share = dict(status.iter_rows())
    assert 0.94 < share["delivered"] < 0.985
    assert {"shipped", "canceled", "unavailable"} <= set(share)
    pay = dict(tables["order_payments"]["payment_type"].value_counts(normalize=True).iter_rows())
    assert 0.68 < pay["credit_card"] < 0.80
    assert 0.14 < pay["boleto"] < 0.25
    assert 0.025 < pay["voucher"] < 0.09
    assert 0.004 < pay["debit_card"] < 0.03
    cards = tables["order_payments"].filter(c("payment_type") == "credit_card")
    assert cards["payment_installments"].is_between(1, 24).all()
    assert cards["payment_installments"].max() >= 8
    scores = dict(tables["order_reviews"]["review_score"].value_counts(normalize=True).iter_rows())
    assert 0.5 < scores[5] < 0.65 and 0.13 < scores[4] < 0.25
    assert 0.08 < scores[1] < 0.16 and scores[2] < scores[3] < scores[4]
    msg = tables["order_reviews"]["review_comment_message"].is_null().mean()
    assert 0.45 < msg < 0.75  # most reviews have no comment
    per_order = (
        tables["order_items"]
        .group_by("order_id")
        .agg(pl.len(), c("seller_id").n_unique().alias("sellers"))
    )
    assert 0.06 < (per_order["len"] > 1).mean() < 0.14
    assert (per_order["sellers"] > 1).sum() > 0
    null_cat = tables["products"]["product_category_name"].is_null().mean()
    assert 0.005 < null_cat < 0.04


def test_payments_add_up_to_price_plus_freight(tables: dict[str, pl.DataFrame]) -> None:
    items = (
        tables["order_items"]
        .group_by("order_id")
        .agg((c("price") + c("freight_value")).sum().alias("due"))
    )
    paid = tables["order_payments"].group_by("order_id").agg(c("payment_value").sum())
    joined = items.join(paid, on="order_id", how="left")
    assert joined["payment_value"].null_count() == 0
    assert ((joined["due"] - joined["payment_value"]).abs() < 0.005).all()
    assert tables["orders"]["order_id"].is_in(tables["order_payments"]["order_id"].implode()).all()


def test_timestamps_are_consistent_and_nothing_is_in_the_future(
    tables: dict[str, pl.DataFrame],
) -> None:
    orders = tables["orders"]
    delivered = orders.filter(c("order_status") == "delivered")
    chain = [
        "order_purchase_timestamp",
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
    ]
    assert delivered.select(chain).null_count().sum_horizontal().item() == 0
    for earlier, later in itertools.pairwise(chain):
        assert (delivered[earlier] <= delivered[later]).all(), (earlier, later)
    late = delivered["order_delivered_customer_date"] > delivered["order_estimated_delivery_date"]
    assert 0.04 < late.mean() < 0.13
    estimate = orders["order_estimated_delivery_date"]
    assert (estimate.dt.truncate("1d") == estimate).all()
    assert (estimate > orders["order_purchase_timestamp"]).all()
    shipped = orders.filter(c("order_status") == "shipped")
    assert shipped["order_delivered_customer_date"].is_null().all()
    assert shipped["order_delivered_carrier_date"].is_not_null().all()
    assert orders.filter(c("order_status") == "created")["order_approved_at"].is_null().all()
    canceled = orders.filter(c("order_status") == "canceled")
    assert canceled["order_delivered_customer_date"].is_null().mean() > 0.8
    for col in chain:
        assert orders[col].max() < SNAPSHOT, col
    assert orders["order_purchase_timestamp"].max().date() == END
    reviews = tables["order_reviews"].join(orders, on="order_id")
    created = reviews["review_creation_date"]
    assert (created.dt.truncate("1d") == created).all()
    assert (reviews["review_answer_timestamp"] >= created).all()
    assert reviews["review_answer_timestamp"].max() < SNAPSHOT
    got = reviews.filter(c("order_delivered_customer_date").is_not_null())
    assert (got["review_creation_date"] >= got["order_delivered_customer_date"].dt.date()).all()


def test_recent_orders_are_mostly_not_delivered_yet(tables: dict[str, pl.DataFrame]) -> None:
    last_days = tables["orders"].filter(c("order_purchase_timestamp") >= SNAPSHOT - timedelta(3))
    assert last_days.height > 0
    assert (last_days["order_status"] == "delivered").mean() < 0.2


def test_growth_black_friday_and_weekdays(tables: dict[str, pl.DataFrame]) -> None:
    day = tables["orders"]["order_purchase_timestamp"].dt.date()
    daily = day.value_counts().rename({"order_purchase_timestamp": "day"})
    first_q = daily.filter(c("day") < START + timedelta(90))["count"].sum()
    last_q = daily.filter(c("day") > END - timedelta(90))["count"].sum()
    assert last_q > 3 * first_q  # strong growth in the first year
    normal = daily.filter(c("day").is_between(date(2024, 11, 4), date(2024, 11, 17)))
    black_friday = daily.filter(c("day") == date(2024, 11, 29))["count"].item()
    assert black_friday > 2.5 * normal["count"].mean()
    weekday = daily.group_by(c("day").dt.weekday().alias("wd")).agg(c("count").mean())
    means = dict(weekday.iter_rows())
    assert means[1] > means[6]  # Mondays busier than Saturdays


def test_churned_sellers_stop_and_had_more_late_deliveries(
    tables: dict[str, pl.DataFrame],
) -> None:
    orders, items = tables["orders"], tables["order_items"]
    sale_days = seller_sale_days(orders, items)
    last = sale_days.group_by("seller_id").agg(c("sale_date").max().alias("last_sale"))
    cutoff = END - timedelta(days=HORIZON)
    delivered = orders.filter(c("order_status") == "delivered").select(
        "order_id",
        (c("order_delivered_customer_date") > c("order_estimated_delivery_date")).alias("late"),
    )
    late = (
        items.select("order_id", "seller_id")
        .unique()
        .join(delivered, on="order_id")
        .group_by("seller_id")
        .agg(c("late").mean())
    )
    groups = (
        last.join(late, on="seller_id")
        .group_by(stopped=c("last_sale") < cutoff)
        .agg(c("late").mean(), pl.len())
    )
    by = {row["stopped"]: row for row in groups.iter_rows(named=True)}
    assert by[True]["len"] > 0.2 * last.height  # sales really stop for many sellers
    assert by[False]["len"] > 0.2 * last.height
    assert by[True]["late"] > by[False]["late"] + 0.02


def test_some_sellers_sell_rarely_but_regularly(tables: dict[str, pl.DataFrame]) -> None:
    gaps = (
        seller_sale_days(tables["orders"], tables["order_items"])
        .with_columns(gap=c("sale_date").diff().over("seller_id").dt.total_days())
        .group_by("seller_id")
        .agg(pl.len(), c("gap").min().alias("lo"), c("gap").max().alias("hi"))
    )
    regular = gaps.filter((c("len") >= 6) & (c("lo") >= 20) & (c("hi") <= HORIZON))
    assert regular.height >= 1


def test_default_span_ends_yesterday() -> None:
    start, end = resolve_span(None, None)
    assert end == date.today() - timedelta(days=1)
    assert 24 * 30 < (end - start).days < 26 * 31
    assert resolve_span(None, date(2020, 5, 1))[0] < date(2018, 5, 1)
    with pytest.raises(ValueError, match="before"):
        resolve_span(date(2024, 1, 2), date(2024, 1, 1))


def test_default_run_looks_live(tmp_path: Path) -> None:
    counts = generate_dataset(tmp_path, scale=0.02, seed=1)
    assert counts["orders"] > 500
    orders = pl.read_csv(tmp_path / TABLES["orders"].file_name, schema=TABLES["orders"].schema)
    today = datetime.combine(date.today(), datetime.min.time())
    last = orders["order_purchase_timestamp"].max()
    assert today - timedelta(days=3) <= last < today


def test_a_failed_write_leaves_no_final_or_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = generator.write_table_csv
    calls = []

    def flaky(df: pl.DataFrame, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            path.write_text("order_id,half a fi")  # a crash in the middle of a file
            raise OSError("disk full")
        real_write(df, path)

    monkeypatch.setattr(generator, "write_table_csv", flaky)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path, scale=0.01, seed=1, start=START, end=END)
    assert list(tmp_path.iterdir()) == []


def test_real_reference_files_feed_sellers_products_and_payments(tmp_path: Path) -> None:
    real_dir = default_real_dir()
    if real_dir is None:
        pytest.skip("../shared/olist-real is absent: nothing real to draw from")
    generate_dataset(tmp_path, scale=0.03, seed=SEED, start=START, end=END, real_dir=real_dir)
    got = _read(tmp_path)
    raw_sellers = pl.read_csv(real_dir / TABLES["sellers"].file_name, infer_schema=False)
    places = raw_sellers.select("seller_zip_code_prefix", "seller_city", "seller_state")
    ours = got["sellers"].select(places.columns)
    assert ours.join(places.unique(), on=places.columns, how="anti").height == 0
    raw_products = pl.read_csv(real_dir / TABLES["products"].file_name, infer_schema=False)
    real_categories = raw_products["product_category_name"].drop_nulls().unique().implode()
    categories = got["products"]["product_category_name"].drop_nulls()
    assert categories.is_in(real_categories).all()
    translation = got["category_translation"]
    assert translation.height == 71 and translation.columns == list(
        TABLES["category_translation"].columns
    )
    assert set(got["order_payments"]["payment_type"]) >= {"credit_card", "boleto", "voucher"}


def test_seller_dynamics_change_the_market_and_are_checked():
    """The 'delivery' preset ties exits to late deliveries and makes them abrupt; an
    unknown preset is refused."""
    import numpy as np

    from olist_churn_dagster.generator.sellers import DYNAMICS, draw_sellers

    n, days = 20_000, 700
    default = draw_sellers(np.random.default_rng(1), n, days, DYNAMICS["default"])
    delivery = draw_sellers(np.random.default_rng(1), n, days, DYNAMICS["delivery"])
    assert default.decline_days.min() >= 25 and delivery.decline_days.max() < 30
    np.testing.assert_array_equal(default.late_p, delivery.late_p)  # same traits drawn

    def exit_gap(s) -> float:  # share exiting: worst-delivery quartile minus best quartile
        exited = s.exit < days
        late = s.late_p >= np.quantile(s.late_p, 0.75)
        good = s.late_p <= np.quantile(s.late_p, 0.25)
        return float(exited[late].mean() - exited[good].mean())

    assert exit_gap(delivery) > exit_gap(default) + 0.05
    with pytest.raises(ValueError, match="unknown seller dynamics"):
        build_tables(
            scale=SCALE, seed=SEED, start=START, end=END, ref=load_reference(None), dynamics="x"
        )


def test_a_shift_changes_sales_and_exits_from_its_date_on(tables: dict[str, pl.DataFrame]):
    """`Shift` (what the monitoring tests feed on): from its date, demand is cut and sellers
    still in business exit sooner; what came before stays the same marketplace."""
    import numpy as np

    from olist_churn_dagster.generator.sellers import Shift, draw_sellers

    on = date(2024, 6, 1)
    shifted = build_tables(
        scale=SCALE,
        seed=SEED,
        start=START,
        end=END,
        ref=load_reference(None),
        shift=Shift(on, demand=0.35),
    )

    def orders(t: dict[str, pl.DataFrame], lo: date, hi: date) -> int:
        day = t["orders"]["order_purchase_timestamp"].dt.date()
        return int(day.is_between(lo, hi, closed="left").sum())

    before = orders(shifted, START, on) / orders(tables, START, on)
    after = orders(shifted, on, on + timedelta(90)) / orders(tables, on, on + timedelta(90))
    assert 0.95 < before < 1.05, before
    assert 0.3 < after < 0.45, after  # the regular sellers keep their own pace

    n, days, day = 20_000, 700, 300
    steady = draw_sellers(np.random.default_rng(1), n, days)
    sooner = draw_sellers(np.random.default_rng(1), n, days, shift=(day, Shift(on, hazard=3.0)))
    np.testing.assert_array_equal(steady.late_p, sooner.late_p)  # the same sellers
    gone = steady.exit < day
    np.testing.assert_array_equal(steady.exit[gone], sooner.exit[gone])
    later = ~gone & (steady.exit < days) & (steady.entry < day)
    assert later.sum() > 1000
    remaining = steady.exit[later] - day, sooner.exit[later] - day
    assert np.all(remaining[1] == np.ceil(remaining[0] / 3.0))


def test_the_demo_feed_leaves_its_last_days_for_replay(tmp_path: Path) -> None:
    """The export in raw/ is the feed as of N days before its end, declared in _SUCCESS,
    and replaying the feed's last N days gives N snapshots, each newer than the export."""
    from olist_churn_dagster.lib.ingest.loader import load_dataset
    from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, declared_as_of, replay

    end = date(2024, 6, 30)
    raw, feed = tmp_path / "raw", tmp_path / "feed"
    as_of, counts = generator.generate_demo_feed(
        raw, feed, feed_days=7, scale=SCALE, seed=3, start=end - timedelta(days=300), end=end
    )
    assert as_of == date(2024, 6, 24) == declared_as_of(raw)
    full = load_dataset(feed)
    assert counts["orders"] == full["orders"].height
    exported = load_dataset(raw)
    expected = cut_as_of(full, as_of)
    for name, frame in exported.items():
        assert frame.equals(expected[name]), name
    last_exported = exported["orders"].get_column("order_purchase_timestamp").max()
    assert (
        last_exported
        < datetime(2024, 6, 24)
        <= full["orders"].get_column("order_purchase_timestamp").max()
    )
    written = replay(
        feed, as_of + timedelta(days=1), end + timedelta(days=1), out_root=tmp_path / "s"
    )
    assert [p.name for p in written] == [
        (as_of + timedelta(days=n)).isoformat() for n in range(1, 8)
    ]

    with pytest.raises(ValueError, match="is not empty"):
        generator.generate_demo_feed(raw, tmp_path / "feed2", feed_days=7, scale=SCALE, end=end)
    assert not (tmp_path / "feed2").exists()  # refused before any work
