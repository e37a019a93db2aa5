"""The products feature family: catalogue attributes of the items sold in the window."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import (
    Additive,
    Cte,
    FamilyPlan,
    day,
    distinct_runs,
    ratio,
)

from .common import FLOAT, INT, WINDOW, Row, extremes, family_plan, sql_list

# The most common product categories of the real data, fixed so that the products table has
# the same columns whatever the data; everything else is `other`.
TOP_CATEGORIES = (
    "cama_mesa_banho",
    "beleza_saude",
    "esporte_lazer",
    "moveis_decoracao",
    "informatica_acessorios",
    "utilidades_domesticas",
    "relogios_presentes",
    "telefonia",
    "ferramentas_jardim",
    "automotivo",
    "brinquedos",
    "cool_stuff",
    "perfumaria",
    "bebes",
    "eletronicos",
)


def products_plan(w: int) -> FamilyPlan:
    """What the seller sells: the catalogue attributes of the items sold in the window.

    Items whose product is missing from the products table count as without category.

    Point-in-time rule: a sold item counts at D from the day after its order's purchase,
    for W days; product attributes have no timestamp and are taken as they stand.
    """
    # What the SQL below reads of the raw tables (order items' through sale_items).
    counts = ("product_photos_qty", "product_name_lenght", "product_description_lenght")
    sizes = ("product_weight_g", "product_length_cm", "product_height_cm", "product_width_cm")
    columns = {
        "order_items": ("product_id",),
        "products": ("product_id", "product_category_name", *counts, *sizes),
    }
    top = sql_list(TOP_CATEGORIES)
    has_category = "category_name IS NOT NULL"
    ctes = (
        Cte(
            "sold_products",
            f"""SELECT s.seller_id, s.product_id,
       {day("s.order_purchase_timestamp")} AS purchase_day,
       pr.product_category_name AS category_name, pr.product_photos_qty AS photos,
       pr.product_weight_g AS weight, pr.product_name_lenght AS name_len,
       pr.product_description_lenght AS desc_len,
       pr.product_length_cm * pr.product_height_cm * pr.product_width_cm AS vol
FROM sale_items s LEFT JOIN products pr ON pr.product_id = s.product_id""",
        ),
        distinct_runs("prod_runs", "sold_products", "product_id", "purchase_day"),
        distinct_runs("cat_runs", "sold_products", "category_name", "purchase_day", has_category),
    )
    measures = {"items": "1", "no_cat": "category_name IS NULL"}
    for col in ("photos", "weight", "name_len", "desc_len", "vol"):
        measures[f"n_{col}"] = f"{col} IS NOT NULL"
        measures[f"sum_{col}"] = f"coalesce({col}, 0)"
    measures.update({f"c_{c}": f"coalesce(category_name = '{c}', FALSE)" for c in TOP_CATEGORIES})
    measures["c_other"] = f"coalesce(category_name NOT IN ({top}), FALSE)"
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive(
            source="sold_products",
            start="purchase_day + 1",
            end=f"purchase_day + {w}",
            measures=measures,
        ),
        Additive(source="prod_runs", start="d + 1", end=window_end, measures={"products": "1"}),
        Additive(source="cat_runs", start="d + 1", end=window_end, measures={"cats": "1"}),
    )
    sliding = (extremes("sold_products", "vol", measure="vol"),)
    rows: list[Row] = [
        ("products_distinct", INT, "products", "distinct products sold", WINDOW, "products"),
        (
            "products_distinct_categories",
            INT,
            "cats",
            "distinct categories sold",
            WINDOW,
            "categories",
        ),
        (
            "products_photos_mean",
            FLOAT,
            ratio("sum_photos", "n_photos"),
            "mean photos per item's product",
            WINDOW,
            "photos",
        ),
        (
            "products_volume_mean",
            FLOAT,
            ratio("sum_vol", "n_vol"),
            "mean product volume (length x height x width)",
            WINDOW,
            "cm3",
        ),
        (
            "products_volume_min",
            FLOAT,
            "CAST(vol_min AS DOUBLE)",
            "smallest product volume",
            WINDOW,
            "cm3",
        ),
        (
            "products_volume_max",
            FLOAT,
            "CAST(vol_max AS DOUBLE)",
            "largest product volume",
            WINDOW,
            "cm3",
        ),
        (
            "products_weight_mean",
            FLOAT,
            ratio("sum_weight", "n_weight"),
            "mean product weight",
            WINDOW,
            "g",
        ),
        (
            "products_name_length_mean",
            FLOAT,
            ratio("sum_name_len", "n_name_len"),
            "mean product name length",
            WINDOW,
            "characters",
        ),
        (
            "products_description_length_mean",
            FLOAT,
            ratio("sum_desc_len", "n_desc_len"),
            "mean product description length",
            WINDOW,
            "characters",
        ),
        (
            "products_share_no_category",
            FLOAT,
            ratio("no_cat", "items"),
            "share of items without a category",
            WINDOW,
            "share",
        ),
    ]
    rows += [
        (
            f"products_share_cat_{c}",
            FLOAT,
            ratio(f"c_{c}", "items"),
            f"share of items in category {c}",
            WINDOW,
            "share",
        )
        for c in TOP_CATEGORIES
    ]
    rows.append(
        (
            "products_share_cat_other",
            FLOAT,
            ratio("c_other", "items"),
            "share of items in any other category",
            WINDOW,
            "share",
        )
    )
    return family_plan("products", columns, ctes, additive, rows, sliding=sliding)
