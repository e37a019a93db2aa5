"""Run tags the project sets (kept free of import-time work so anything can import it)."""


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover a whole partition range (single-run backfill)."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }
