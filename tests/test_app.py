"""The web UI's handlers and the studio under them, without a browser (toy model, a few steps).

What the page promises: it shows the frames the model will really use; a learned motion lands
in the library complete or not at all; a bad upload gets the CLI's own one-line message and
writes nothing; nothing from the client can name a path outside the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch

from reenact import cli, models, video
from reenact.embedding import MotionEmbedding
from reenact.errors import ConfigError, EmbeddingError, InputError
from reenact.studio import Stopped, Studio, generation
from reenact.toy import world

gr = pytest.importorskip("gradio")
from reenact import app  # noqa: E402  (needs gradio)

FEW = 3  # inversion steps: these tests check plumbing, not quality
GEN = generation(steps=2)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    torch.set_num_threads(1)
    return Studio(models.TOY_MODEL, tmp_path_factory.mktemp("share"), device="cpu")


@pytest.fixture(scope="module")
def clip_file(studio, tmp_path_factory):
    """A reference as users give it: twice the model's frames, 4x its size, H.264 mp4."""
    clip = world.make_clip(world.SEED_RANGES["demo"][0] + 1, num_frames=2 * studio.num_frames,
                           height=4 * studio.height, width=4 * studio.width, motion="line")
    return video.write_video(clip.video, tmp_path_factory.mktemp("in") / "line.mp4", fps=8)


@pytest.fixture(scope="module")
def learned(studio, clip_file):
    return studio.learn(clip_file, "line", config=studio.config(FEW, 2, 0))


@pytest.fixture
def target(studio, tmp_path):
    path = tmp_path / "target.png"
    still = world.make_target(world.SEED_RANGES["demo"][0] + 9, studio.height, studio.width)
    video.tensor_to_images(still.video)[0].save(path)
    return path


def library_files(studio) -> list[str]:
    return sorted(p.name for p in studio.library.iterdir())


def cli_error(capsys, *argv) -> str:
    """The one line `reenact` prints for ``argv`` (run in-process)."""
    assert cli.main(list(argv)) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_the_geometry_is_the_loaded_models(studio):
    config = studio.pipe.unet.config
    assert studio.num_frames == config.num_frames
    assert studio.height == studio.width == config.sample_size * studio.pipe.vae_scale_factor
    assert studio.defaults.steps == studio.config(studio.defaults.steps, 5, 0).steps


def test_preview_is_exactly_what_the_inversion_gets(studio, clip_file):
    h = app.Handlers(studio)
    views, info = h.preview(str(clip_file), 2, 12, 2)
    expected = video.load_video(clip_file, studio.num_frames, studio.height, studio.width, 2, 12, 2)
    assert torch.equal(studio.reference(clip_file, 2, 12, 2).frames, expected)
    assert len(views) == studio.num_frames
    assert views[0][0].size == (studio.width * studio.view_factor, studio.height * studio.view_factor)
    assert f"{studio.num_frames} frames at {studio.height}x{studio.width}" in info
    # another trim, other frames
    assert not torch.equal(studio.reference(clip_file, 0, None, 1).frames, expected)


@pytest.mark.parametrize("kind", ["text renamed .mp4", "one-frame clip"])
def test_a_bad_reference_gets_the_clis_line_and_nothing_is_written(studio, tmp_path, capsys,
                                                                   monkeypatch, kind):
    bad = tmp_path / "bad.mp4"
    if kind == "text renamed .mp4":
        bad.write_text("not a video\n")
    else:
        video.write_video(torch.zeros(1, 3, 16, 16), bad, fps=8)
    monkeypatch.chdir(tmp_path)
    expected = cli_error(capsys, "invert", "bad.mp4", "-o", "x.safetensors", "--model", "toy")
    before = library_files(studio)
    h = app.Handlers(studio)
    gallery, info = h.preview(str(bad), 0, 0, 1)
    assert gallery is None and expected in info
    *_, last = h.learn(str(bad), "bad", 0, 0, 1, FEW, 2, 0, None, None, None)
    assert expected in last[0]
    assert library_files(studio) == before


def test_learn_writes_a_complete_library_entry(studio, learned):
    emb = MotionEmbedding.load(learned.path)
    assert learned.path == studio.library / "line.safetensors"
    assert emb.num_frames == studio.num_frames and emb.tokens == 2
    assert emb.metadata["steps_done"] == FEW and emb.metadata["base_model"] == "toy"
    assert emb.metadata["created"] and emb.metadata["reference"] == "line.mp4"
    assert len(list(learned.reference.glob("*.png"))) == studio.num_frames
    assert learned.thumbnail.is_file()
    row = dict(zip(app.ROW_HEADERS, learned.row))
    assert (row["name"], row["model"], row["F"], row["N"], row["steps"]) == (
        "line", "toy", studio.num_frames, 2, FEW)


def test_the_learn_handler_streams_losses_and_refreshes_the_library(studio, clip_file):
    h = app.Handlers(studio)
    updates = list(h.learn(str(clip_file), "streamed", 0, 0, 1, FEW, 2, 0, None, None, None))
    status, plot, table, gallery, pick, _ = updates[-1]
    assert status.startswith("Saved **streamed**")
    assert sorted(plot[plot.series == "loss"].step) == list(range(1, FEW + 1))
    assert "streamed" in list(table.name) and pick["value"] == "streamed"


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "line"])
def test_library_names_are_plain_words_and_never_overwrite(studio, clip_file, learned, name):
    before = library_files(studio)
    with pytest.raises(ConfigError):
        studio.learn(clip_file, name, config=studio.config(FEW, 2, 0))
    assert library_files(studio) == before
    assert not (studio.library.parent / "evil.safetensors").exists()


def test_stop_ends_the_run_and_saves_nothing(studio, clip_file):
    before = library_files(studio)
    with pytest.raises(Stopped, match="nothing was saved"):
        studio.learn(clip_file, "stopped", config=studio.config(50, 2, 0),
                     on_step=lambda k, loss: studio.stop() if k == 2 else None)
    assert library_files(studio) == before


def test_the_stop_button_ends_a_running_learn_handler(studio, clip_file):
    h = app.Handlers(studio)
    before = library_files(studio)
    updates = h.learn(str(clip_file), "interrupted", 0, 0, 1, 200, 2, 0, None, None, None)
    first = next(updates)  # the first progress update: the run is going
    assert first[0].startswith("learning: step")
    assert h.stop().startswith("Stopping")
    *_, last = updates
    assert last[0].startswith("Stopped at step") and "nothing was saved" in last[0]
    assert library_files(studio) == before
    assert not studio.stop_event.is_set()  # the next run is not stopped before it starts


def test_a_failed_save_leaves_no_partial_entry(studio, clip_file, monkeypatch):
    before = library_files(studio)

    def full_disk(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MotionEmbedding, "save", full_disk)
    with pytest.raises(OSError):
        studio.learn(clip_file, "nospace", config=studio.config(FEW, 2, 0))
    assert library_files(studio) == before


def test_import_takes_a_motion_learned_elsewhere(studio, learned, tmp_path):
    elsewhere = tmp_path / "from-a-friend.safetensors"
    learned.embedding.save(elsewhere)
    h = app.Handlers(studio)
    status, table, *_ = h.add(str(elsewhere), "")
    assert "Added **from-a-friend**" in status and "from-a-friend" in list(table.name)
    imported = studio.motion("from-a-friend")
    assert torch.equal(imported.embedding.tensor, learned.embedding.tensor)
    assert imported.reference is None  # Reconstruct then asks for the reference video


def test_import_refuses_what_is_not_a_fitting_motion(studio, learned, tmp_path, capsys, monkeypatch):
    h = app.Handlers(studio)
    before = library_files(studio)
    # a text file renamed .safetensors: the CLI's line, naming the file the user gave
    fake = tmp_path / "fake.safetensors"
    fake.write_text("hello")
    monkeypatch.chdir(tmp_path)
    expected = cli_error(capsys, "info", "fake.safetensors")
    status, *_ = h.add(str(fake), "")
    assert expected in status and str(tmp_path) not in status
    # an embedding learned on another model (other F and d)
    other = tmp_path / "other.safetensors"
    MotionEmbedding(torch.zeros(studio.num_frames + 3, 5, 7), {"base_model": "big"}).save(other)
    with pytest.raises(EmbeddingError, match="learned on 'big'.*invert again with --model toy"):
        studio.import_motion(other)
    frame = tmp_path / "frame.png"
    video.tensor_to_images(torch.zeros(1, 3, studio.height, studio.width))[0].save(frame)
    expected = cli_error(capsys, "animate", "other.safetensors", "frame.png", "-o", "out",
                         "--model", "toy")
    assert expected in h.add(str(other), "")[0]
    # not a .safetensors, too large
    # a forged recorded size that would make generation allocate without bound
    forged = tmp_path / "forged.safetensors"
    MotionEmbedding(learned.embedding.tensor, {**learned.embedding.metadata, "height": 8192,
                                               "width": 8192}).save(forged)
    with pytest.raises(EmbeddingError, match="records (a size|height)"):
        studio.import_motion(forged)
    renamed = tmp_path / "motion.bin"
    renamed.write_bytes(learned.path.read_bytes())
    with pytest.raises(InputError, match="must be one of .safetensors"):
        studio.import_motion(renamed)
    monkeypatch.setattr("reenact.studio.MAX_EMBEDDING_BYTES", 10)
    with pytest.raises(InputError, match="more than"):
        studio.import_motion(learned.path, "big-one")
    assert library_files(studio) == before


def test_animate_writes_mp4_gif_and_a_comparison_of_f_frames(studio, learned, target):
    h = app.Handlers(studio)
    compare, files, status = h.animate("line", [str(target)], 2, 1.0, 3.0, 0, "", "", "", 8)
    assert "1 video(s): the reference, then the results" in status
    names = sorted(Path(f).name for f in files)
    assert names == ["1_target.gif", "1_target.mp4"]
    for path in (compare, files[names.index("1_target.mp4")]):
        with av.open(str(path)) as c:
            assert sum(1 for _ in c.decode(video=0)) == studio.num_frames
    assert Path(compare).parent.parent == studio.outputs


def test_the_knobs_default_to_the_motions_then_svds(studio, learned, target):
    used = studio.animate("line", [target], generation(steps=2)).settings
    assert used.fps == learned.embedding.metadata["fps"]
    assert (used.height, used.width) == (studio.height, studio.width)
    assert studio.animate("line", [target], generation(steps=2, fps="3")).settings.fps == 3


def test_a_corrupt_image_fails_before_any_compute_and_writes_nothing(studio, learned, target,
                                                                      tmp_path, capsys,
                                                                      monkeypatch):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    monkeypatch.chdir(tmp_path)
    expected = cli_error(capsys, "animate", str(learned.path), "broken.png", "-o", "out",
                         "--model", "toy")
    before = sorted(studio.outputs.iterdir())
    compare, files, status = app.Handlers(studio).animate(
        "line", [str(target), str(corrupt)], 2, 1.0, 3.0, 0, "", "", "", 8)
    assert compare is None and expected in status
    assert sorted(studio.outputs.iterdir()) == before


@pytest.mark.parametrize("name, error", [("../motions/line", ConfigError), ("nope", InputError),
                                         ("", InputError)])
def test_animate_only_takes_library_names(studio, learned, target, name, error):
    with pytest.raises(error):
        studio.animate(name, [target], GEN)


def test_bad_knobs_are_named(studio, learned, target):
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        studio.animate("line", [target], generation(steps=0))
    with pytest.raises(ConfigError, match="fps must be a whole number"):
        studio.animate("line", [target], generation(fps="fast"))
    with pytest.raises(InputError, match="at most"):
        studio.animate("line", [target] * 9, GEN)


def test_reconstruct_reports_psnr_per_frame(studio, learned):
    compare, report = app.Handlers(studio).reconstruct("line", None, 2, 1.0, 3.0, 0, "", "", "", 8)
    assert "PSNR of the reconstruction" in report and "How to read it" in report
    result = studio.reconstruct("line", GEN)
    assert len(result.psnr) == studio.num_frames and all(p > 0 for p in result.psnr)
    with av.open(str(result.compare)) as c:
        assert sum(1 for _ in c.decode(video=0)) == studio.num_frames


def test_reconstruct_of_an_imported_motion_needs_its_reference(studio, learned, clip_file, tmp_path):
    elsewhere = tmp_path / "imported.safetensors"
    learned.embedding.save(elsewhere)
    studio.import_motion(elsewhere, "imported")
    with pytest.raises(InputError, match="upload the reference video"):
        studio.reconstruct("imported", GEN)
    assert len(studio.reconstruct("imported", GEN, reference=clip_file).psnr) == studio.num_frames


def test_the_page_builds_with_one_queue_slot_for_the_model(studio):
    page = app.build_app(studio)
    heavy = [fn for fn in page.fns.values()
             if getattr(fn.fn, "__name__", "") in ("learn", "animate", "reconstruct")]
    assert len(heavy) == 3
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in heavy} == {("model", 1)}


def test_ui_flags_and_default_bind(capsys):
    args = cli.build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, "toy")
    assert cli.main(["ui", "--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_examples_are_toy_clips_longer_and_larger_than_the_model(studio):
    examples = studio.examples()
    assert set(examples) == {f"toy {m}" for m in world.MOTIONS}
    with av.open(str(examples["toy turn"])) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 2 * studio.num_frames and frames[0].height == 4 * studio.height
    assert json.dumps(str(examples["toy turn"]))  # a plain path gradio can serve
