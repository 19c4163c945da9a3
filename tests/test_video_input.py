"""Video input that scales and says what it used (issue 8): streaming, time-based selection,
clip info, orientation, non-square pixels, truncated files, animated PNGs, cover-art streams.

All media is made here with PyAV / PIL in temporary folders. Each frame's grey level encodes
its index (``LEVEL * i``), so after a lossy codec we can still tell which source frame a
returned frame is.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from reenact import video as V
from reenact.errors import InputError

LEVEL = 12  # grey step per source frame: frame i is grey 8 + LEVEL*(i % 20) (fits in 255)


def grey(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    return np.full((h, w, 3), 8 + LEVEL * (i % 20), np.uint8)


def frame_index(t) -> int:
    """Which source frame a returned frame (tensor in [-1, 1] or PIL image) shows."""
    if isinstance(t, Image.Image):
        value = float(np.asarray(t, np.float32).mean())
    else:
        value = float((t.float().mean() + 1) * 127.5)
    return int(round((value - 8) / LEVEL))


def write_mp4(path, times_ms, w=64, h=48, sar=None, faststart=False, content=grey):
    """An H.264 mp4 whose frame i has presentation time ``times_ms[i]`` (variable rate allowed)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "10"}
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        for i, t in enumerate(times_ms):
            f = av.VideoFrame.from_ndarray(content(i, w, h), format="rgb24")
            f.pts, f.time_base = int(t), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_variable_frame_rate_clips_are_sampled_evenly_in_time(tmp_path):
    # a burst of 15 frames in 140 ms, then 5 frames one second apart: by index, 4 of 5 samples
    # would land in the burst; by time they spread over the 5.14 s
    times = [10 * i for i in range(15)] + [140 + 1000 * k for k in range(1, 6)]
    path = write_mp4(tmp_path / "vfr.mp4", times)
    frames, info = V.load_reference(path, 5, 48, 64)
    t_last = times[-1] / 1000
    targets = [k * t_last / 4 for k in range(5)]
    expected = [min(range(len(times)), key=lambda i: (abs(times[i] / 1000 - t), -i)) for t in targets]
    assert list(info.source_indices) == expected == [0, 15, 16, 18, 19]
    assert [frame_index(f) for f in frames] == expected  # the pixels are those frames
    assert info.timestamps == pytest.approx([times[i] / 1000 for i in expected])
    by_index = V.choose_indices(len(times), 5)  # what index-based sampling would have taken
    assert by_index == [0, 5, 10, 14, 19]


def test_constant_rate_clip_info_and_effective_fps(tmp_path):
    path = write_mp4(tmp_path / "cfr.mp4", [100 * i for i in range(20)])  # 10 fps, 2 s
    frames, info = V.load_reference(path, 4, 48, 64, end=7)
    assert list(info.source_indices) == [0, 2, 4, 6]
    assert info.span_seconds == pytest.approx(0.6)
    assert info.effective_fps == pytest.approx(5.0)  # (F - 1) / span
    assert info.fps == 5 and info.source_frames == 20 and info.kind == "video"
    assert info.header_frames == 20
    assert info.size == (48, 64) and info.display_size == (64, 48) and info.stored_size == (64, 48)
    assert info.notes == ()
    meta = info.to_metadata()
    assert meta["source_indices"] == [0, 2, 4, 6] and meta["span_seconds"] == pytest.approx(0.6)
    assert meta["fps"] == 5 and meta["display_aspect"] == pytest.approx(64 / 48)
    import json
    json.dumps(meta)  # JSON-ready
    assert "frames 0..6 of 20" in info.describe() and "span 0.60 s" in info.describe()


def test_frames_far_apart_in_time_are_noted_with_a_window_that_keeps_the_pace(tmp_path):
    path = write_mp4(tmp_path / "long.mp4", [100 * i for i in range(60)])  # 6 s at 10 fps
    _, info = V.load_reference(path, 4, 48, 64)
    assert info.span_seconds == pytest.approx(5.9)
    assert info.fps == V.FPS_RANGE[0]  # 0.5 fps effective, clamped to the model's range
    (note,) = info.notes
    assert "span 5.9 s" in note and "end=7" in note and str(path) in note and "\n" not in note
    assert info.to_metadata()["notes"] == [note.replace(str(path), "long.mp4")]  # no user paths
    # following the advice gives a rate inside the range and no note
    _, advised = V.load_reference(path, 4, 48, 64, end=7)
    assert advised.effective_fps >= V.FPS_RANGE[0] and advised.notes == ()


def test_frames_too_close_in_time_are_noted(tmp_path):
    path = write_mp4(tmp_path / "slowmo.mp4", [5 * i for i in range(10)])  # 200 fps
    _, info = V.load_reference(path, 4, 48, 64)
    assert info.fps == V.FPS_RANGE[1] and len(info.notes) == 1 and "stride" in info.notes[0]


def test_only_the_used_frames_are_converted_and_decoding_stops_after_the_last(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "clip.mp4", [100 * i for i in range(20)])
    converted = []
    real = V._upright
    monkeypatch.setattr(V, "_upright", lambda frame, sar: converted.append(frame.time) or real(frame, sar))
    frames, info = V.load_reference(path, 4, 24, 32, end=10)
    assert list(info.source_indices) == [0, 3, 6, 9]
    assert converted == pytest.approx([0.0, 0.3, 0.6, 0.9])  # 4 of 20 frames, none after 0.9 s
    assert [frame_index(f) for f in frames] == [0, 3, 6, 9]
    assert frames.shape == (4, 3, 24, 32)


def test_portrait_clips_get_the_portrait_size_unless_a_size_is_given(tmp_path):
    path = write_mp4(tmp_path / "portrait.mp4", [100 * i for i in range(4)], w=48, h=64)
    frames, info = V.load_reference(path, 4, native_size=(32, 64))
    assert frames.shape == (4, 3, 64, 32) and info.size == (64, 32)
    frames, _ = V.load_reference(path, 4, 32, 64)  # given: kept
    assert frames.shape == (4, 3, 32, 64)
    landscape = write_mp4(tmp_path / "landscape.mp4", [100 * i for i in range(4)])
    assert V.load_reference(landscape, 4, native_size=(32, 64))[1].size == (32, 64)
    photo = tmp_path / "portrait.jpg"
    Image.new("RGB", (60, 90), (10, 200, 30)).save(photo)
    assert V.load_image(photo, native_size=(32, 64)).size == (32, 64)  # PIL: (width, height)
    assert V.load_image(photo, 32, 64).size == (64, 32)
    assert V.oriented_size(576, 1024, 9 / 16) == (1024, 576)
    assert V.oriented_size(576, 1024, 16 / 9) == (576, 1024)
    assert V.oriented_size(576, 1024, 1.0) == (576, 1024)


def test_non_square_pixels_are_read_at_the_display_aspect(tmp_path):
    """A 64x48 stored frame with 4:3 pixels is displayed 85x48 (16:9), like 720x576 PAL wide."""
    def circle(i, w, h):
        # a disc that is round on *screen*: an ellipse 3/4 as wide in stored pixels
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.full((h, w, 3), 30, np.uint8)
        a[((xx - w / 2) * 4 / 3) ** 2 + (yy - h / 2) ** 2 < 18 ** 2] = 220
        return a

    path = write_mp4(tmp_path / "anamorphic.mp4", [100 * i for i in range(4)], sar=Fraction(4, 3),
                     content=circle)
    (first, *_), = [V.read_frames(path)]
    assert first.size == (85, 48)
    _, info = V.load_reference(path, 2, native_size=(32, 64))
    assert info.stored_size == (64, 48) and info.display_size == (85, 48)
    mask = np.asarray(first)[..., 0] > 128
    rows, cols = np.nonzero(mask)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert abs(width - height) <= 2, (width, height)  # round again, not stretched


def test_a_truncated_mp4_is_read_as_far_as_it_goes_and_says_so(tmp_path):
    rng = np.random.default_rng(0)

    def noise(i, w, h):  # incompressible, so the cut lands in the frame data
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    full = write_mp4(tmp_path / "full.mp4", [100 * i for i in range(14)], w=128, h=96,
                     faststart=True, content=noise)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    frames, info = V.load_reference(cut, 4, 24, 32)
    assert frames.shape == (4, 3, 24, 32)
    assert info.header_frames == 14 and 2 <= info.source_frames < 14
    (note,) = info.notes
    assert "promises 14 frames" in note and f"only {info.source_frames}" in note and str(cut) in note
    assert not [n for n in V.load_reference(full, 4, 24, 32)[1].notes if "promises" in n]


def test_animated_png_is_a_clip_where_a_clip_is_expected_and_refused_as_a_still(tmp_path):
    path = tmp_path / "anim.png"
    images = [Image.fromarray(grey(i)) for i in range(6)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    frames = V.read_frames(path)
    assert [frame_index(f) for f in frames] == list(range(6))
    clip, info = V.load_reference(path, 3, 48, 64)
    assert list(info.source_indices) == [0, 3, 5]  # 0.25 s is a tie of 0.2 and 0.3: the later
    assert [frame_index(f) for f in clip] == [0, 3, 5]
    assert info.kind == "animated" and info.span_seconds == pytest.approx(0.5)
    with pytest.raises(InputError, match=r"anim.png: is animated \(6 frames\)"):
        V.load_image(path)
    still = tmp_path / "still.png"
    images[0].save(still)
    with pytest.raises(InputError, match="is a still image"):
        V.read_frames(still)
    assert V.load_image(still).size == (64, 48)


@pytest.mark.parametrize("flags", ["real is default", "both default", "none set"])
def test_mkv_with_a_cover_picture_first_reads_the_real_video_stream(tmp_path, flags):
    """Matroska writers mark tracks "default" freely (mkvmerge: every track unless told
    otherwise), so the choice cannot rest on the flag alone: a one-frame stream never wins."""
    path = tmp_path / "cover.mkv"
    from av.stream import Disposition

    with av.open(str(path), "w") as c:
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        real = c.add_stream("libx264", rate=10)
        real.width, real.height, real.pix_fmt = 64, 48, "yuv420p"
        if flags != "none set":
            real.disposition = Disposition.default
        if flags == "both default":
            cover.disposition = Disposition.default
        for p in cover.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 250, np.uint8),
                                                         format="rgb24")):
            c.mux(p)
        for p in cover.encode():
            c.mux(p)
        for i in range(10):
            for p in real.encode(av.VideoFrame.from_ndarray(grey(i), format="rgb24")):
                c.mux(p)
        for p in real.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mjpeg"  # the cover really comes first
        flagged = [bool(v.disposition & Disposition.default) for v in c.streams.video]
        assert flagged == {"real is default": [False, True], "both default": [True, True],
                           "none set": [False, False]}[flags]  # the flag alone cannot decide
    frames = V.read_frames(path)
    assert len(frames) == 10 and [frame_index(f) for f in frames] == list(range(10))


def test_a_1080p_clip_is_never_held_whole(tmp_path, monkeypatch):
    """Whatever the clip's length, at most one full-size frame is converted at a time: the
    fitted frames are small. (benchmarks/video_read.py measures RSS on a 60 s 1080p clip.)"""
    path = write_mp4(tmp_path / "hd.mp4", [40 * i for i in range(30)], w=1920, h=1080)
    alive = []
    real_fit = V.resize_center_crop

    def fit(img, h, w):
        alive.append(img.size)
        return real_fit(img, h, w)

    monkeypatch.setattr(V, "resize_center_crop", fit)
    frames, info = V.load_reference(path, 5, 72, 128)
    assert frames.shape == (5, 3, 72, 128)
    assert len(alive) == 5 and info.display_size == (1920, 1080)


def test_frame_folders_have_no_timing_and_gifs_use_their_durations(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(grey(i)).save(folder / f"f{i}.png")
    clip, info = V.load_reference(folder, 3, 48, 64)
    assert list(info.source_indices) == [0, 3, 5] and [frame_index(f) for f in clip] == [0, 3, 5]
    assert info.kind == "folder" and info.timestamps is None and info.fps is None
    assert info.span_seconds is None and info.notes == ()
    gif = tmp_path / "clip.gif"
    images = [Image.fromarray(grey(i)) for i in range(5)]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=[100, 100, 500, 100, 100])
    _, info = V.load_reference(gif, 3, 48, 64)
    assert info.timestamps == pytest.approx([0.0, 0.2, 0.8])  # middle target 0.4 s: frame 2 (0.2 s)
    assert list(info.source_indices) == [0, 2, 4]


def test_a_phone_clip_stored_sideways_is_read_upright_and_gets_the_portrait_size(tmp_path):
    """Display-matrix rotation 90 (counter-clockwise, as ffmpeg's players apply it): a band on
    the stored frame's left edge is shown at the bottom, and the clip counts as portrait."""
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.set_display_rotation(90)
        for _ in range(4):
            a = np.zeros((48, 64, 3), np.uint8)
            a[:, :8] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    first = V.read_frames(path)[0]
    assert first.size == (48, 64)
    a = np.asarray(first, np.float32)
    assert a[-8:].mean() > 200 and a[:8].mean() < 50
    _, info = V.load_reference(path, 2, native_size=(32, 64))
    assert info.size == (64, 32) and info.display_size == (48, 64) and info.stored_size == (64, 48)
