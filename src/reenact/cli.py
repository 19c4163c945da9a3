"""Command line: ``reenact invert | animate | reconstruct | info | batch | demo | bench | ui``.

Thin by design (STYLE.md): each command parses its flags, validates what the user gave *before*
loading any model (numbers in range, input files readable, output writable), calls the library,
and prints. Problems the user can fix are :class:`~reenact.errors.ReenactError`; :func:`main`
catches them once and prints ``reenact: error: <message>`` (one line, exit 2). Anything else is a
bug and keeps its traceback. Results are written atomically by the library, so a failed or
interrupted run leaves no partial output.

Defaults are read from where they are decided -- :class:`~reenact.inversion.InversionConfig`
for the optimisation, the signature of ``StableVideoDiffusionPipeline.__call__`` for generation
-- so the help text shows the values the library really uses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from reenact.errors import ConfigError, ModelNotFoundError, ReenactError
from reenact.quiet import quiet_libraries

__all__ = ["main", "build_parser"]


# transformers warns once, at import, when torchvision is missing (its PIL fallback is fine)
with quiet_libraries():
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from reenact import embedding, inversion, models, routing, studio, video
    from reenact.embedding import MotionEmbedding
    from reenact.inversion import InversionConfig
    from reenact.metrics import frame_psnr

_DEFAULTS = InversionConfig()
# StableVideoDiffusionPipeline.__call__'s keyword defaults: steps, guidance, fps, bucket, ...
_SVD = {
    name: p.default
    for name, p in inspect.signature(StableVideoDiffusionPipeline.__call__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
_DECODE_CHUNK = 8  # SVD's docs example; decoding all frames at once is a common OOM (METHOD.md)
_ANIMATE_BATCH = 4


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)``, except for empty defaults, whose help says what is used."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


class _TopHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help keeps the line breaks of its description and examples."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _size(text: str) -> tuple[int, int]:
    """``HxW`` -> ``(H, W)`` (argparse type of ``--optim-size``)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 320x576 (got {text!r})") from None
    return h, w


def _check_size(args: argparse.Namespace) -> None:
    for flag in ("height", "width"):
        value = getattr(args, flag)
        _require(value is None or (value >= 8 and value % 8 == 0),
                 f"--{flag} must be a positive multiple of 8 (got {value})")


def _check_range(args: argparse.Namespace) -> None:
    _require(args.start >= 0, f"--start must be a frame index >= 0 (got {args.start})")
    _require(args.end is None or args.end > args.start,
             f"--end must be greater than --start={args.start} (got {args.end})")
    _require(args.stride >= 1, f"--stride must be >= 1 (got {args.stride})")


def _device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = models.resolve_device(args.device)
    name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    return device, models.resolve_dtype(name, device)


@contextlib.contextmanager
def _remove_new_folders_on_failure(*folders: Path) -> Iterator[None]:
    """The writability checks create missing output folders; if the command then fails, remove
    those it created (and that are still empty), so a failed run leaves nothing behind."""
    new = [p for folder in folders for p in [folder, *folder.parents] if not p.exists()]
    try:
        yield
    except BaseException:
        for p in sorted(set(new), key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _model_source(model: str) -> str:
    """What ``from_pretrained`` gets for ``model``: a local folder, or the hub id unchanged."""
    folder = models.toy_model_dir() if model == models.TOY_MODEL else Path(model).expanduser()
    if model == models.TOY_MODEL or folder.exists() or models._looks_like_path(model):
        if not (folder / "model_index.json").is_file():
            models.load_pipeline(model, "cpu")  # raises its one-line error before reading weights
            raise ModelNotFoundError(f"model '{model}' not found")
        return str(folder)
    return model


def _model_geometry(model: str) -> tuple[int, int, int]:
    """``(F, H, W)`` of ``model`` from its config files alone, without loading any weights.

    So the reference clip can be loaded (and rejected) before the model. ``F`` is the UNet's
    ``num_frames``. ``H x W`` is the pipeline's own rule, ``sample_size * vae_scale_factor``,
    with one exception: SVD's checkpoints say ``sample_size`` 96 (768x768) but were trained
    at 576x1024, the pipeline's default -- the same latent area (72*128 = 96*96). So when the
    pipeline's default size has the model's native area we use it.
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    source = _model_source(model)
    try:
        with quiet_libraries():
            unet = UNetSpatioTemporalConditionModel.load_config(source, subfolder="unet")
            vae = AutoencoderKLTemporalDecoder.load_config(source, subfolder="vae")
    except (OSError, ValueError) as e:
        if source != model or Path(source).is_dir():  # a local folder: its own problem
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(f"could not load model from '{model}': {reason}") from None
        raise ModelNotFoundError(
            f"model '{model}' not found locally and could not be downloaded; download it "
            f"(huggingface-cli download {model} --local-dir DIR) and pass --model DIR"
        ) from None
    unet_init = inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters
    frames = unet.get("num_frames", unet_init["num_frames"].default)
    height, width = _SVD["height"], _SVD["width"]
    if unet.get("sample_size"):
        blocks = vae.get("block_out_channels")
        scale = 2 ** (len(blocks) - 1) if blocks else 8  # the pipeline's vae_scale_factor
        side = unet["sample_size"] * scale
        if side * side != height * width:
            height = width = side
    return int(frames), int(height), int(width)


def _load_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                progress: bool, cpu_offload: bool = False, generation: bool = False):
    """``--model`` as a MotionTransferPipeline; ``progress``: its denoising bar.

    ``generation``: also apply the generation commands' speed/memory flags: ``--vae-dtype``
    (before the offload hooks are installed), ``--attention`` and ``--compile`` (the UNet).
    ``invert`` applies its own through :class:`InversionConfig`, for the run only.
    """
    pipe = models.load_pipeline(args.model, "cpu" if cpu_offload else device, dtype,
                                progress=progress)
    if generation and args.vae_dtype:
        pipe.vae.to(dtype=models.resolve_dtype(args.vae_dtype, device))
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    if generation:
        routing.set_attention(pipe.unet, args.attention)
        if args.compile:
            pipe.unet.compile()
    return pipe


def _meta_number(emb: MotionEmbedding, key: str) -> int | float | None:
    value = emb.metadata.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------
# invert
# --------------------------------------------------------------------------------------------

def _inversion_config(args: argparse.Namespace) -> InversionConfig:
    """The flags whose names are :class:`InversionConfig` fields, validated; errors name flags."""
    config = InversionConfig(**{f.name: getattr(args, f.name)
                                for f in fields(InversionConfig) if hasattr(args, f.name)})
    try:
        config.validate()
    except ConfigError as e:  # "steps must be >= 1" -> "--steps must be >= 1"
        name, _, rest = str(e).partition(" ")
        if hasattr(args, name):
            raise ConfigError(f"--{name.replace('_', '-')} {rest}") from None
        raise
    return config


def cmd_invert(args: argparse.Namespace) -> int:
    """``reenact invert``: motion-textual inversion of one reference clip into a .safetensors."""
    progress = not args.no_progress
    config = _inversion_config(args)
    if not config.checkpoint_every:
        args.interrupted = "interrupted; nothing to resume from (--checkpoint-every 0)"
    _check_size(args)
    _check_range(args)
    device, dtype = _device_and_dtype(args)
    output = Path(args.output)
    _require(output.suffix == ".safetensors",
             f"{output}: the motion embedding is written as .safetensors; name it *.safetensors")
    _require(bool(args.preview) or (args.preview_dir is None and not args.preview_every),
             "--preview-dir / --preview-every need images to animate: pass --preview IMAGE ...")
    preview_dir = None
    if args.preview:
        preview_dir = Path(args.preview_dir or output.with_name(f"{output.stem}_previews"))

    # inputs first (cheap, and the usual mistakes), then the model
    num_frames, height, width = _model_geometry(args.model)
    height, width = args.height or height, args.width or width
    frames = video.load_video(args.video, num_frames, height, width,
                              args.start, args.end, args.stride)
    previews = [video.load_image(p, height, width) for p in args.preview]
    ckpt = inversion.checkpoint_path(output)
    if ckpt.exists() and not args.resume:
        print(f"reenact: note: starting over; {ckpt} will be overwritten "
              "(pass --resume to continue it)", file=sys.stderr)

    with _remove_new_folders_on_failure(output.parent, *([preview_dir] if preview_dir else [])):
        video.check_writable_file(output)
        if preview_dir is not None:
            video.check_writable_dir(preview_dir)
        pipe = _load_model(args, device, dtype, progress=False)  # previews: no second bar
        name = Path(args.video).name
        if (args.start, args.end, args.stride) != (0, None, 1):
            name += f" frames {args.start}:{'' if args.end is None else args.end}:{args.stride}"
        result = inversion.invert(
            pipe, frames, config, output=output, reference_name=name, resume=args.resume,
            preview_images=previews, preview_dir=preview_dir, progress=progress,
        )

    for path in result.previews:
        print(path)
    emb = result.embedding
    ran = result.steps_done - result.resumed_from
    rate = ran / result.seconds if result.seconds > 0 else float("inf")
    line = (f"saved {output}: F={emb.num_frames} N={emb.tokens} d={emb.dim}, "
            f"steps {result.steps_done}, final loss {emb.metadata['final_loss']:.4g}, "
            f"{result.seconds:.1f} s ({rate:.2f} it/s)")
    if result.resumed_from:
        line += f", resumed from step {result.resumed_from}"
    if result.stopped_early:
        line += ", stopped early"
    print(line)
    return 0


# --------------------------------------------------------------------------------------------
# generation: animate, reconstruct
# --------------------------------------------------------------------------------------------

@dataclass
class _Generation:
    """Micro-conditioning and size of a generation: flag, else the embedding's, else SVD's."""

    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    height: int
    width: int


def _check_generation_flags(args: argparse.Namespace) -> None:
    _require(args.steps >= 1, f"--steps must be >= 1 (got {args.steps})")
    _require(args.min_guidance >= 0, f"--min-guidance must be >= 0 (got {args.min_guidance})")
    _require(args.max_guidance >= 0, f"--max-guidance must be >= 0 (got {args.max_guidance})")
    _require(args.fps is None or args.fps >= 1, f"--fps must be >= 1 (got {args.fps})")
    _require(args.motion_bucket_id is None or args.motion_bucket_id >= 0,
             f"--motion-bucket-id must be >= 0 (got {args.motion_bucket_id})")
    _require(args.noise_aug_strength is None or args.noise_aug_strength >= 0,
             f"--noise-aug-strength must be >= 0 (got {args.noise_aug_strength})")
    _require(args.decode_chunk_size >= 1,
             f"--decode-chunk-size must be >= 1 (got {args.decode_chunk_size})")
    if args.vae_dtype is not None:
        try:
            models.resolve_dtype(args.vae_dtype, models.resolve_device(args.device))
        except ConfigError as e:
            raise ConfigError(f"--vae-dtype: {e}") from None
    _check_size(args)


def _generation(args: argparse.Namespace, emb: MotionEmbedding) -> _Generation:
    def pick(key: str) -> int | float | None:
        flag = getattr(args, key)
        return flag if flag is not None else _meta_number(emb, key)

    height, width = pick("height"), pick("width")
    if args.height is None or args.width is None:  # a size from the file, or the model's
        _, native_h, native_w = _model_geometry(args.model)
        embedding.check_recorded_size(emb, native_h, native_w)  # before anything is sized by it
        height, width = height or native_h, width or native_w
    _require(height % 8 == 0 and width % 8 == 0,
             f"{emb.name} records a size {height}x{width} that is not a multiple of 8; "
             "pass --height and --width")
    fps, bucket, aug = pick("fps"), pick("motion_bucket_id"), pick("noise_aug_strength")
    return _Generation(
        fps=int(fps if fps is not None else _SVD["fps"]),
        motion_bucket_id=int(bucket if bucket is not None else _SVD["motion_bucket_id"]),
        noise_aug_strength=float(aug if aug is not None else _SVD["noise_aug_strength"]),
        height=int(height),
        width=int(width),
    )


def _generate(pipe, emb: MotionEmbedding, images: list, gen: _Generation,
              args: argparse.Namespace, output_type: str = "pil"):
    """One batched pipeline call. One generator per image, all seeded ``--seed``: an image's
    video does not depend on which other images share its batch."""
    return pipe(
        images,
        motion_embedding=emb,
        height=gen.height,
        width=gen.width,
        num_frames=emb.num_frames,
        num_inference_steps=args.steps,
        min_guidance_scale=args.min_guidance,
        max_guidance_scale=args.max_guidance,
        fps=gen.fps,
        motion_bucket_id=gen.motion_bucket_id,
        noise_aug_strength=gen.noise_aug_strength,
        decode_chunk_size=args.decode_chunk_size,
        generator=[torch.Generator().manual_seed(args.seed) for _ in images],
        output_type=output_type,
    ).frames


def cmd_animate(args: argparse.Namespace) -> int:
    """``reenact animate``: one video per image, with the embedding's motion."""
    progress = not args.no_progress
    _check_generation_flags(args)
    _require(args.batch_size >= 1, f"--batch-size must be >= 1 (got {args.batch_size})")
    device, dtype = _device_and_dtype(args)
    if args.cpu_offload:
        _require(device.type == "cuda",
                 f"--cpu-offload needs a CUDA device (the device is {device.type})")
        _require(importlib.util.find_spec("accelerate") is not None,
                 "--cpu-offload needs the accelerate package (pip install accelerate)")
    paths = [Path(p) for p in args.images]
    stems: dict[str, Path] = {}
    for p in paths:
        _require(p.stem not in stems,
                 f"{stems.get(p.stem)} and {p} would both be written as '{p.stem}'; rename one")
        stems[p.stem] = p

    emb = MotionEmbedding.load(args.embedding)
    images = [video.load_image(p) for p in paths]
    gen = _generation(args, emb)
    images = [video.resize_center_crop(im, gen.height, gen.width) for im in images]
    out_dir = Path(args.output)
    suffix = "" if args.format == "png" else f".{args.format}"
    targets = [out_dir / f"{p.stem}{suffix}" for p in paths]

    with _remove_new_folders_on_failure(out_dir):
        video.check_writable_dir(out_dir)
        pipe = _load_model(args, device, dtype, progress, cpu_offload=args.cpu_offload,
                           generation=True)
        embedding.check_compatible(emb, pipe.unet, args.model, pipe.unet.config.num_frames)
        for i in range(0, len(images), args.batch_size):
            videos = _generate(pipe, emb, images[i : i + args.batch_size], gen, args)
            for frames, target in zip(videos, targets[i : i + args.batch_size]):
                print(video.write_video(frames, target, fps=gen.fps, fmt=args.format))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``reenact reconstruct``: the paper's diagnostic, the reference redone from its first frame."""
    progress = not args.no_progress
    _check_generation_flags(args)
    _check_range(args)
    device, dtype = _device_and_dtype(args)
    output = Path(args.output) if args.output else None
    if output is not None:
        video.output_format(output)  # an unknown suffix is refused before any work

    emb = MotionEmbedding.load(args.embedding)
    gen = _generation(args, emb)
    reference = video.load_video(args.video, emb.num_frames, gen.height, gen.width,
                                 args.start, args.end, args.stride)
    recorded = emb.metadata.get("reference_sha256")
    if recorded and recorded != inversion._reference_fingerprint(reference, "")["sha256"]:
        print(f"reenact: note: this clip (range, size) differs from the one {emb.name} was "
              "learned on; the PSNR measures transfer, not reconstruction", file=sys.stderr)

    with _remove_new_folders_on_failure(*([output.parent] if output else [])):
        if output is not None:
            video.check_writable_output(output)
        pipe = _load_model(args, device, dtype, progress, generation=True)
        embedding.check_compatible(emb, pipe.unet, args.model, pipe.unet.config.num_frames)
        first = video.tensor_to_images(reference[:1])[0]
        result = _generate(pipe, emb, [first], gen, args, output_type="pt")[0] * 2 - 1
        if output is not None:
            video.write_video(result, output, fps=gen.fps)

    scores = frame_psnr(result.cpu(), reference)
    print(f"PSNR of the reconstruction to {Path(args.video).name} (pixels, dB):")
    for f, score in enumerate(scores):
        print(f"frame {f}: {score:.2f}")
    print(f"mean: {sum(scores) / len(scores):.2f}")
    if output is not None:
        print(f"saved {output}")
    return 0


# --------------------------------------------------------------------------------------------
# info, demo, bench
# --------------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    """``reenact info``: an embedding's shape, then its metadata, sorted."""
    emb = MotionEmbedding.load(args.embedding)
    print(f"{emb.path}: (F+1) x N x d = {emb.num_frames + 1} x {emb.tokens} x {emb.dim} "
          f"(F={emb.num_frames} frames, N={emb.tokens} tokens, d={emb.dim})")
    for key in sorted(emb.metadata):
        value = emb.metadata[key]
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)  # inversion stores its settings as a JSON string
        if isinstance(value, dict):
            print(f"{key}:")
            for sub in sorted(value):
                print(f"  {sub}: {value[sub]}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """``reenact batch``: a plan of motions x targets on Ray (:mod:`reenact.batch`)."""
    missing = [m for m in ("ray", "yaml") if importlib.util.find_spec(m) is None]
    _require(not missing, f"reenact batch needs {' and '.join(missing)}: "
                          "pip install 'reenact[batch]'")
    from reenact import batch

    try:
        plan = batch.load_plan(args.plan)
    except batch.PlanError as e:  # every problem on its own line, then exit 2
        for problem in e.problems:
            print(f"reenact: error: {e.plan}: {problem}", file=sys.stderr)
        return e.exit_code
    with quiet_libraries():
        summary = batch.run_batch(plan, args.output, address=args.address,
                                  gpus_per_job=args.gpus_per_job, max_parallel=args.max_parallel,
                                  progress=not args.no_progress)
    print(summary.line())
    return 1 if summary.failed else 0


def _toy_module(name: str):
    module = f"reenact.toy.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ReenactError(f"{module} is not part of this installation; reinstall reenact") from None


def cmd_demo(args: argparse.Namespace) -> int:
    """``reenact demo``: forwards to :func:`reenact.toy.demo.run_demo`."""
    _require(args.steps is None or args.steps >= 1, f"--steps must be >= 1 (got {args.steps})")
    demo = _toy_module("demo")
    out = Path(args.out)
    with _remove_new_folders_on_failure(out):
        video.check_writable_dir(out)
        kwargs = {} if args.seed is None else {"seed": args.seed}
        summary = demo.run_demo(out, steps=args.steps, progress=not args.no_progress, **kwargs)
    for key, value in (summary or {}).items():
        print(f"{key}: {value}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``reenact ui``: serve the web UI (:mod:`reenact.app`) until Ctrl-C."""
    _require(1 <= args.port <= 65535, f"--port must be in 1..65535 (got {args.port})")
    if importlib.util.find_spec("gradio") is None:
        raise ReenactError("the web UI needs gradio: pip install 'reenact[ui]' (or pip install gradio)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"reenact: note: serving on {args.host}: anyone who can reach this machine on port "
              f"{args.port} can use the UI, run jobs on it and download what is in "
              f"{args.share_dir}", file=sys.stderr)
    with quiet_libraries():
        from reenact import app  # gradio is imported only here

        app.serve(model=args.model, host=args.host, port=args.port, share_dir=args.share_dir)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``reenact bench toy ARGS``: forwards ARGS to :func:`reenact.toy.bench.main`."""
    bench = _toy_module("bench")
    return int(bench.main(list(args.args)) or 0)


# --------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------

def _add_model_flags(p: argparse.ArgumentParser, seed_default: int, seed_help: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=models.DEFAULT_MODEL,
                   help="hub id, local diffusers SVD folder, or 'toy' (the bundled model); "
                        "the default is the paper's base model")
    g.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N | mps; auto picks cuda, then mps, then cpu")
    g.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="weights' precision (default: fp16 on cuda, as SVD is released; "
                        "fp32 elsewhere)")
    g.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_range_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reference clip (resampled to the model's F frames)")
    g.add_argument("--start", type=int, default=0, help="first frame index used")
    g.add_argument("--end", type=int, default=None,
                   help="frame index after the last one used (default: the clip's end)")
    g.add_argument("--stride", type=int, default=1, help="keep every k-th frame of the range")


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: SVD pipeline; micro-conditioning and size "
                             "from the embedding's metadata when recorded)")
    g.add_argument("--steps", type=int, default=_SVD["num_inference_steps"],
                   help="Euler denoising steps (SVD pipeline default)")
    g.add_argument("--min-guidance", type=float, default=_SVD["min_guidance_scale"],
                   help="CFG scale of the first frame (SVD pipeline default)")
    g.add_argument("--max-guidance", type=float, default=_SVD["max_guidance_scale"],
                   help="CFG scale of the last frame, linear in between (SVD pipeline default)")
    g.add_argument("--fps", type=int, default=None,
                   help=f"fps micro-conditioning and of the written video (default: the "
                        f"embedding's, else SVD's {_SVD['fps']})")
    g.add_argument("--motion-bucket-id", type=int, default=None,
                   help=f"motion-amount micro-conditioning (default: the embedding's, else "
                        f"SVD's {_SVD['motion_bucket_id']})")
    g.add_argument("--noise-aug-strength", type=float, default=None,
                   help=f"noise added to the image's latent (default: the embedding's, else "
                        f"SVD's {_SVD['noise_aug_strength']})")
    g.add_argument("--decode-chunk-size", type=int, default=_DECODE_CHUNK,
                   help="frames per VAE decode (SVD docs' value; lower it if out of memory)")
    g.add_argument("--height", type=int, default=None,
                   help="output height, a multiple of 8 (default: the embedding's, else the "
                        "model's native height)")
    g.add_argument("--width", type=int, default=None,
                   help="output width, a multiple of 8 (default: the embedding's, else the "
                        "model's native width)")

    g = p.add_argument_group("speed and memory")
    g.add_argument("--vae-dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="precision of the VAE (default: --dtype's). fp16 as the SVD pipeline "
                        "does it: the image is encoded in fp32 (the VAE's force_upcast), the "
                        "frames decoded in fp16 (half the memory of fp32); fp32 is the safe "
                        "choice if fp16 decoding shows artefacts. No fp16 on the CPU")
    _add_speed_flags(g)


def _add_speed_flags(g) -> None:
    """``--attention`` and ``--compile``: shared by invert and the generation commands."""
    g.add_argument("--attention", choices=routing.ATTENTION_KINDS, default=_DEFAULTS.attention,
                   help="sdpa: torch's fused scaled_dot_product_attention (diffusers' default); "
                        "eager: diffusers' classic matmul-softmax AttnProcessor (a reference; "
                        "it holds whole attention matrices)")
    g.add_argument("--compile", action="store_true", default=_DEFAULTS.compile,
                   help="torch.compile the UNet (compiles on the first step: slow to start)")


def _add_invert(sub) -> None:
    d = _DEFAULTS
    p = sub.add_parser(
        "invert", formatter_class=_HelpFormatter,
        help="learn a motion embedding from a reference video",
        description="Motion-textual inversion: optimise a (F+1) x N x d motion embedding so the "
                    "frozen SVD reconstructs VIDEO. Ctrl-C stops; rerun with --resume to "
                    "continue from the last checkpoint.",
    )
    p.add_argument("video", help="reference: a video file, an animated gif or a folder of frames")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors",
                   help="where the embedding is written (checkpoints: FILE.safetensors.ckpt)")
    _add_model_flags(p, d.seed, "seed of initialisation, augmentations and noise sampling")
    _add_range_flags(p)

    g = p.add_argument_group("optimisation (paper: Adam on the EDM loss; what it leaves open "
                             "has defaults from our toy-model measurements)")
    g.add_argument("--steps", type=int, default=d.steps,
                   help="optimisation steps: the toy benchmark reaches 90%% of its final transfer score by 30 and 98%% by 120 (benchmarks/convergence.py); the paper shows snapshots at 200-2000 for real SVD")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (benchmarks/convergence.py: 1e-2 needs 8x the steps, 1e-1 plateaus lower)")
    g.add_argument("--lr-schedule", choices=inversion._SCHEDULES, default=d.lr_schedule,
                   help="learning-rate schedule (open in the paper)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear warm-up of warmup-cosine")
    g.add_argument("--optimizer", choices=inversion._OPTIMIZERS, default=d.optimizer,
                   help="paper: Adam; adamw runs without weight decay (it pulls the embedding "
                        "to zero)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="noise samples per step (public reimplementation: 1)")
    g.add_argument("--log-sigma-mean", type=float, default=d.log_sigma_mean,
                   help="mean of ln sigma (SVD fine-tuning: 0.7; public reimplementation: 2.8)")
    g.add_argument("--log-sigma-std", type=float, default=d.log_sigma_std,
                   help="std of ln sigma (SVD fine-tuning)")
    g.add_argument("--cond-log-sigma-mean", type=float, default=d.cond_log_sigma_mean,
                   help="mean of ln sigma of the conditioning-frame noise (SVD training)")
    g.add_argument("--cond-log-sigma-std", type=float, default=d.cond_log_sigma_std,
                   help="its std (SVD training; 0 = fixed)")
    g.add_argument("--cond-bank-size", type=int, default=d.cond_bank_size,
                   help="noisy conditioning latents precomputed per clip copy")
    g.add_argument("--early-stop-patience", type=int, default=d.early_stop_patience,
                   help="stop when the loss EMA has not improved for this many steps (0 = off)")
    g.add_argument("--early-stop-min-delta", type=float, default=d.early_stop_min_delta,
                   help="improvement that counts for early stopping")

    g = p.add_argument_group("the embedding (paper: per-frame sets, N = 5, CLIP initialisation)")
    g.add_argument("--tokens", type=int, default=d.tokens, help="N tokens per set (paper)")
    g.add_argument("--sets", choices=inversion._SETS, default=d.sets,
                   help="per-frame: F+1 distinct sets (paper); shared: one set (its ablation)")
    g.add_argument("--init", choices=inversion._INITS, default=d.init,
                   help="clip: the frames' CLIP embeddings (patent claim 3); random or zeros "
                        "for ablations")
    g.add_argument("--init-noise-std", type=float, default=d.init_noise_std,
                   help="noise making the N copies of a token differ (random: its std)")

    g = p.add_argument_group("micro-conditioning (SVD pipeline defaults; recorded in the "
                             "embedding and reused by animate)")
    g.add_argument("--fps", type=int, default=d.fps, help="fps conditioning (UNet sees fps-1)")
    g.add_argument("--motion-bucket-id", type=int, default=d.motion_bucket_id,
                   help="motion-amount conditioning")
    g.add_argument("--noise-aug-strength", type=float, default=d.noise_aug_strength,
                   help="image-noise conditioning used at generation")
    g.add_argument("--height", type=int, default=None,
                   help="size the clip is resized to and the embedding made for (default: the "
                        "model's native height; SVD: 576)")
    g.add_argument("--width", type=int, default=None,
                   help="(default: the model's native width; SVD: 1024)")

    g = p.add_argument_group("augmentations against appearance leakage (paper: used, kind open)")
    g.add_argument("--num-augmentations", type=int, default=d.num_augmentations,
                   help="augmented copies of the clip (0 = none)")
    g.add_argument("--flip-prob", type=float, default=d.flip_prob,
                   help="probability that a copy is mirrored")
    g.add_argument("--crop-scale", type=float, default=d.crop_scale,
                   help="a copy's crop side is drawn from [crop-scale, 1]")

    g = p.add_argument_group("speed and memory")
    g.add_argument("--optim-size", type=_size, default=d.optim_size, metavar="HxW",
                   help="optimise at this smaller size (default: the clip's size)")
    g.add_argument("--mixed-precision", choices=inversion._PRECISIONS, default=d.mixed_precision,
                   help="autocast dtype of the UNet passes")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   default=d.gradient_checkpointing,
                   help="recompute activations in the backward pass, temporal blocks included "
                        "(SVD 14x576x1024 fp16: 54.7 -> 11.0 GB, +40%% FLOPs per step)")
    _add_speed_flags(g)
    g.add_argument("--encode-chunk-size", type=int, default=d.encode_chunk_size,
                   help="frames per VAE encode")

    g = p.add_argument_group("checkpoints and previews")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K",
                   help="write FILE.safetensors.ckpt every K steps (0 = never)")
    g.add_argument("--resume", action="store_true",
                   help="continue from FILE.safetensors.ckpt (same clip, model and settings; "
                        "--steps may change)")
    g.add_argument("--preview", nargs="+", default=[], metavar="IMAGE",
                   help="images to animate with the embedding at the end (and every "
                        "--preview-every steps)")
    g.add_argument("--preview-every", type=int, default=d.preview_every, metavar="K",
                   help="preview every K steps (0 = only at the end)")
    g.add_argument("--preview-steps", type=int, default=d.preview_steps,
                   help="Euler steps of a preview (cheaper than SVD's 25)")
    g.add_argument("--preview-dir", default=None, metavar="DIR",
                   help="where previews go (default: FILE_previews/ next to the output)")
    p.set_defaults(run=cmd_invert, interrupted="interrupted; resume with --resume")


def _add_animate(sub) -> None:
    p = sub.add_parser(
        "animate", formatter_class=_HelpFormatter,
        help="animate images with a learned motion",
        description="Generate one video per IMAGE that starts from it and performs the motion "
                    "of EMBEDDING (SVD with the motion embedding in place of CLIP's).",
    )
    p.add_argument("embedding", help="a .safetensors file written by `reenact invert`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="target images (png/jpg/webp/bmp)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder: DIR/<image stem>.<format> (png: a folder of frames)")
    p.add_argument("--format", choices=video.OUTPUT_FORMATS, default="mp4", help="video format")
    p.add_argument("--batch-size", type=int, default=_ANIMATE_BATCH,
                   help="images per pipeline call (lower it if out of memory)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep idle components in CPU memory (cuda only; needs accelerate)")
    _add_model_flags(p, 0, "seed of the generation noise (each image gets the same seed)")
    _add_generation_flags(p)
    p.set_defaults(run=cmd_animate, interrupted="interrupted")


def _add_reconstruct(sub) -> None:
    p = sub.add_parser(
        "reconstruct", formatter_class=_HelpFormatter,
        help="diagnostic: animate the reference's first frame, print PSNR to the reference",
        description="The paper's diagnostic: if the embedding cannot reconstruct its own "
                    "reference from the first frame, transfer usually fails too. Prints the "
                    "per-frame pixel PSNR of the result to VIDEO and the mean.",
    )
    p.add_argument("embedding", help="a .safetensors file written by `reenact invert`")
    p.add_argument("video", help="the reference clip the embedding was learned on")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="also write the reconstruction (.mp4, .gif, or a folder name for pngs)")
    _add_model_flags(p, 0, "seed of the generation noise")
    _add_range_flags(p)
    _add_generation_flags(p)
    p.set_defaults(run=cmd_reconstruct, interrupted="interrupted")


def build_parser() -> argparse.ArgumentParser:
    """The ``reenact`` argument parser (subcommands set ``run`` and ``interrupted``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("reenact")
    except PackageNotFoundError:
        ver = "unknown"
    parser = argparse.ArgumentParser(
        prog="reenact", formatter_class=_TopHelpFormatter,
        description="Semantic video motion transfer by motion-textual inversion on Stable\n"
                    "Video Diffusion (Kansy et al., Reenact Anything, SIGGRAPH 2025).",
        epilog="typical use:\n"
               "  reenact invert walk.mp4 -o walk.safetensors\n"
               "  reenact animate walk.safetensors dog.png cat.png -o out/\n"
               "  reenact reconstruct walk.safetensors walk.mp4",
    )
    parser.add_argument("--version", action="version", version=f"reenact {ver}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_invert(sub)
    _add_animate(sub)
    _add_reconstruct(sub)

    p = sub.add_parser("info", formatter_class=_HelpFormatter,
                       help="print a motion embedding's shape and metadata")
    p.add_argument("embedding", help="a .safetensors file written by `reenact invert`")
    p.set_defaults(run=cmd_info, interrupted="interrupted")

    p = sub.add_parser(
        "batch", formatter_class=_HelpFormatter,
        help="invert many motions and animate many images with them, on Ray",
        description="Run a plan (YAML or JSON: motions, targets, shared settings; see the "
                    "README's Batch section): invert every motion, then animate the motion x "
                    "target grid, on a local Ray instance or a cluster. Rerunning skips valid "
                    "outputs and redoes missing or corrupt ones.",
    )
    p.add_argument("plan", help="the plan: a .yaml/.yml or .json file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder: motions/, results/, report.jsonl, index.html")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, or ray://HOST:10001 (default: start a local "
                        "Ray instance on this machine's CPUs and GPUs)")
    p.add_argument("--gpus-per-job", type=float, default=1,
                   help="GPUs each worker reserves (on a cluster without GPUs each worker uses "
                        "one CPU)")
    p.add_argument("--max-parallel", type=int, default=None, metavar="K",
                   help="workers at most (default: one per --gpus-per-job GPUs; without GPUs "
                        "one per CPU, one torch thread each)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_batch, interrupted="interrupted; rerun the same command to go on")

    p = sub.add_parser("demo", formatter_class=_HelpFormatter,
                       help="end-to-end run on the bundled toy model (CPU, minutes)")
    p.add_argument("-o", "--out", default="reenact-demo", help="output folder")
    p.add_argument("--steps", type=int, default=None,
                   help="inversion steps (default: the demo's own)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the demo's own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_demo, interrupted="interrupted")

    p = sub.add_parser("bench", formatter_class=_HelpFormatter,
                       help="motion-transfer benchmark (`reenact bench toy --help`)")
    p.add_argument("suite", choices=("toy",), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark")
    p.set_defaults(run=cmd_bench, interrupted="interrupted")

    p = sub.add_parser("ui", formatter_class=_HelpFormatter,
                       help="web UI: learn motions and animate images in the browser",
                       description="Serve the web UI (gradio) on HOST:PORT: learn a motion from a "
                                   "video, keep a motion library, animate images, reconstruct.")
    p.add_argument("--model", default=models.TOY_MODEL,
                   help="hub id, local diffusers SVD folder, or 'toy' (the bundled model, runs "
                        "on a laptop CPU)")
    p.add_argument("--host", default=studio.DEFAULT_HOST,
                   help="address to bind; 127.0.0.1 serves this machine only, 0.0.0.0 every "
                        "network it is on (anyone who can reach it can use the UI)")
    p.add_argument("--port", type=int, default=studio.DEFAULT_PORT,
                   help="port to serve on (gradio's default)")
    p.add_argument("--share-dir", default=studio.DEFAULT_SHARE_DIR, metavar="DIR",
                   help="folder of the motion library (DIR/motions), results (DIR/outputs) and "
                        "the toy examples")
    p.set_defaults(run=cmd_ui, interrupted="stopped")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reenact``: returns the exit code (argparse exits 2 on usage errors)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ReenactError as e:
        message = " ".join(str(e).split("\n"))
        print(f"reenact: error: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"reenact: {args.interrupted}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
