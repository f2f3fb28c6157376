#!/usr/bin/env python3
"""Draws a soak's samples (relay-load --soak-csv) as a PNG: the broker's RSS and its file
descriptors over time, with tracked tasks and pending rendezvous beside them.

    python3 benches/soak_plot.py target/soak-30min.csv benches/soak-30min.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    minutes = [float(r["secs"]) / 60 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(minutes, [int(r["rss_bytes"]) / 1048576 for r in rows], color="tab:blue")
    top.set_ylabel("broker RSS (MiB)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    bottom.plot(minutes, [int(r["fds"]) for r in rows], label="file descriptors")
    bottom.plot(minutes, [int(r["tasks"]) for r in rows], label="tracked tasks")
    bottom.plot(minutes, [int(r["pending"]) for r in rows], label="pending rendezvous")
    bottom.set_ylabel("count")
    bottom.set_xlabel("minutes of mixed traffic")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left")
    fig.suptitle("relay-broker under a soak (relay-load --soak-secs)")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
