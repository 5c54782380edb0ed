"""One PNG of cancel-latency distributions, ours beside the peers', from cancel_latency.py's
--json output (needs the `bench` extra: matplotlib).

    python -m benchmarks.chart single.json [cross.json ...] -o benchmarks/cancel_latency.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/cancel_latency.png"))
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    styles = {"runner": "-", "procrastinate": "--", "pgqueuer": ":"}
    for path in args.inputs:
        run = json.loads(path.read_text())
        for name, samples in run["samples_ms"].items():
            data = sorted(samples)
            ys = [100 * (i + 1) / len(data) for i in range(len(data))]
            label = (
                f"{name} ({run['mode']}, n={len(data)}): p50 {data[len(data) // 2]:.2f} ms, "
                f"p99 {data[min(len(data) - 1, round(0.99 * (len(data) - 1)))]:.2f} ms"
            )
            ax.plot(data, ys, styles.get(name, "-."), linewidth=1.6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("cancel call -> fake GPU endpoint sees its connection close (ms, log scale)")
    ax.set_ylabel("percent of cancels at or below")
    ax.axhline(99, color="grey", linewidth=0.6)
    ax.text(ax.get_xlim()[0] * 1.05, 99.3, "p99", color="grey", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(args.title or "Cancel latency, 1,000 jobs in flight, one cancel at a time")
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
