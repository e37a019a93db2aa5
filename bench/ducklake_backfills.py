"""Two feature backfills over disjoint date ranges on a DuckLake: at the same time in two
processes, against the same two one after the other; the single DuckDB file for reference.

    uv run python bench/ducklake_backfills.py [--scale 1] [--root /tmp/olist-ducklake-bench]

Each backfill is one process, as a run worker is: it loads the code location and runs
`build_feature_store` over its range as one run (in process, an ephemeral instance with the
range's partitions). Every warehouse starts with the raw tables and the features of the
first reference date (so its tables exist, as in a running deployment); the other dates are
split into two halves, A and B, which the backfills insert. Lines:

- DuckLake, A then B, and A and B at once (`--rounds` pairs, each on fresh lakes);
- DuckLake, A and B rewritten at once: both halves again over their own rows. DuckLake
  checks conflicts per table, so one of two steps replacing rows of the same table is
  refused at commit and retried by Dagster (the retries are counted);
- the single DuckDB file, A then B (it takes one writer);
- two separate DuckDB files, A and B at once: nothing shared, the machine's own limit for
  two processes, which DuckLake's concurrent line can only approach.

Postgres is started from the machine's binaries in a folder under `--root` (as the tests
do) unless `--postgres` gives a libpq string of a running server's maintenance database.
Figures are wall seconds; the load average is printed beside each, since the machine may
be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD_FLAG = "--child"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def _machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    return f"{os.cpu_count()} cores ({models[0] if models else 'unknown CPU'}), {pages:.0f} GiB"


def _child(first: str, last: str) -> None:
    """One backfill run in this process, on the warehouse of the environment."""
    import logging

    logging.disable(logging.WARNING)
    import dagster as dg

    from olist_churn_dagster.bootstrap import load_definitions
    from olist_churn_dagster.defs.partitions import register_reference_dates
    from olist_churn_dagster.defs.tags import range_tags
    from olist_churn_dagster.lib.calendar import day_range

    started = time.perf_counter()
    job = load_definitions().resolve_job_def("build_feature_store")
    instance = dg.DagsterInstance.ephemeral()
    register_reference_dates(
        instance, day_range(date.fromisoformat(first), date.fromisoformat(last))
    )
    result = job.execute_in_process(
        instance=instance, tags=range_tags(first, last), raise_on_error=False
    )
    retries = sum(
        1 for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "success": result.success,
                "seconds": time.perf_counter() - started,
                "retries": retries,
            }
        ),
        flush=True,
    )


def _start_child(env: dict[str, str], span: tuple[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, __file__, CHILD_FLAG, *span],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )


def _finish_child(proc: subprocess.Popen, log: Path) -> dict:
    text, _ = proc.communicate()
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if line is None or proc.returncode != 0:
        raise SystemExit(f"a backfill failed ({proc.returncode}); see {log}")
    report = json.loads(line.removeprefix("RESULT "))
    if not report["success"]:
        raise SystemExit(f"a backfill run failed; see {log}")
    return report


def _backfills(env: dict[str, str], spans: list[tuple[str, str]], log: Path) -> tuple[float, list]:
    """Start one process per span at once; wall seconds until all ended, and their reports."""
    started = time.perf_counter()
    procs = [_start_child(env, span, log) for span in spans]
    reports = [_finish_child(proc, log) for proc in procs]
    return time.perf_counter() - started, reports


def _settings_env(data: Path, warehouse: str, data_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLIST_CHURN_")}
    env.update(OLIST_CHURN_DATA_DIR=str(data), OLIST_CHURN_WAREHOUSE=warehouse)
    if data_path is not None:
        env["OLIST_CHURN_WAREHOUSE_DATA_PATH"] = str(data_path)
    return env


def _load_raw(data: Path, warehouse: str, data_path: Path | None) -> list[str]:
    """The raw tables into the warehouse (not timed); the reference dates they serve."""
    import dagster as dg

    from olist_churn_dagster.bootstrap import load_definitions
    from olist_churn_dagster.defs.warehouse import warehouse_resources

    os.environ["OLIST_CHURN_DATA_DIR"] = str(data)
    instance = dg.DagsterInstance.ephemeral()
    result = (
        load_definitions()
        .resolve_job_def("load_raw_tables")
        .execute_in_process(
            instance=instance,
            resources=warehouse_resources(warehouse, data_path),
            raise_on_error=False,
        )
    )
    if not result.success:
        raise SystemExit(f"loading the raw tables into {warehouse} failed")
    return instance.get_dynamic_partitions("reference_date")


def _row(label: str, seconds: float, reports: list, load: str, note: str = "") -> None:
    each = " + ".join(f"{r['seconds']:.1f}" for r in reports)
    retries = sum(r["retries"] for r in reports)
    print(
        f"{label:<44} {seconds:7.1f} s  (runs {each} s; retries {retries}; {load}){note}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-ducklake-bench"))
    parser.add_argument("--rounds", type=int, default=1, help="DuckLake pairs to measure")
    parser.add_argument("--postgres", help="libpq string of a running server (else one is started)")
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    from olist_churn_dagster.lib.warehouse import close_ducklakes
    from olist_churn_dagster.stack import postgres

    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    args.root.chmod(0o711)  # as root, Postgres runs as `postgres` and must reach its folder
    data, log = args.root / "data", args.root / "backfills.log"
    subprocess.run(
        [str(REPO / ".venv/bin/olist-churn"), "generate", str(data / "raw"), "--scale",
         str(args.scale)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip

    server = None
    if args.postgres is None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = postgres.start(args.root / "pg", port, secrets.token_urlsafe(16))
        os.environ.update(server.client_env)  # this process and the backfills it starts
    try:

        def warehouse(kind: str) -> tuple[dict[str, str], list[str]]:
            """A new warehouse holding the raw tables and the features of the first date
            (so its tables exist, as in a running deployment): its settings, the dates."""
            name = f"bench_{uuid.uuid4().hex[:8]}"
            if kind == "file":
                database, files = str(args.root / f"{name}.duckdb"), None
            else:
                if server is not None:
                    postgres.create_database(server, name)
                    libpq = server.libpq(name)
                else:
                    libpq = _create_on(args.postgres, name)
                database, files = f"ducklake:postgres:{libpq}", args.root / "lake-files" / name
            keys = _load_raw(data, database, files)
            env = _settings_env(data, database, files)
            _backfills(env, [(keys[0], keys[0])], log)
            return env, keys

        print(f"DuckLake backfills, {date.today()}, {_machine()}, scale {args.scale:g}")
        lake, keys = warehouse("lake")
        half = len(keys) // 2
        spans = [(keys[1], keys[half]), (keys[half + 1], keys[-1])]
        print(f"{len(keys) - 1} new reference dates per warehouse (the first is there): "
              f"A {spans[0][0]}..{spans[0][1]}, B {spans[1][0]}..{spans[1][1]}")  # fmt: skip

        for round_number in range(args.rounds):
            if round_number:
                lake, _ = warehouse("lake")
            load = _load()
            sequential = [_backfills(lake, [span], log) for span in spans]
            seq_seconds = sum(s for s, _ in sequential)
            _row("DuckLake, A then B", seq_seconds, [r for _, rs in sequential for r in rs], load)
            lake, _ = warehouse("lake")
            load = _load()
            conc_seconds, reports = _backfills(lake, spans, log)
            ratio = f"  -> {conc_seconds / seq_seconds:.2f}x of A then B"
            _row("DuckLake, A and B at once (two processes)", conc_seconds, reports, load, ratio)

        load = _load()
        rewrite_seconds, reports = _backfills(lake, spans, log)
        _row("DuckLake, A and B rewritten at once", rewrite_seconds, reports, load,
             f"  -> {rewrite_seconds / seq_seconds:.2f}x")  # fmt: skip

        single, _ = warehouse("file")
        load = _load()
        file_runs = [_backfills(single, [span], log) for span in spans]
        file_seconds = sum(s for s, _ in file_runs)
        _row("single DuckDB file, A then B (one writer)", file_seconds,
             [r for _, rs in file_runs for r in rs], load)  # fmt: skip

        # The machine's own limit: the same two processes on two separate files, nothing
        # shared. DuckLake's concurrent line can only approach this.
        (first, _), (second, _) = warehouse("file"), warehouse("file")
        load = _load()
        started = time.perf_counter()
        envs = [first, second]
        procs = [_start_child(env, span, log) for env, span in zip(envs, spans, strict=True)]
        reports = [_finish_child(proc, log) for proc in procs]
        separate = time.perf_counter() - started
        _row("two separate DuckDB files, A and B at once", separate, reports, load,
             f"  -> {separate / file_seconds:.2f}x of the file's A then B")  # fmt: skip
        close_ducklakes()
    finally:
        if server is not None:
            postgres.stop(server.data_dir)


def _create_on(maintenance: str, name: str) -> str:
    """Create database `name` on the server of libpq string `maintenance`; its libpq string."""
    import duckdb
    from duckdb_extensions import import_extension

    with duckdb.connect() as conn:
        import_extension("postgres", con=conn)
        conn.execute("LOAD postgres")
        conn.execute(f"ATTACH '{maintenance}' AS pg (TYPE postgres)")
        conn.execute(f"CALL postgres_execute('pg', 'CREATE DATABASE {name}')")
    words = [w for w in maintenance.split() if not w.startswith("dbname=")]
    return " ".join([f"dbname={name}", *words])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
