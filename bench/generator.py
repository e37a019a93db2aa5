"""Time and peak memory of the synthetic data generator at given scales.

Each scale runs in its own child process, so the peak resident memory reported is that
run's own (ru_maxrss of the child), not the largest of all runs so far.

    uv run python bench/generator.py 1 10 [--real] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(scale: float, seed: int, out: Path, real: bool) -> None:
    from olist_churn_dagster.generator.marketplace import default_real_dir, generate_dataset

    began = time.perf_counter()
    counts = generate_dataset(
        out, scale=scale, seed=seed, real_dir=default_real_dir() if real else None
    )
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "csv_mb": size_mb, **counts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scales", nargs="*", type=float, default=[1.0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--real", action="store_true", help="draw from ../shared/olist-real")
    parser.add_argument("--out", type=Path, help="keep the files here (default: temp dir)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.scales[0], args.seed, args.out, args.real)
        return
    for scale in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out / f"scale-{scale:g}" if args.out else Path(tmp)
            cmd = [sys.executable, __file__, str(scale), "--child", "--seed", str(args.seed)]
            cmd += ["--out", str(out)] + (["--real"] if args.real else [])
            began = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - began
            stats = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"scale {scale:g}: generate {stats['seconds']:.1f} s "
                f"(process wall {wall:.1f} s incl. imports), "
                f"peak RSS {stats['peak_rss_mb']:.0f} MB, CSV {stats['csv_mb']:.0f} MB, "
                f"orders {stats['orders']:,}, items {stats['order_items']:,}, "
                f"sellers {stats['sellers']:,}"
            )


if __name__ == "__main__":
    main()
