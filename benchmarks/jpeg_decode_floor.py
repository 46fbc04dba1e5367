"""What decoding a camera JPEG costs before any face work: the floor under issue #22's speed target.

A JPEG must be entropy-decoded (Huffman) in full whatever scale it is decoded at; DCT scaling (Pillow's
``draft``) saves the inverse transform and the pixels, not that pass. This times Pillow's decode of the
same generated photo (``bench_camera.make_canvas``, group layout, JPEG quality 92) at 24 MP in full and at
1/2, 1/4 and 1/8, and at 1.5 MP in full, best of ``--runs``, one thread.

    PYTHONPATH=src .venv/bin/python benchmarks/jpeg_decode_floor.py
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_camera import SIZES, make_canvas  # noqa: E402 - the shared photo maker, next to this file


def decode_ms(data: bytes, factor: int, runs: int) -> float:
    """Best wall time (ms) of decoding ``data`` at 1/``factor`` (DCT draft; 1 = full)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            if factor > 1:
                im.draft("RGB", (im.width // factor, im.height // factor))
            im.load()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    canvas = make_canvas(SIZES["24 MP"], 0, "group")
    photos = {}
    for name, img in (("24 MP", canvas), ("1.5 MP", canvas.resize(SIZES["1.5 MP"]))):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        photos[name] = buf.getvalue()
    print("| photo | file MB | decode | ms |\n|---|---|---|---|")
    for name, factors in (("24 MP", (1, 2, 4, 8)), ("1.5 MP", (1,))):
        for f in factors:
            scale = "full" if f == 1 else f"1/{f}"
            print(f"| {name} | {len(photos[name]) / 1e6:.1f} | {scale} | {decode_ms(photos[name], f, args.runs):.1f} |")


if __name__ == "__main__":
    main()
