"""How long one compression step holds the event loop, per coding, level and step size.

A step is one `Compressor.feed` of what the edge read at once (a server read, a file read):
the loop runs nothing else meanwhile. Prints the median and worst of many steps over
JSON-like text, in milliseconds (CPU of this process, one thread).

    .venv/bin/python bench/compress_steps.py [--sizes 16,64,256] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from portico.compression.codecs import Compressor

LEVELS = {"gzip": [1, 5, 9], "br": [1, 4, 6, 9, 11], "zstd": [1, 3, 9, 19]}


def sample(size: int) -> bytes:
    """JSON records like an API's: repetitive keys, varied values."""
    rng = random.Random(7)
    out = bytearray()
    while len(out) < size:
        record = {
            "id": rng.randrange(10**9),
            "name": "".join(rng.choice("abcdefghijklmnop") for _ in range(12)),
            "price": round(rng.random() * 1000, 2),
            "tags": [rng.choice(["red", "green", "blue", "sale", "new"]) for _ in range(3)],
        }
        out += json.dumps(record).encode() + b",\n"
    return bytes(out[:size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256", help="step sizes in KiB")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) * 1024 for s in args.sizes.split(",")]
    data = sample(max(sizes) * args.rounds)
    print(f"{'coding':6} {'level':>5} " + " ".join(f"{s // 1024:>9} KiB" for s in sizes))
    for coding, levels in LEVELS.items():
        for level in levels:
            cells = []
            for size in sizes:
                compressor = Compressor(coding, level)
                times = []
                for i in range(args.rounds):
                    piece = data[i * size : (i + 1) * size]
                    started = time.process_time()
                    compressor.feed(piece)
                    times.append((time.process_time() - started) * 1000)
                compressor.end()
                cells.append(f"{statistics.median(times):5.2f}/{max(times):5.2f}")
            print(f"{coding:6} {level:>5} " + " ".join(f"{c:>13}" for c in cells))
    print("(median/worst ms per step)")


if __name__ == "__main__":
    main()
