"""Pipeline benchmark: every stage from generated files to scores, at several scales.

    uv run python bench/pipeline.py [--scales 1 10 30] [--root /tmp/olist-pipeline-bench]
        [--stages features abt ...]

Each scale runs in a child process on a fresh data directory and an ephemeral Dagster
instance, through the project's own jobs (in process, real DuckDB and MLflow stores).
Prints one row per stage: seconds, rows, rows per second, the peak memory (RSS of the
process, sampled every 50 ms) during that stage, and its time against the first scale.
A scale whose memory, extrapolated linearly from the last one run, would exceed 90% of
this machine's is skipped with a line saying so. `--stages` prints only the stages named
(see STAGES) and stops after the last of them; the stages before it still run, since
each needs what the previous ones built. `--markdown FILE` also writes the table, with
the machine line, between the `<!-- pipeline:start -->` and `<!-- pipeline:end -->`
lines of FILE (docs/benchmarks.md), so the published table is the one just measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import psutil
from scale_child import run_scale_child, scale_result

# Short names of the stages, in the order they run (each needs the ones before it).
STAGES = (
    "generate",
    "raw",
    "features",
    "abt",
    "backtest",
    "train",
    "score1",
    "score30",
    "snapshot",
)


class PeakMemory:
    """Samples this process's RSS in a thread; `take()` returns the peak since last take."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def take(self) -> float:
        peak, self._peak = max(self._peak, self._process.memory_info().rss), 0
        return peak / 1024**3


class StopRun(Exception):
    """Raised after the last stage asked for: the rest of the pipeline is skipped."""


def _cpu_seconds() -> float:
    """User plus system CPU time of this process, all its threads (DuckDB's, polars')."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _stage(results: list, memory: PeakMemory, name: str, work: Callable[[], int]) -> None:
    memory.take()
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = work()
    seconds = time.perf_counter() - started
    results.append(
        {
            "stage": name,
            "seconds": seconds,
            "cpu_seconds": _cpu_seconds() - cpu,
            "rows": rows,
            "peak_gb": memory.take(),
            "load": os.getloadavg()[0],
        }
    )


def _count(path: Path, sql: str, params: list | None = None) -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as conn:
        return int(conn.execute(sql, params or []).fetchone()[0])


def run_scale(root: Path, scale: float, stages: tuple[str, ...] = STAGES) -> dict:
    """Every stage up to the last of `stages`; only `stages` are reported (under "stages"),
    with the size of the champion trained at this scale (under "champion") once trained."""
    results: list[dict] = []
    memory = PeakMemory()
    last = max(STAGES.index(s) for s in stages)
    champion: dict[str, int] = {}

    def stage(
        key: str,
        name: str,
        work: Callable[[], int] | None = None,
        setup: Callable[[], Callable[[], int]] | None = None,
    ) -> None:
        """Runs `work`, timed if `key` is reported; or `setup()` untimed first, then the
        work it returns. Neither runs past the last stage asked for."""
        if STAGES.index(key) > last:
            raise StopRun
        if setup is not None:
            work = setup()
        if key in stages:
            _stage(results, memory, name, work)
        else:
            work()
        if key == "train":
            champion.update(_champion_size())

    with contextlib.suppress(StopRun):
        _run_stages(root, scale, stage)
    return {"stages": results, "champion": champion}


def _champion_size() -> dict[str, int]:
    """Trees and nodes of the champion: scoring's TreeSHAP works per tree, and the
    champion grows with the data (early stopping keeps more rounds on more rows)."""
    from olist_churn_dagster.lib.ml.tracking import load_champion
    from olist_churn_dagster.lib.settings import load_settings

    dump = load_champion(load_settings().mlflow_tracking_uri).booster.get_dump()
    return {"trees": len(dump), "nodes": sum(tree.count("\n") for tree in dump)}


def _run_stages(root: Path, scale: float, stage: Callable[..., None]):
    data = root / f"scale-{scale:g}"
    if data.exists():
        shutil.rmtree(data)
    os.environ["OLIST_CHURN_DATA_DIR"] = str(data)

    from olist_churn_dagster.generator.marketplace import generate_dataset

    stage(
        "generate",
        "generate",
        lambda: generate_dataset(data / "raw", scale=scale)["order_items"],
    )

    import dagster as dg

    from olist_churn_dagster.bootstrap import load_definitions
    from olist_churn_dagster.defs.ml.assets import ABT_KEY, BACKTEST_KEY, MODEL_KEY
    from olist_churn_dagster.defs.partitions import registered_dates
    from olist_churn_dagster.defs.tags import range_tags
    from olist_churn_dagster.lib.tables import ABT_TABLE, SCORES_TABLE, feature_table

    defs = load_definitions()
    instance = dg.DagsterInstance.ephemeral()
    warehouse = data / "warehouse.duckdb"

    def run(job: str, **kwargs) -> dg.ExecuteInProcessResult:
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, **kwargs)
        assert result.success, job
        return result

    def load_raw() -> int:
        run("load_raw_tables")
        return _count(warehouse, "SELECT count(*) FROM raw.order_items")

    def features() -> int:
        run("build_feature_store", tags=range_tags(keys[0], keys[-1]))
        return _count(warehouse, f"SELECT count(*) FROM {feature_table('sales')}") * 6

    def train_part(asset: dg.AssetKey) -> Callable[[], int]:
        def work() -> int:
            run("train_churn_model", asset_selection=[asset])
            return _count(warehouse, f"SELECT count(*) FROM {ABT_TABLE}")

        return work

    def score(first: str, last: str) -> Callable[[], int]:
        def work() -> int:
            run("rescore_with_champion", tags=range_tags(first, last))
            return _count(
                warehouse,
                f"SELECT count(*) FROM {SCORES_TABLE} "
                "WHERE reference_date BETWEEN ?::DATE AND ?::DATE",
                [first, last],
            )

        return work

    stage("raw", "raw load", load_raw)
    keys = registered_dates(instance)  # the raw load registered them
    stage("features", f"feature backfill ({len(keys)} dates)", features)
    stage("abt", "ABT", train_part(ABT_KEY))
    stage("backtest", "walk-forward backtest + MLflow", train_part(BACKTEST_KEY))
    stage("train", "training + calibration + MLflow + gate", train_part(MODEL_KEY))
    stage("score1", "score one day", score(keys[-1], keys[-1]))
    stage("score30", "score 30-day backfill", score(keys[-30], keys[-1]))

    day = date.fromisoformat(keys[-1])  # yesterday's snapshot is landed untimed first
    stage(
        "snapshot",
        "snapshot to scores",
        setup=lambda: daily_snapshot_to_scores(defs, data, data / "raw", day),
    )


def daily_snapshot_to_scores(defs, data: Path, raw: Path, day: date) -> Callable[[], int]:
    """The daily loop's stage: from the snapshot of `day` landing (its folder, marker
    included, appearing in the watched folder) to its scores committed, through the
    sensor's evaluation and its run, in process (a running daemon adds its tick interval).

    The feed's side is done before: the snapshots of the day before and of `day` are cut
    from the export in `raw` and written beside the watched folder, and the export is
    released, so neither writing the files (6 to 8 s at scale 30) nor the bench's copies of
    the data (4.3 GB resident at scale 30) is in the stage's time or memory. A snapshot lands
    the way `write_snapshot` publishes one: the whole folder renamed into place. Untimed,
    the snapshot of the day before goes the same way on the same instance, so the timed
    run starts from yesterday's raw tables and per-seller state and applies one day of
    changes, as the feed's run does."""
    import gc

    import dagster as dg

    from olist_churn_dagster.lib.ingest.loader import load_dataset
    from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot
    from olist_churn_dagster.lib.tables import SCORES_TABLE

    sensor = defs.resolve_sensor_def("snapshot_sensor")
    job = defs.resolve_job_def(sensor.job_name)
    instance = dg.DagsterInstance.ephemeral()
    watched, staged = data / "snapshots", data / "snapshots-written"
    watched.mkdir(parents=True, exist_ok=True)
    tables = load_dataset(raw)
    for as_of in (day - timedelta(days=1), day):
        write_snapshot(cut_as_of(tables, as_of), staged, as_of)
    del tables
    gc.collect()
    cursor: list[str | None] = [None]

    def land(as_of: date) -> None:
        name = as_of.isoformat()
        if (watched / name).exists():  # a previous run's: replaced, as write_snapshot does
            shutil.rmtree(watched / name)
        os.rename(staged / name, watched / name)
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor[0], resources={"settings": defs.resources["settings"]}
        )
        evaluation = sensor(context)
        (request,) = evaluation.run_requests
        for partitions in evaluation.dynamic_partitions_requests:  # as the daemon does
            instance.add_dynamic_partitions(
                partitions.partitions_def_name, list(partitions.partition_keys)
            )
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
        )
        assert result.success, as_of
        cursor[0] = evaluation.cursor

    land(day - timedelta(days=1))

    def work() -> int:
        land(day)
        return _count(
            data / "warehouse.duckdb",
            f"SELECT count(*) FROM {SCORES_TABLE} WHERE reference_date = ?",
            [day],
        )

    return work


def _print(scale: float, rows: list[dict], base: dict[str, float]) -> None:
    """One line per stage; `base` holds the first scale's seconds per stage, and each line
    says how many times that this stage took (the linear-scaling check). CPU seconds and
    the load average at the stage's end tell a slow stage from a busy machine."""
    for r in rows:
        rate = f"{r['rows'] / r['seconds']:>12,.0f}" if r["rows"] and r["seconds"] else " " * 12
        rows_text = f"{r['rows']:>12,}" if r["rows"] else " " * 12
        peak = f"{r['peak_gb']:>8.2f}" if r["peak_gb"] else " " * 8
        growth = f"{r['seconds'] / base[r['stage']]:>7.1f}x" if r["stage"] in base else ""
        print(
            f"{scale:>5g}  {r['stage']:<32} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} "
            f"{rows_text} {rate} {peak}{growth:>9} {r['load']:>6.1f}",
            flush=True,
        )


MARKERS = ("<!-- pipeline:start -->", "<!-- pipeline:end -->")


def markdown_table(machine: str, by_scale: dict[float, list[dict]]) -> str:
    """The published table: per stage, seconds (CPU seconds) and peak GB at each scale,
    and the last scale's time against the first's (the linear-scaling check)."""
    scales = list(by_scale)
    first, last = scales[0], scales[-1]
    stages = list(dict.fromkeys(r["stage"] for rows in by_scale.values() for r in rows))
    cell = {(s, r["stage"]): r for s, rows in by_scale.items() for r in rows}
    head = " | ".join(f"scale {s:g}: s (CPU s) | peak GB" for s in scales)
    loads = [r["load"] for rows in by_scale.values() for r in rows]
    lines = [
        f"{machine}; `bench/pipeline.py --scales {' '.join(f'{s:g}' for s in scales)}`, "
        f"{date.today()}; load average {min(loads):.1f} to {max(loads):.1f}.",
        "",
        f"| stage | {head} | {last:g} vs {first:g} | rows at {last:g} |",
        "|---|" + "---|---|" * len(scales) + "---|---|",
    ]
    for stage in stages:
        cells = []
        for s in scales:
            r = cell.get((s, stage))
            cells += (
                [f"{r['seconds']:.1f} ({r['cpu_seconds']:.0f})", f"{r['peak_gb']:.2f}"]
                if r
                else ["n/a", "n/a"]
            )
        a, b = cell.get((first, stage)), cell.get((last, stage))
        growth = f"{b['seconds'] / a['seconds']:.1f}x" if a and b and len(scales) > 1 else ""
        rows = f"{b['rows']:,}" if b and b["rows"] else ""
        lines.append(f"| {stage} | {' | '.join(cells)} | {growth} | {rows} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, table: str) -> None:
    """Replace the lines between the markers of `path` with `table`."""
    text = path.read_text()
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {MARKERS[0]} ... {MARKERS[1]} block to write the table in")
    head = text[: start + len(MARKERS[0])]
    path.write_text(f"{head}\n{table}{text[end:]}")


def _machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    memory = psutil.virtual_memory().total / 1024**3
    return f"{os.cpu_count()} cores ({models[0] if models else 'unknown CPU'}), {memory:.0f} GiB"


def _too_big(scale: float, measured_scale: float, measured_peak_gb: float) -> bool:
    """Whether `scale` would not fit, taking the peak memory as linear in the scale
    (an upper bound: part of the peak does not grow with the data)."""
    total = psutil.virtual_memory().total / 1024**3
    return measured_peak_gb * scale / measured_scale > 0.9 * total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0, 30.0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-pipeline-bench"))
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to report"
    )
    parser.add_argument("--markdown", type=Path, help="file whose pipeline block gets the table")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_scale(args.root, args.child, tuple(args.stages))))
        return
    if args.markdown and MARKERS[0] not in args.markdown.read_text():
        raise SystemExit(f"{args.markdown}: no {MARKERS[0]} line to write the table after")
    print(f"pipeline benchmark, {date.today()}, {_machine()}")
    print(
        f"{'scale':>5}  {'stage':<32} {'seconds':>8} {'cpu_s':>8} {'rows':>12} {'rows/s':>12} "
        f"{'peak_GB':>8} {'vs first':>9} {'load':>6}",
        flush=True,
    )
    base: dict[str, float] = {}
    by_scale: dict[float, list[dict]] = {}
    champions: dict[float, dict[str, int]] = {}
    previous: tuple[float, float] | None = None  # (scale, peak GB) of the last scale run
    for scale in args.scales:
        if previous and _too_big(scale, *previous):
            need = previous[1] * scale / previous[0]
            print(f"{scale:>5g}  skipped: would need about {need:.0f} GB of memory", flush=True)
            continue
        out = run_scale_child(__file__, scale, "--root", str(args.root), "--stages", *args.stages)
        if out.returncode != 0:
            # A killed child (-9) is the kernel's out-of-memory killer: the scale does not fit.
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{scale:>5g}  failed with exit code {out.returncode}: {tail}", flush=True)
            continue
        child = scale_result(out)
        rows = child["stages"]
        if child["champion"]:
            champions[scale] = child["champion"]
        _print(scale, rows, base)
        by_scale[scale] = rows
        if not base:
            base = {r["stage"]: r["seconds"] for r in rows}
        previous = (scale, max(r["peak_gb"] for r in rows))
    if champions:  # what the scoring stages' growth includes beyond the rows
        sizes = "; ".join(
            f"scale {s:g}: {c['trees']} trees, {c['nodes']:,} nodes" for s, c in champions.items()
        )
        print(f"champion model: {sizes}", flush=True)
    if args.markdown and by_scale:
        write_markdown(args.markdown, markdown_table(_machine(), by_scale))
        print(f"table written to {args.markdown}")


if __name__ == "__main__":
    main()
