"""Tests for reenact.video: reading, resampling, fitting, and atomic writing of media.

All media is generated here (a square moving across a grey background), so the tests need no
fixtures on disk and stay fast on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from reenact import video as V
from reenact.errors import ConfigError, InputError

H, W = 48, 64
SQ = 12  # side of the moving square


def square_frames(n: int = 8, h: int = H, w: int = W) -> list[Image.Image]:
    """A red square moving left to right on grey: content we can locate after lossy codecs."""
    frames = []
    for i in range(n):
        a = np.full((h, w, 3), 128, np.uint8)
        x = int(round(i * (w - SQ) / max(n - 1, 1)))
        y = (h - SQ) // 2
        a[y:y + SQ, x:x + SQ] = (230, 30, 30)
        frames.append(Image.fromarray(a))
    return frames


def square_x(img: Image.Image) -> float:
    """Horizontal centre of the red square (centroid of strongly red pixels)."""
    a = np.asarray(img.convert("RGB")).astype(int)
    mask = (a[..., 0] > 180) & (a[..., 1] < 90)
    assert mask.any(), "square not found"
    return float(np.nonzero(mask)[1].mean())


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------- round trips

def test_mp4_round_trip_keeps_frames_and_content(tmp_path):
    frames = square_frames(8)
    out = V.write_video(frames, tmp_path / "sub" / "clip.mp4", fps=7)  # creates the parent
    assert out == tmp_path / "sub" / "clip.mp4" and out.is_file()
    back = V.read_frames(out)
    assert len(back) == 8
    assert back[0].size == (W, H) and back[0].mode == "RGB"
    for a, b in zip(frames, back):
        assert mean_abs_diff(a, b) < 6
        assert abs(square_x(a) - square_x(b)) < 1.5
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.average_rate == 7
    assert no_temp_files(out.parent)


def test_mp4_writing_is_reproducible(tmp_path):
    """The same frames always encode to the same video, so the benchmark's user-file
    references and every output are reproducible. The benchmark's reference 19 (one object on
    a plain background), which changed from write to write under x264's SIMD paths, written
    four times must decode to the same pixels each time."""
    from reenact.toy import bench, world

    plan = bench.reference_plan(19)  # a large turn on a plain background
    clip = world.make_scene_clip(world.SEED_RANGES["bench"][0] + 19, 16, 64, 64, motion=plan["motion"],
                                 background=plan["background"], size_range=bench.SIZE_CLASSES[plan["size_class"]])
    decoded = []
    for k in range(4):
        out = V.write_video(clip.video, tmp_path / f"{k}.mp4", fps=8)
        decoded.append(b"".join(im.tobytes() for im in V.read_frames(out)))
    assert all(d == decoded[0] for d in decoded[1:])


def test_gif_round_trip_keeps_frames_and_content(tmp_path):
    frames = square_frames(6)
    out = V.write_video(frames, tmp_path / "clip.gif", fps=10)
    back = V.read_frames(out)
    assert len(back) == 6
    for a, b in zip(frames, back):
        assert mean_abs_diff(a, b) < 3
        assert abs(square_x(a) - square_x(b)) < 0.5
    with Image.open(out) as im:
        assert im.info.get("loop") == 0
        assert im.info.get("duration") == 100
    assert no_temp_files(tmp_path)


def test_png_folder_round_trip_is_lossless_and_replaces_whole_folder(tmp_path):
    frames = square_frames(5)
    dest = tmp_path / "frames"
    V.write_video(frames, dest)  # no suffix -> png folder
    assert sorted(p.name for p in dest.iterdir()) == [f"frame_{i:04d}.png" for i in range(5)]
    V.write_video(frames[:3], dest, fmt="png")  # rewrite: old frame_0003/4 must not linger
    assert sorted(p.name for p in dest.iterdir()) == [f"frame_{i:04d}.png" for i in range(3)]
    back = V.read_frames(dest)
    assert all(mean_abs_diff(a, b) == 0 for a, b in zip(frames, back))
    assert no_temp_files(tmp_path)


def test_tensor_input_and_odd_size_mp4_is_padded_to_even(tmp_path):
    frames = square_frames(4, h=33, w=47)
    t = torch.stack([V.image_to_tensor(f) for f in frames])
    out = V.write_video(t, tmp_path / "odd.mp4")
    back = V.read_frames(out)
    assert len(back) == 4 and back[0].size == (48, 34)


def test_tensor_image_conversions_round_trip_exactly():
    img = square_frames(1)[0]
    t = V.image_to_tensor(img)
    assert t.shape == (3, H, W) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    back = V.tensor_to_images(torch.stack([t, t * 5]))  # out-of-range values are clamped
    assert len(back) == 2 and mean_abs_diff(img, back[0]) == 0
    assert back[1].size == (W, H)


# ----------------------------------------------------------------------------- reading

def test_frame_folder_natural_sort_ignores_other_files(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in (1, 2, 10, 11, 3):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    Image.new("RGB", (8, 8)).save(folder / ".hidden.png")
    frames = V.read_frames(folder)
    reds = [f.getpixel((0, 0))[0] for f in frames]
    assert reds == [20, 40, 60, 200, 220]  # 1, 2, 3, 10, 11 -- not 1, 10, 11, 2, 3


def test_read_frames_limit_stops_early(tmp_path):
    out = V.write_video(square_frames(8), tmp_path / "c.mp4")
    assert len(V.read_frames(out, limit=3)) == 3


def test_select_frames_resamples_uniformly():
    idx = list(range(20))
    assert V.select_frames(idx, 5) == [0, 5, 10, 14, 19]
    assert V.select_frames(idx, 20) == idx
    # start/end are frame indices (end exclusive), stride keeps every k-th
    assert V.select_frames(idx, 5, start=2, end=12, stride=2) == [2, 4, 6, 8, 10]
    assert V.select_frames(idx, 3, start=10) == [10, 15, 19]
    # fewer kept frames than needed: repeat, never invent
    assert V.select_frames(idx, 7, start=0, end=3) == [0, 0, 1, 1, 1, 2, 2]
    assert V.select_frames(idx, 1) == [0]


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(num_frames=0), ConfigError),
        (dict(num_frames=4, stride=0), ConfigError),
        (dict(num_frames=4, start=-1), ConfigError),
        (dict(num_frames=4, start=5, end=5), ConfigError),
        (dict(num_frames=4, start=8, end=6), ConfigError),
        (dict(num_frames=4, start=20), InputError),
        (dict(num_frames=4, end=30), InputError),
        (dict(num_frames=4, start=3, end=4), InputError),  # one frame left
        (dict(num_frames=4, start=0, end=6, stride=6), InputError),  # one frame left
    ],
)
def test_select_frames_validates(kwargs, exc):
    with pytest.raises(exc):
        V.select_frames(list(range(20)), **kwargs)


def test_load_video_shape_range_and_selection(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(12):  # frame index encoded in brightness, lossless png
        Image.new("RGB", (40, 20), (i * 20, i * 20, i * 20)).save(folder / f"f{i}.png")
    v = V.load_video(folder, num_frames=4, height=16, width=16, start=2, end=10, stride=2)
    assert v.shape == (4, 3, 16, 16) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1
    levels = ((v[:, 0, 8, 8] + 1) * 127.5).round().int().tolist()
    assert levels == [40, 80, 120, 160]  # frames 2, 4, 6, 8
    with pytest.raises(InputError) as e:
        V.load_video(folder, num_frames=4, height=16, width=16, start=11)
    assert_one_line_naming(e, folder)


def test_load_video_from_mp4(tmp_path):
    out = V.write_video(square_frames(10), tmp_path / "c.mp4")
    v = V.load_video(out, num_frames=14, height=32, width=32)
    assert v.shape == (14, 3, 32, 32)


# ----------------------------------------------------------------------------- fitting

def test_resize_center_crop_size_and_keeps_centre():
    a = np.zeros((100, 200, 3), np.uint8)
    a[:, :] = (255, 0, 0)
    a[:, 50:150] = (0, 255, 0)  # centre square is green, sides red
    img = Image.fromarray(a)
    out = V.resize_center_crop(img, 50, 50)  # wide -> square: sides are cropped away
    assert out.size == (50, 50)
    arr = np.asarray(out).astype(int)
    assert arr[:, 2:-2, 1].min() > 200 and arr[:, 2:-2, 0].max() < 50
    # tall target from a wide image, and upscaling, keep the exact size
    assert V.resize_center_crop(img, 120, 30).size == (30, 120)
    assert V.resize_center_crop(img, 333, 777).size == (777, 333)
    tall = V.resize_center_crop(img.transpose(Image.Transpose.TRANSPOSE), 50, 50)
    assert np.asarray(tall)[2:-2, :, 1].min() > 200


def test_load_image_flattens_alpha_on_white(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[:, :5] = (200, 0, 0, 255)  # opaque red left half, fully transparent right half
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    img = V.load_image(tmp_path / "rgba.png")
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (200, 0, 0)
    assert img.getpixel((8, 2)) == (255, 255, 255)
    # palette image with a transparent index, and LA
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    img = V.load_image(tmp_path / "p.png")
    assert img.getpixel((0, 0)) == (10, 20, 30) and img.getpixel((3, 3)) == (255, 255, 255)
    Image.new("LA", (3, 3), (0, 0)).save(tmp_path / "la.png")
    assert V.load_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)


def test_load_image_greyscale_to_rgb_and_resize(tmp_path):
    Image.new("L", (30, 20), 77).save(tmp_path / "g.png")
    img = V.load_image(tmp_path / "g.png", height=8, width=8)
    assert img.mode == "RGB" and img.size == (8, 8) and img.getpixel((4, 4)) == (77, 77, 77)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert V.load_image(tmp_path / "g16.png").getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ConfigError):
        V.load_image(tmp_path / "g.png", height=8)


# ----------------------------------------------------------------------------- bad inputs

def _one_frame_mp4(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=7)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        for pkt in s.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8),
                                                       format="rgb24")):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_bad_inputs_raise_input_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(InputError) as e:
        V.read_frames(missing)
    assert_one_line_naming(e, missing)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError) as e:
        V.read_frames(text)
    assert_one_line_naming(e, text)
    assert "not a readable video" in str(e.value)

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as e:
        V.read_frames(empty)
    assert_one_line_naming(e, empty)

    one = _one_frame_mp4(tmp_path / "one.mp4")
    with pytest.raises(InputError) as e:
        V.read_frames(one)
    assert_one_line_naming(e, one)
    assert "has 1 frame; a motion reference needs at least 2" in str(e.value)

    gif1 = tmp_path / "one.gif"
    Image.new("RGB", (8, 8)).save(gif1)
    with pytest.raises(InputError, match="has 1 frame"):
        V.read_frames(gif1)

    folder = tmp_path / "empty_dir"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    with pytest.raises(InputError) as e:
        V.read_frames(folder)
    assert_one_line_naming(e, folder)

    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still)
    with pytest.raises(InputError, match="still image"):
        V.read_frames(still)


def test_corrupt_and_missing_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InputError) as e:
        V.load_image(bad)
    assert_one_line_naming(e, bad)

    truncated = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InputError) as e:
        V.load_image(truncated)
    assert_one_line_naming(e, truncated)

    with pytest.raises(InputError) as e:
        V.load_image(tmp_path / "missing.jpg")
    assert_one_line_naming(e, tmp_path / "missing.jpg")

    with pytest.raises(InputError) as e:
        V.load_image(tmp_path)
    assert_one_line_naming(e, tmp_path)

    # a corrupt member of a frame folder is named, not the folder alone
    folder = tmp_path / "seq"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "f0.png")
    (folder / "f1.png").write_bytes(bad.read_bytes())
    with pytest.raises(InputError) as e:
        V.read_frames(folder)
    assert_one_line_naming(e, folder / "f1.png")


# ----------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("name, encoder", [("out.mp4", "_encode_mp4"), ("out.gif", "_encode_gif")])
def test_failed_encoder_leaves_no_file(tmp_path, monkeypatch, name, encoder):
    def broken(images, path, fps):
        Path(path).write_bytes(b"partial")  # the encoder got some way, then died
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(V, encoder, broken)
    with pytest.raises(RuntimeError, match="exploded"):
        V.write_video(square_frames(3), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_failed_encoder_keeps_previous_output(tmp_path, monkeypatch):
    dest = V.write_video(square_frames(3), tmp_path / "out.mp4")
    before = dest.read_bytes()

    def from_image_fails(img):  # real PyAV container is open and partly written by now
        raise ValueError("bad frame")

    monkeypatch.setattr(av.VideoFrame, "from_image", staticmethod(from_image_fails))
    with pytest.raises(ValueError, match="bad frame"):
        V.write_video(square_frames(3), dest)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_failed_png_folder_write_keeps_previous_folder(tmp_path, monkeypatch):
    dest = V.write_video(square_frames(2), tmp_path / "frames")

    def broken(images, folder):
        folder.mkdir()
        images[0].save(folder / "frame_0000.png")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(V, "_encode_png_folder", broken)
    with pytest.raises(RuntimeError):
        V.write_video(square_frames(5), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["frame_0000.png", "frame_0001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_unwritable_destination_raises_input_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file")
    for target in (blocker / "out.mp4", blocker / "deeper" / "out.gif", blocker / "frames"):
        with pytest.raises(InputError) as e:
            V.write_video(square_frames(2), target)
        assert_one_line_naming(e, target)
        with pytest.raises(InputError):
            V.check_writable_output(target)
    with pytest.raises(InputError) as e:
        V.check_writable_file(blocker / "x.mp4")
    assert_one_line_naming(e, blocker / "x.mp4")
    with pytest.raises(InputError):
        V.check_writable_dir(blocker)
    with pytest.raises(InputError):
        V.check_writable_dir(blocker / "sub")
    folder = tmp_path / "dir.mp4"
    folder.mkdir()
    with pytest.raises(InputError):  # an existing folder cannot become an mp4
        V.write_video(square_frames(2), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir.mp4"]
    assert blocker.read_text() == "I am a file"


def test_os_error_while_writing_becomes_input_error(tmp_path, monkeypatch):
    """Permission denied / disk full during the write (works even when tests run as root)."""
    def denied(images, path, fps):
        Path(path).write_bytes(b"partial")
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(V, "_encode_gif", denied)
    with pytest.raises(InputError) as e:
        V.write_video(square_frames(2), tmp_path / "out.gif")
    assert_one_line_naming(e, tmp_path / "out.gif")
    assert "Permission denied" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied_raises_input_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError):
            V.write_video(square_frames(2), ro / "out.gif")
        with pytest.raises(InputError):
            V.check_writable_dir(ro)
    finally:
        ro.chmod(0o700)


def test_check_writable_helpers_create_dirs_and_leave_nothing(tmp_path):
    d = V.check_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir() and list(d.iterdir()) == []
    f = V.check_writable_file(tmp_path / "c" / "out.mp4")
    assert f.parent.is_dir() and list(f.parent.iterdir()) == []
    assert V.check_writable_output(tmp_path / "d" / "frames").parent.is_dir()


def test_output_format():
    assert V.output_format("x.mp4") == "mp4"
    assert V.output_format("x.GIF") == "gif"
    assert V.output_format("frames") == "png"
    assert V.output_format("x.mp4", fmt="gif") == "gif"
    with pytest.raises(InputError):
        V.output_format("x.avi")
    with pytest.raises(ConfigError):
        V.output_format("x.mp4", fmt="webm")


# ----------------------------------------------------------------------------- viewing helpers

def test_upscale_and_grid():
    a, b = square_frames(3, h=8, w=8), square_frames(3, h=6, w=10)
    big = V.upscale_nearest(a, 4)
    assert big[0].size == (32, 32)
    assert big[0].getpixel((0, 0)) == a[0].getpixel((0, 0))
    grid = V.make_grid([a, b], gap=2)
    assert len(grid) == 3 and grid[0].size == (10 + 2 + 10, 8)
    grid2 = V.make_grid([a, b, a], columns=2, gap=0)
    assert grid2[0].size == (20, 16)
    with pytest.raises(ValueError):
        V.make_grid([a, a[:2]])
