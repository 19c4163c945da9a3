"""The web UI (``reenact ui``): learn a motion from a video and animate images in the browser.

A gradio page that is a thin skin over the library, as gradio demos are: each handler of
:class:`Handlers` validates the form, calls one :class:`~reenact.studio.Studio` method (which
calls the library) and turns a :class:`~reenact.errors.ReenactError` into the one line the CLI
prints for the same problem, shown on the page -- never a stack trace. :func:`build_app` lays
the page out in three tabs (Learn a motion, Motion library, Animate) and wires the buttons;
:func:`serve` launches it.

Long jobs (learning, animating, reconstructing) share one slot of gradio's queue, so one job
runs on the model at a time and the page stays responsive; Stop is not queued. The server binds
127.0.0.1 unless told otherwise, serves files only from the share folder, and caps uploads.
"""

from __future__ import annotations

import os
import queue
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a closed network

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402  (gradio's plots take DataFrames)

from reenact import embedding, inversion, models, video  # noqa: E402
from reenact.errors import ConfigError, EmbeddingError, ReenactError  # noqa: E402
from reenact.pipeline import GenerationConfig  # noqa: E402
from reenact.studio import (  # noqa: E402
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SHARE_DIR,
    MAX_TARGETS,
    MAX_VIDEO_BYTES,
    ROW_HEADERS,
    generation,
    Stopped,
    Studio,
    check_name,
)

__all__ = ["Handlers", "build_app", "serve", "message"]

_CSS = ".reenact-error { color: #b00020; font-weight: 600; }"


def message_text(text: str, *uploads) -> str:
    """``text`` on one line, with uploads' temp paths shown as their file names (gradio keeps
    an upload's name as the last part of its temp path)."""
    text = " ".join(str(text).split("\n"))
    for up in uploads:
        for p in (up if isinstance(up, (list, tuple)) else [up]):
            if p:
                text = text.replace(str(p), os.path.basename(str(p)))
    return text


def message(error: BaseException, *uploads) -> str:
    """The line the CLI prints for ``error`` (uploads named by their file names)."""
    return f"reenact: error: {message_text(str(error), *uploads)}"


def error_html(text: str) -> str:
    return f"<div class='reenact-error'>{text}</div>"


class Handlers:
    """One method per event of the page; each returns the values of its outputs."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    # -- the library's views, refreshed after anything changes it ------------------------------

    def refresh(self, selected: str | None = None):
        """Library table, thumbnails, and the two motion pickers (``selected`` picked)."""
        motions = self.studio.motions()
        table = pd.DataFrame([m.row for m in motions], columns=ROW_HEADERS)
        gallery = [(str(m.thumbnail), m.name) for m in motions if m.thumbnail is not None]
        names = [m.name for m in motions]
        pick = selected if selected in names else (names[-1] if names else None)
        return (table, gallery, gr.update(choices=names, value=pick),
                gr.update(choices=names, value=pick))

    # -- Learn a motion -----------------------------------------------------------------------

    def example(self, name):
        path = self.studio.examples().get(name)
        return str(path) if path else None

    def preview(self, path, start, end, stride):
        """The F frames the model will use, at its size (enlarged), before any compute."""
        if not path:  # cleared
            return None, ""
        try:
            ref = self.studio.reference(path, start, end, stride)
        except ReenactError as e:
            return None, error_html(message(e, path))
        frames, clip = ref.frames, ref.source.get("source", {})
        indices = clip.get("source_indices") or [None] * frames.shape[0]
        times = clip.get("timestamps") or [None] * frames.shape[0]
        views = [(im, ("" if j is None else f"src {j}") + ("" if t is None else f" @ {t:.2f}s"))
                 for im, j, t in zip(self.studio.view(frames), indices, times)]
        notes = " ".join(message_text(n, path) for n in ref.notes)
        return views, (f"The model will learn from these **{frames.shape[0]} frames at "
                       f"{frames.shape[2]}x{frames.shape[3]}** (shown enlarged "
                       f"x{self.studio.view_factor}). {notes}")

    @staticmethod
    def loss_frame(losses: list[tuple[int, float]]) -> pd.DataFrame:
        """The loss per step and its bias-corrected EMA (the inversion's own smoothing)."""
        rows, ema, decay = [], 0.0, inversion.LOSS_EMA_DECAY
        for k, (step, loss) in enumerate(losses, 1):
            ema = decay * ema + (1 - decay) * loss
            rows += [(step, loss, "loss"), (step, ema / (1 - decay ** k), "smoothed")]
        return pd.DataFrame(rows, columns=["step", "loss", "series"])

    def learn(self, path, name, start, end, stride, steps, tokens, seed, lr, sets,
              log_sigma_mean, progress=gr.Progress()):
        """Run the inversion in a worker thread; yield status and the loss plot as it goes.

        Outputs: status, loss plot, then the library views (table, gallery, two pickers).
        """
        losses: list[tuple[int, float]] = []
        keep = (gr.update(),) * 4
        try:
            config = self.studio.config(steps, tokens, seed, lr, sets, log_sigma_mean)
            check_name(name)
        except ReenactError as e:
            yield (error_html(message(e, path)), self.loss_frame(losses), *keep)
            return

        events: queue.Queue = queue.Queue()
        box: dict = {}

        def work() -> None:
            try:
                box["motion"] = self.studio.learn(path, name, start, end, stride, config,
                                                  on_step=lambda k, loss: events.put((k, loss)))
            except BaseException as e:  # noqa: BLE001 - handed to the page loop below
                box["error"] = e
            finally:
                events.put(None)

        started = time.perf_counter()
        worker = threading.Thread(target=work, name="reenact-learn", daemon=True)
        worker.start()
        try:
            progress((0, config.steps), desc="learning the motion", unit="steps")
            finished = False
            while not finished:
                try:
                    item = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                while item is not None:  # drain: one page update per poll, not per step
                    losses.append(item)
                    try:
                        item = events.get_nowait()
                    except queue.Empty:
                        break
                finished = item is None
                if losses:
                    k, loss = losses[-1]
                    progress((k, config.steps), desc="learning the motion", unit="steps")
                    yield (f"learning: step {k} / {config.steps}, loss {loss:.4f}",
                           self.loss_frame(losses), *keep)
        finally:
            self.studio.stop()  # if the page went away mid-run, the model is freed
            worker.join()
            self.studio.stop_event.clear()

        error = box.get("error")
        if error is not None and not isinstance(error, (Stopped, ReenactError)):
            raise error  # a bug: gradio shows a generic error, the log the traceback
        if isinstance(error, Stopped):
            status = str(error)
        elif error is not None:
            status = error_html(message(error, path))
        else:
            meta = box["motion"].embedding.metadata
            status = (f"Saved **{name}** to the motion library ({box['motion'].path}): "
                      f"{meta['steps_done']} steps, final loss {meta['final_loss']:.4g}, "
                      f"{time.perf_counter() - started:.1f} s. Animate images with it in the "
                      f"**Animate** tab.")
        yield (status, self.loss_frame(losses), *self.refresh(name))

    def stop(self):
        self.studio.stop()
        return "Stopping after the current step..."

    # -- Motion library -------------------------------------------------------------------------

    def select(self, name):
        """Outputs: the file to download, the reconstruction video (cleared), and a description
        saying whether the motion fits the loaded model."""
        if not name:
            return None, None, ""
        try:
            motion = self.studio.motion(name)
        except ReenactError as e:
            return None, None, error_html(message(e))
        emb = motion.embedding
        fits = "fits the loaded model"
        try:
            embedding.check_compatible(emb, self.studio.pipe.unet, self.studio.model,
                                       self.studio.num_frames)
        except EmbeddingError as e:
            fits = message(e)
        info = (f"**{motion.name}**: F = {emb.num_frames}, N = {emb.tokens}, d = {emb.dim}; "
                f"learned on '{emb.metadata.get('base_model', '?')}' from "
                f"'{emb.metadata.get('reference', '?')}'; {fits}.")
        return str(motion.path), None, info

    def add(self, upload, name):
        """Add an uploaded .safetensors. Outputs: status, then the library views."""
        try:
            motion = self.studio.import_motion(upload, name or None)
        except ReenactError as e:
            return (error_html(message(e, upload)), *self.refresh())
        return (f"Added **{motion.name}** to the library.", *self.refresh(motion.name))

    def reconstruct(self, name, reference, steps, min_g, max_g, seed, fps, bucket, aug, chunk,
                    progress=gr.Progress(track_tqdm=True)):
        """Outputs: reference | reconstruction video, the PSNR report."""
        try:
            result = self.studio.reconstruct(
                name, generation(steps, min_g, max_g, seed, fps, bucket, aug, chunk), reference)
        except ReenactError as e:
            return None, error_html(message(e, reference))
        return str(result.compare), "Left: the reference; right: its reconstruction.\n\n" + result.report

    # -- Animate ----------------------------------------------------------------------------------

    def animate(self, name, images, steps, min_g, max_g, seed, fps, bucket, aug, chunk,
                progress=gr.Progress(track_tqdm=True)):
        """Outputs: reference | results video, the downloads, status (progress: the pipeline's
        denoising bar, tracked by gradio)."""
        images = [getattr(i, "name", i) for i in (images or [])]
        try:
            result = self.studio.animate(
                name, images, generation(steps, min_g, max_g, seed, fps, bucket, aug, chunk))
        except ReenactError as e:
            return None, None, error_html(message(e, images))
        g = result.settings
        what = "the reference, then " if result.with_reference else ""
        return (str(result.compare), [str(f) for f in result.files],
                f"{len(images)} video(s): {what}the results, left to right (enlarged "
                f"x{self.studio.view_factor}; the downloads are at the model's "
                f"{g.height}x{g.width}), fps {g.fps}, motion bucket {g.motion_bucket_id}, "
                f"seed {g.seed}.")


def build_app(studio: Studio) -> gr.Blocks:
    """The page over ``studio``: three tabs; long jobs share one queue slot ("model")."""
    h = Handlers(studio)
    examples = studio.examples()
    d = studio.defaults  # the loaded model's profile
    gen_d = GenerationConfig()  # SVD's generation defaults
    with gr.Blocks(title="reenact", analytics_enabled=False) as app:
        gr.Markdown("# reenact: motion transfer\nLearn a motion once from a reference video, "
                    f"then animate any number of images with it. {studio.summary}.")
        with gr.Tabs():
            with gr.Tab("Learn a motion", id="learn"):
                with gr.Row():
                    with gr.Column():
                        ref_file = gr.File(
                            label="reference video (mp4/mov/webm/gif)", elem_id="ref-file",
                            file_types=sorted(video.VIDEO_SUFFIXES | video.ANIMATED_SUFFIXES))
                        example = gr.Dropdown(choices=list(examples), value=None,
                                              label="...or a toy example", elem_id="example")
                        with gr.Row():
                            start = gr.Number(0, label="start (frame index)", precision=0,
                                              minimum=0, elem_id="start")
                            end = gr.Number(0, label="end (0: the clip's end)", precision=0,
                                            minimum=0, elem_id="end")
                            stride = gr.Number(1, label="stride", precision=0, minimum=1,
                                               elem_id="stride")
                        preview_btn = gr.Button("Preview the frames the model will use",
                                                elem_id="preview-btn")
                        preview_info = gr.Markdown(elem_id="preview-info")
                        preview = gr.Gallery(label="the frames the model will use", columns=4,
                                             height="auto", elem_id="preview")
                    with gr.Column():
                        name = gr.Textbox(label="motion name (letters, digits, - and _)",
                                          elem_id="motion-name")
                        with gr.Row():
                            steps = gr.Number(d.steps, label="steps", precision=0, minimum=1,
                                              elem_id="learn-steps")
                            tokens = gr.Number(d.tokens, label="tokens N per set", precision=0,
                                               minimum=1)
                            seed = gr.Number(d.seed, label="seed", precision=0, minimum=0)
                        with gr.Accordion("advanced", open=False):
                            lr = gr.Number(d.lr, label="learning rate (Adam)")
                            sets = gr.Radio(["per-frame", "shared"], value=d.sets,
                                            label="token sets (per-frame: the paper's)")
                            log_sigma_mean = gr.Number(d.log_sigma_mean,
                                                       label="mean of ln sigma (noise levels)")
                        with gr.Row():
                            learn_btn = gr.Button("Learn the motion", variant="primary",
                                                  elem_id="learn-btn")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                        learn_status = gr.Markdown(elem_id="learn-status")
                        loss_plot = gr.LinePlot(x="step", y="loss", color="series", label="loss",
                                                height=260, elem_id="loss-plot")

            with gr.Tab("Motion library", id="library"):
                table = gr.Dataframe(headers=ROW_HEADERS, interactive=False,
                                     elem_id="library-table")
                thumbs = gr.Gallery(label="references", columns=6, height=220, fit_columns=False,
                                    object_fit="contain", elem_id="library-gallery")
                with gr.Row():
                    with gr.Column():
                        lib_pick = gr.Dropdown(label="motion", choices=[], elem_id="lib-pick")
                        lib_info = gr.Markdown(elem_id="lib-info")
                        lib_file = gr.File(label="download the .safetensors", interactive=False,
                                           elem_id="lib-download")
                    with gr.Column():
                        upload = gr.File(label="add a motion learned elsewhere (.safetensors)",
                                         file_types=[".safetensors"], elem_id="motion-upload")
                        upload_name = gr.Textbox(label="name in the library (default: the "
                                                       "file's name)", elem_id="upload-name")
                        upload_btn = gr.Button("Add to the library", elem_id="upload-btn")
                        upload_status = gr.Markdown(elem_id="upload-status")
                gr.Markdown("### Reconstruct (the paper's diagnostic)\nAnimate the reference's "
                            "own first frame with the motion and compare the result with the "
                            "reference (generation settings: the Animate tab's).")
                with gr.Row():
                    with gr.Column():
                        recon_ref = gr.File(label="reference video (only for motions learned "
                                                  "elsewhere)", elem_id="recon-ref")
                        recon_btn = gr.Button("Reconstruct", elem_id="recon-btn")
                    with gr.Column():
                        recon_video = gr.Video(label="reference | reconstruction", autoplay=True,
                                               loop=True, elem_id="recon-video")
                recon_report = gr.Markdown(elem_id="recon-report")

            with gr.Tab("Animate", id="animate"):
                with gr.Row():
                    with gr.Column():
                        anim_pick = gr.Dropdown(label="motion", choices=[], elem_id="anim-pick")
                        targets = gr.File(label=f"target images (up to {MAX_TARGETS})",
                                          file_count="multiple", elem_id="targets",
                                          file_types=sorted(video.IMAGE_SUFFIXES))
                        with gr.Row():
                            g_steps = gr.Number(gen_d.steps, label="steps",
                                                precision=0, minimum=1, elem_id="animate-steps")
                            g_seed = gr.Number(gen_d.seed, label="seed", precision=0, minimum=0)
                        with gr.Row():
                            g_min = gr.Number(gen_d.min_guidance, label="guidance min")
                            g_max = gr.Number(gen_d.max_guidance, label="guidance max")
                        with gr.Row():
                            g_fps = gr.Textbox("", label="fps", placeholder="the motion's")
                            g_bucket = gr.Textbox("", label="motion bucket id",
                                                  placeholder="the motion's")
                        with gr.Accordion("advanced", open=False):
                            g_aug = gr.Textbox("", label="noise aug strength",
                                               placeholder="the motion's")
                            g_chunk = gr.Number(gen_d.decode_chunk_size, precision=0,
                                                label="frames per VAE decode", minimum=1)
                        anim_btn = gr.Button("Animate", variant="primary", elem_id="animate-btn")
                    with gr.Column():
                        anim_video = gr.Video(label="reference | results", autoplay=True,
                                              loop=True, elem_id="anim-video")
                        anim_status = gr.Markdown(elem_id="anim-status")
                        anim_files = gr.File(label="downloads (mp4 and gif)", interactive=False,
                                             file_count="multiple", elem_id="anim-files")

        knobs = [g_steps, g_min, g_max, g_seed, g_fps, g_bucket, g_aug, g_chunk]
        library = [table, thumbs, lib_pick, anim_pick]
        on_model = {"concurrency_id": "model", "concurrency_limit": 1}  # one job at a time
        example.change(h.example, example, ref_file)
        preview_btn.click(h.preview, [ref_file, start, end, stride], [preview, preview_info])
        ref_file.change(h.preview, [ref_file, start, end, stride], [preview, preview_info])
        learn_btn.click(h.learn, [ref_file, name, start, end, stride, steps, tokens, seed, lr,
                                  sets, log_sigma_mean], [learn_status, loss_plot, *library],
                        **on_model)
        stop_btn.click(h.stop, None, learn_status, queue=False)
        lib_pick.change(h.select, lib_pick, [lib_file, recon_video, lib_info])
        upload_btn.click(h.add, [upload, upload_name], [upload_status, *library])
        recon_btn.click(h.reconstruct, [lib_pick, recon_ref, *knobs], [recon_video, recon_report],
                        **on_model)
        anim_btn.click(h.animate, [anim_pick, targets, *knobs],
                       [anim_video, anim_files, anim_status], **on_model)
        app.load(h.refresh, None, library)
    return app


def serve(model: str = models.TOY_MODEL, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          share_dir: str | os.PathLike = DEFAULT_SHARE_DIR, block: bool = True) -> gr.Blocks:
    """Load ``model``, build the page, serve it on ``host:port`` (``reenact ui``).

    gradio may read files only from the share folder (plus its own upload cache); uploads are
    capped at the largest per-kind limit (each handler checks its own, smaller ones).
    """
    studio = Studio(model, share_dir)
    app = build_app(studio)
    app.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    try:
        app.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                   allowed_paths=[str(studio.share)], max_file_size=MAX_VIDEO_BYTES,
                   prevent_thread_lock=not block, show_error=False, footer_links=[],
                   theme=theme, css=_CSS, ssr_mode=False)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port} ({' '.join(str(e).split())}); "
                          "pass another --port") from None
    return app
