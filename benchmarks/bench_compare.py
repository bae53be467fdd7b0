"""Benchmark ``cotviz compare`` counting: every row of a paper table on the meta device, after imports.

Target (the compare issue): counting all five rows of ``--paper table7`` at 224 px takes < 3 s after
``import torch, cotviz.compare``, with no weights in memory. Each repeat runs in a fresh subprocess, so every
figure is a cold first count; the script prints the median and the peak RSS growth of the count next to the
fp32 weight size of one row (counting must not materialise weights). Asserts nothing.

Usage: ``python benchmarks/bench_compare.py [--paper table7] [--size 224] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(paper: str, size: int) -> dict[str, Any]:
    import torch  # noqa: F401

    from cotviz.compare import compare

    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    c = compare(paper=paper, size=size)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": len(c.rows), "peak_growth_mib": (_status_kib("VmHWM") - rss0) / 1024,
            "weights_mib": max(r.params for r in c.rows) * 4 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", default="table7")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.paper, args.size)))
        return
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--child", "--paper", args.paper, "--size", str(args.size)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    secs = [r["seconds"] for r in runs]
    print(f"compare --paper {args.paper} at {args.size} px: {runs[0]['rows']} rows counted in "
          f"{statistics.median(secs):.2f} s after imports (median of {len(secs)}: {', '.join(f'{s:.2f}' for s in secs)}; "
          f"target < 3 s; load average {' '.join(load)})")
    print(f"peak RSS growth {statistics.median(r['peak_growth_mib'] for r in runs):.0f} MiB vs "
          f"{runs[0]['weights_mib']:.0f} MiB of fp32 weights for the largest row (counting allocates none)")


if __name__ == "__main__":
    main()
