"""Peak memory and time of reading a long full-HD reference clip with ``reenact.video``.

Makes a 60 s 1920x1080 H.264 clip at 30 fps (1800 frames of a moving pattern, libx264
``ultrafast``) in a temporary folder, then reads it in a fresh subprocess the way ``invert``
does -- ``reenact.video.load_reference(path, F, native_size=(576, 1024))`` -- and reports the
growth of the process's peak RSS over the baseline after imports (``VmHWM`` reset through
``/proc/self/clear_refs``) and the wall time, plus what the clip info says. Linux only.

Usage::

    python benchmarks/video_read.py                 # 60 s at 1080p, F = 14
    python benchmarks/video_read.py --seconds 10 --frames 25
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int) -> float:
    """A moving gradient with a bright square (cheap to encode, not trivially compressible)."""
    import av
    import numpy as np

    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part.mp4")
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx + yy) % 256).astype(np.uint16)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(seconds * fps)):
            a = np.repeat(((base + 3 * i) % 256).astype(np.uint8)[..., None], 3, axis=2)
            x = (i * 17) % (width - 200)
            a[400:600, x:x + 200] = (240, 60, 60)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)  # a --keep clip is complete or absent
    return time.perf_counter() - t0


def _kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def worker(path: str, frames: int, height: int, width: int) -> None:
    """Import, take the baseline, read, print one JSON line."""
    import torch

    from reenact import video

    torch.set_num_threads(1)
    base = _kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    clip, info = video.load_reference(path, frames, native_size=(height, width))
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds,
        "rss_baseline_mb": base / 1024,
        "rss_peak_above_baseline_mb": (_kb("VmHWM") - base) / 1024,
        "shape": list(clip.shape),
        "describe": info.describe(),
        "notes": list(info.notes),
        "fps": info.fps,
    }))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--size", default="1920x1080", help="WxH of the clip")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--frames", type=int, default=14, help="F frames to read")
    p.add_argument("--native", default="576x1024", help="the model's HxW")
    p.add_argument("--keep", help="write the clip here (and reuse it if it exists)")
    p.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        path, frames, h, w = args._worker
        worker(path, int(frames), int(h), int(w))
        return 0

    width, height = (int(v) for v in args.size.split("x"))
    nh, nw = (int(v) for v in args.native.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "long.mp4"
        made = None
        if not path.exists():
            made = make_clip(path, args.seconds, width, height, args.fps)
        size_mb = path.stat().st_size / 1e6
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_worker", str(path), str(args.frames),
             str(nh), str(nw)],
            capture_output=True, text=True, env=env, check=True,
        )
        rec = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"clip: {args.seconds:g} s, {width}x{height} at {args.fps} fps, H.264 ultrafast, "
          f"{size_mb:.1f} MB" + (f" (encoded in {made:.0f} s)" if made else ""))
    print(f"read with load_reference(F={args.frames}, native {nh}x{nw}): {rec['seconds']:.1f} s, "
          f"peak RSS {rec['rss_peak_above_baseline_mb']:.0f} MB above the baseline of "
          f"{rec['rss_baseline_mb']:.0f} MB after imports; frames {rec['shape']}")
    print(f"info: {rec['describe']}; fps conditioning {rec['fps']}")
    for note in rec["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
