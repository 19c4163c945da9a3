"""The web UI end to end, in a real headless Chromium driven by Playwright.

`reenact ui --model toy` runs as a subprocess on a free local port; the browser uploads a toy
reference, previews its frames, learns the motion (a few steps), checks the library,
reconstructs, animates a target, and checks that the page's <video> points at a decodable video
with the model's F frames; then uploads a text file renamed .mp4 and expects the CLI's own
one-line error. Screenshots of each stage go to ``test-output/ui/`` (``REENACT_TEST_OUTPUT``
moves it), with ``timings.json`` (the learn-then-animate round trip as the user waits for it).

The browser is Debian's chromium (``apt-get install chromium``; ``REENACT_CHROMIUM`` names
another executable); nothing is downloaded. If it is missing or will not start, the test is
SKIPPED with the reason (pyproject's ``-rs`` prints it in the summary) -- never passed.
``REENACT_UI_STEPS`` / ``REENACT_UI_GEN_STEPS`` set the inversion / generation steps (default:
short runs). The README's figure and screenshots come from
``REENACT_UI_DOCS=1 REENACT_UI_STEPS=80 REENACT_UI_GEN_STEPS=25 pytest tests/test_ui_browser.py``
(the defaults of `reenact invert` and `reenact animate`), which also rewrites docs/images/ui-*.png.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from reenact import models, video
from reenact.toy import world

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("REENACT_TEST_OUTPUT", ROOT / "test-output")) / "ui"
STEPS = int(os.environ.get("REENACT_UI_STEPS", "12"))
GEN_STEPS = int(os.environ.get("REENACT_UI_GEN_STEPS", "10"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _skip(reason: str):
    print(f"\n*** SKIPPED browser test: {reason} ***", file=sys.stderr)
    pytest.skip(reason)


def _chromium() -> str:
    exe = os.environ.get("REENACT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        _skip(f"no Chromium at {exe}: install Debian's chromium (apt-get install -y chromium) "
              "or set REENACT_CHROMIUM")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_geometry() -> tuple[int, int, int]:
    """``(F, H, W)`` of the bundled toy model as the app reads it (never hard-coded: the toy
    model is replaced from time to time)."""
    return models.native_geometry(models.TOY_MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    share = tmp_path_factory.mktemp("share")
    port = _free_port()
    log = open(share / "server.log", "w+")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reenact.cli", "ui", "--model", "toy", "--port", str(port),
         "--share-dir", str(share)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"reenact ui exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("reenact ui did not answer within 180 s")
            time.sleep(0.5)
        yield url, share
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("playwright is not installed (pip install playwright; no browser download needed)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
    except Exception as e:  # noqa: BLE001 - any launch failure means: no usable browser here
        pw.stop()
        _skip(f"Chromium at {exe} would not start: {str(e).splitlines()[0]}")
    pg = context.pages[0] if context.pages else context.new_page()
    pg.set_default_timeout(120_000)
    yield pg
    context.close()
    pw.stop()


def _shot(pg, name: str, doc: str | None = None) -> None:
    """Screenshot to OUT/name.png; with REENACT_UI_DOCS=1 also the README's copy
    docs/images/ui-<doc>.png (palette PNG, to keep the repository small)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    if doc and os.environ.get("REENACT_UI_DOCS") == "1":
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT)
            small.save(ROOT / "docs" / "images" / f"ui-{doc}.png", optimize=True)


def _upload(pg, elem_id: str, *files: Path) -> None:
    """Set the files of an upload box and wait until it lists them (one retry: an upload set
    while the page is still re-rendering can be dropped)."""
    box = pg.locator(f"#{elem_id}")
    for attempt in range(2):
        box.locator("input[type=file]").set_input_files([str(f) for f in files])
        try:
            for f in files:
                box.get_by_text(f.stem).first.wait_for(timeout=30_000)
            return
        except Exception:  # noqa: BLE001
            if attempt:
                raise


def test_learn_then_animate_in_a_real_browser(server, page, tmp_path):
    url, share = server
    frames, height, width = _model_geometry()
    # as users give clips: longer and larger than the model's F x H x W, H.264-compressed
    clip = world.make_clip(world.SEED_RANGES["demo"][0] + 42, num_frames=2 * frames,
                           height=4 * height, width=4 * width, motion="turn")
    reference = video.write_video(clip.video, tmp_path / "walk.mp4", fps=16)
    target = tmp_path / "target.png"
    still = world.make_target(world.SEED_RANGES["demo"][0] + 7, height=2 * height, width=2 * width)
    video.tensor_to_images(still.video)[0].save(target)
    timings = {}

    page.goto(url)
    page.get_by_text("Learn a motion once").wait_for()

    # 1. upload the reference: the preview shows the F frames the model will use
    t0 = time.perf_counter()
    _upload(page, "ref-file", reference)
    page.locator("#preview-info", has_text=f"{frames} frames").wait_for()
    assert page.locator("#preview img").count() == frames
    _shot(page, "1-learn-preview")

    # 2. learn: live status, then saved into the library
    page.locator("#motion-name input, #motion-name textarea").first.fill("walk")
    steps = page.locator("#learn-steps input")
    steps.fill(str(STEPS))
    steps.press("Tab")
    t_learn = time.perf_counter()
    page.locator("#learn-btn").click()
    page.locator("#learn-status", has_text="Saved").wait_for(timeout=300_000)
    timings["learn_s"] = time.perf_counter() - t_learn
    assert (share / "motions" / "walk.safetensors").is_file()
    _shot(page, "2-learn-done", "learn")

    # 3. animate a target: a <video> whose file is a decodable video of F frames
    page.get_by_role("tab", name="Animate").click()
    page.wait_for_function("document.querySelector('#anim-pick input').value === 'walk'")
    _upload(page, "targets", target)
    gen_steps = page.locator("#animate-steps input")
    gen_steps.fill(str(GEN_STEPS))
    gen_steps.press("Tab")
    t_anim = time.perf_counter()
    page.locator("#animate-btn").click()
    player = page.locator("#anim-video video")
    player.wait_for(timeout=300_000)
    page.wait_for_function("document.querySelector('#anim-video video').src.length > 0")
    timings["animate_s"] = time.perf_counter() - t_anim
    timings["round_trip_s"] = time.perf_counter() - t0
    src = player.get_attribute("src") or page.evaluate(
        "document.querySelector('#anim-video video').src")
    assert src, "the result <video> has no source"
    data = page.request.get(src if src.startswith("http") else url.rstrip("/") + src).body()
    downloaded = tmp_path / "result.mp4"
    downloaded.write_bytes(data)
    with av.open(str(downloaded)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == frames
    page.locator("#anim-status", has_text="video").wait_for()
    _shot(page, "3-animate", "animate")

    # 4. the library lists it; Reconstruct shows the diagnostic with its PSNR
    page.get_by_role("tab", name="Motion library").click()
    page.locator("#library-table", has_text="walk").wait_for()
    page.locator("#recon-btn").click()
    page.locator("#recon-report", has_text="PSNR").wait_for(timeout=300_000)
    page.locator("#recon-video video").wait_for()
    _shot(page, "4-library", "library")

    # 5. a text file renamed .mp4: the CLI's one-line error on the page, nothing written
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video\n")
    cli = subprocess.run([sys.executable, "-m", "reenact.cli", "invert", "bad.mp4", "-o",
                          "x.safetensors", "--model", "toy"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert cli.returncode == 2
    expected = cli.stderr.strip().splitlines()[-1]
    assert expected.startswith("reenact: error: bad.mp4")
    page.get_by_role("tab", name="Learn a motion").click()
    before = sorted(p.name for p in (share / "motions").iterdir())
    page.locator("#ref-file button[aria-label='Clear']").click()
    _upload(page, "ref-file", bad)
    page.locator("#preview-info", has_text="bad.mp4").wait_for()
    assert expected in page.locator("#preview-info").inner_text().splitlines()
    page.locator("#motion-name input, #motion-name textarea").first.fill("bad")
    page.locator("#learn-btn").click()
    page.locator("#learn-status", has_text="reenact: error").wait_for()
    assert sorted(p.name for p in (share / "motions").iterdir()) == before
    assert "Traceback" not in page.content()
    _shot(page, "5-bad-input")

    OUT.mkdir(parents=True, exist_ok=True)
    timings.update(steps=STEPS, generation_steps=GEN_STEPS, frames=frames)
    (OUT / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"\nUI round trip (upload -> learned -> animated video on the page): {timings}")
