"""`olist-churn`: the command line for what happens outside the Dagster UI."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from olist_churn_dagster.generator.sellers import DYNAMICS
from olist_churn_dagster.lib.settings import load_settings


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from exc


def _every(text: str) -> int:
    match = re.fullmatch(r"(\d+)d?", text.strip())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of days such as 1d or 7d")
    return int(match.group(1))


def _generate(args: argparse.Namespace) -> None:
    from olist_churn_dagster.generator.marketplace import (
        default_real_dir,
        generate_dataset,
        generate_demo_feed,
    )

    started = time.perf_counter()
    options = {
        "scale": args.scale,
        "seed": args.seed,
        "start": args.start,
        "end": args.end,
        "real_dir": None if args.no_real else default_real_dir(),
        "dynamics": args.dynamics,
    }
    if args.feed:
        as_of, counts = generate_demo_feed(
            args.out_dir, args.feed, feed_days=args.feed_days, **options
        )
    else:
        counts = generate_dataset(args.out_dir, **options)
    seconds = time.perf_counter() - started
    for table, rows in counts.items():
        print(f"{table:22s} {rows:>12,d}")
    if args.feed:
        print(f"wrote {args.feed} and {args.out_dir} (as of {as_of}) in {seconds:.1f} s")
        print(f"`olist-churn replay {args.feed}` delivers the {args.feed_days} days after {as_of}")
    else:
        print(f"wrote {args.out_dir} in {seconds:.1f} s")


def _replay(args: argparse.Namespace) -> None:
    from olist_churn_dagster.lib.ingest.snapshots import replay

    out = args.out or load_settings().snapshots_dir
    written = replay(args.src_dir, args.start, args.end, every_days=args.every, out_root=out)
    for path in written:
        print(path)
    print(f"wrote {len(written)} snapshots under {out}")


def _prepare(args: argparse.Namespace) -> None:
    import dagster as dg

    from olist_churn_dagster.bootstrap import JobFailed, log_path, prepare

    settings = load_settings()
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        try:
            done = prepare(settings, instance, log=lambda line: print(line, flush=True))
        except JobFailed as exc:
            print(f"olist-churn prepare: {exc}", file=sys.stderr)
            print(f"the events of every run: {log_path(settings)}", file=sys.stderr)
            raise SystemExit(1) from None
    seconds = time.perf_counter() - started
    print(f"prepared {', '.join(done)} in {seconds:.1f} s" if done else "already prepared")
    print(f"  data:       {settings.data_dir}")
    print(f"  events log: {log_path(settings)}")
    print(f"  Dagster UI: {args.ui} (`make run` serves it)")


def replace_section(text: str, name: str, body: str) -> str:
    """Replace what stands between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        raise ValueError(f"no {start} ... {end} section")
    return head + start + "\n" + body.rstrip("\n") + "\n" + end + rest.partition(end)[2]


FEATURES_DOC = Path("docs") / "features.md"


def _catalogue(args: argparse.Namespace) -> None:
    from olist_churn_dagster.lib.ml.catalogue import catalogue_markdown

    if args.write:
        args.write.write_text(
            replace_section(args.write.read_text(), "catalogue", catalogue_markdown())
        )
        print(f"updated the feature catalogue in {args.write}")
    else:
        print(catalogue_markdown())


def _stack(args: argparse.Namespace) -> None:
    from olist_churn_dagster.stack import servers
    from olist_churn_dagster.stack.postgres import PostgresError

    root = args.root or load_settings().data_dir / "stack"
    try:
        if args.action == "up":
            config = servers.StackConfig(
                root=root,
                ports=servers.Ports(
                    postgres=args.postgres_port,
                    grpc=args.grpc_port,
                    webserver=args.webserver_port,
                    mlflow=args.mlflow_port,
                ),
                warehouse=args.warehouse,
            )
            servers.up(config, log=lambda line: print(line, flush=True))
            print(f"the stack runs from {config.root}; logs in {config.logs_dir}")
            print(f"  Dagster UI: {config.webserver_url}   MLflow UI: {config.mlflow_url}")
            print(f"  input files: {config.root / 'raw'} (`make stack` generates them)")
            print("  stop it with `make stack-stop` (olist-churn stack down)")
        elif args.action == "down":
            servers.down(root, log=lambda line: print(line, flush=True))
        else:
            states = servers.status(root)
            print(f"{'server':<12} {'state':<9} {'pid':>7} {'uptime':>9} {'restarts':>8}  where")
            for s in states:
                uptime = str(timedelta(seconds=round(s.uptime))) if s.pid else "-"
                pid = s.pid or "-"
                print(f"{s.name:<12} {s.state:<9} {pid:>7} {uptime:>9} {s.restarts:>8}  {s.detail}")
            if not all(state.running for state in states):
                raise SystemExit(1)
    except (servers.StackError, PostgresError) as exc:
        print(f"olist-churn stack {args.action}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olist-churn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write a synthetic Olist dataset")
    generate.add_argument("out_dir", type=Path)
    generate.add_argument("--scale", type=float, default=1.0, help="1.0 ~ the real dataset")
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument(
        "--start",
        type=_date,
        help="first purchase day (default: ~25 months back)",
    )
    generate.add_argument("--end", type=_date, help="last purchase day (default yesterday)")
    generate.add_argument(
        "--no-real", action="store_true", help="ignore ../shared/olist-real even if present"
    )
    generate.add_argument(
        "--dynamics",
        choices=sorted(DYNAMICS),
        default="default",
        help="what drives seller churn: 'default', or 'delivery' (delivery trouble, abrupt exits)",
    )
    generate.add_argument(
        "--feed",
        type=Path,
        metavar="DIR",
        help="write the whole dataset to DIR, and OUT_DIR as of --feed-days before its end "
        "(declared in OUT_DIR/_SUCCESS), so `replay DIR` can deliver the days after OUT_DIR",
    )
    generate.add_argument(
        "--feed-days", type=int, default=7, metavar="N", help="days the feed holds (default 7)"
    )
    generate.set_defaults(func=_generate)

    replay_cmd = commands.add_parser("replay", help="cut as-of snapshots from a full dataset")
    replay_cmd.add_argument("src_dir", type=Path)
    replay_cmd.add_argument("--start", type=_date, required=True)
    replay_cmd.add_argument("--end", type=_date, required=True)
    replay_cmd.add_argument("--every", type=_every, default=1, help="step, e.g. 1d or 7d")
    replay_cmd.add_argument(
        "--out", type=Path, help="snapshots root (default $OLIST_CHURN_DATA_DIR/snapshots)"
    )
    replay_cmd.set_defaults(func=_replay)

    prepare_cmd = commands.add_parser(
        "prepare", help="materialize what the UI should open on (skips what is done)"
    )
    prepare_cmd.add_argument(
        "--ui", default="http://127.0.0.1:3000", help="the UI's address, for the summary"
    )
    prepare_cmd.set_defaults(func=_prepare)

    catalogue = commands.add_parser("catalogue", help="print the feature catalogue (markdown)")
    catalogue.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help=f"rewrite the catalogue section of FILE (the repository's is {FEATURES_DOC})",
    )
    catalogue.set_defaults(func=_catalogue)

    stack = commands.add_parser(
        "stack",
        help="the deployed stack on this machine, under supervisord: Postgres, Dagster servers, "
        "MLflow",
    )
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument(
        "--root", type=Path, help="the stack's folder (default $OLIST_CHURN_DATA_DIR/stack)"
    )
    defaults = _stack_defaults()
    stack.add_argument("--warehouse", choices=defaults["warehouses"], default="ducklake")
    for name in ("postgres", "grpc", "webserver", "mlflow"):
        stack.add_argument(f"--{name}-port", type=int, default=defaults[name], metavar="PORT")
    stack.set_defaults(func=_stack)
    return parser


def _stack_defaults() -> dict:
    from dataclasses import asdict

    from olist_churn_dagster.stack.servers import WAREHOUSES, Ports

    return {**asdict(Ports()), "warehouses": WAREHOUSES}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as exc:
        print(f"olist-churn {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
