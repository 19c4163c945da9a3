"""Command line: ``reenact invert | animate | reconstruct | info | batch | demo | bench | ui``.

Thin by design (docs/ARCHITECTURE.md): each command parses its flags, validates what the user
gave *before* loading any model (numbers in range, input files readable, output writable),
calls one function of :mod:`reenact.api`, and prints. Problems the user can fix are
:class:`~reenact.errors.ReenactError`; :func:`main` catches them once and prints
``reenact: error: <message>`` (one line, exit 2). Anything else is a bug and keeps its
traceback. Results are written atomically by the library, so a failed or interrupted run leaves
no partial output.

The flags of the settings are generated from the dataclasses that hold them
(:class:`~reenact.inversion.InversionConfig`, :class:`~reenact.pipeline.GenerationConfig`):
their help text, default, source and range are written once, there, and per-model defaults
come from :mod:`reenact.profiles`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from reenact.errors import ConfigError, ReenactError
from reenact.quiet import quiet_libraries

# transformers warns once, at import, when torchvision is missing (its PIL fallback is fine)
with quiet_libraries():
    import torch

    from reenact import api, inversion, models, profiles, routing, studio, video
    from reenact.embedding import MotionEmbedding
    from reenact.inversion import InversionConfig
    from reenact.pipeline import GenerationConfig
    from reenact.settings import help_text

__all__ = ["main", "build_parser"]


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


def _flag_errors(config, args: argparse.Namespace) -> None:
    """``config.validate()``, with the field named as its flag: "--steps must be >= 1"."""
    try:
        config.validate()
    except ConfigError as e:
        name, _, rest = str(e).partition(" ")
        if hasattr(args, name):
            raise ConfigError(f"--{name.replace('_', '-')} {rest}") from None
        raise


def _check_range(args: argparse.Namespace) -> None:
    _require(args.start is None or args.start >= 0,
             f"--start must be a frame index >= 0 (got {args.start})")
    _require(args.end is None or args.end > (args.start or 0),
             f"--end must be greater than --start={args.start or 0} (got {args.end})")
    _require(args.stride is None or args.stride >= 1, f"--stride must be >= 1 (got {args.stride})")


def _check_size(args: argparse.Namespace) -> None:
    for flag in ("height", "width"):
        value = getattr(args, flag)
        _require(value is None or (8 <= value <= 4096 and value % 8 == 0),
                 f"--{flag} must be a positive multiple of 8 (got {value})")


def _device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = models.resolve_device(args.device)
    dtype = models.resolve_dtype(args.dtype, device) if args.dtype else models.default_dtype(device)
    return device, dtype


def _set_threads(args: argparse.Namespace) -> None:
    _require(args.threads is None or args.threads >= 1, f"--threads must be >= 1 (got {args.threads})")
    # not given: the free cores, never more than the process already uses (OMP_NUM_THREADS)
    torch.set_num_threads(args.threads or min(torch.get_num_threads(), models.default_threads()))


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


# --------------------------------------------------------------------------------------------
# invert
# --------------------------------------------------------------------------------------------

def cmd_invert(args: argparse.Namespace) -> int:
    """``reenact invert``: motion-textual inversion of one reference clip into a .safetensors."""
    _check_size(args)
    _check_range(args)
    given = {f.name: getattr(args, f.name) for f in fields(InversionConfig)
             if getattr(args, f.name, None) is not None}
    profile = profiles.profile_for(args.model)  # fails fast on an unknown model name
    config = profile.config(**given)
    _flag_errors(config, args)
    if not config.checkpoint_every:
        args.interrupted = "interrupted; nothing to resume from (--checkpoint-every 0)"
    device, dtype = _device_and_dtype(args)
    _set_threads(args)
    output = Path(args.output)
    _require(output.suffix == ".safetensors",
             f"{output}: the motion embedding is written as .safetensors; name it *.safetensors")
    _require(bool(args.preview) or (args.preview_dir is None and not config.preview_every),
             "--preview-dir / --preview-every need images to animate: pass --preview IMAGE ...")
    preview_dir = None
    if args.preview:
        preview_dir = Path(args.preview_dir or output.with_name(f"{output.stem}_previews"))
    frames_dir = output.with_name(f"{output.stem}_frames") if args.save_frames else None
    ckpt = inversion.checkpoint_path(output)
    if ckpt.exists() and not args.resume:
        print(f"reenact: note: starting over; {ckpt} will be overwritten "
              "(pass --resume to continue it)", file=sys.stderr)
    if args.resume and not ckpt.exists():
        print(f"reenact: note: no checkpoint {ckpt} to resume; starting from step 0", file=sys.stderr)

    new_dirs = [output.parent, *(d for d in (preview_dir,) if d is not None)]
    with _remove_new_folders_on_failure(*new_dirs):
        video.check_writable_file(output)
        if preview_dir is not None:
            video.check_writable_dir(preview_dir)
        result = api.invert_video(
            args.video, args.model, output, start=args.start or 0, end=args.end,
            stride=args.stride or 1, height=args.height, width=args.width, config=config,
            resume=args.resume, preview_images=args.preview, preview_dir=preview_dir,
            frames_dir=frames_dir, model_options={"device": device, "dtype": dtype},
            progress=not args.no_progress,
            on_note=print,  # which frames over what span, and warnings about them (stdout: a
            # report of the run, like the summary; stderr stays for errors)
        )

    for path in result.previews:
        print(path)
    if frames_dir is not None:
        print(frames_dir)
    emb = result.embedding
    ran = result.steps_done - result.resumed_from
    rate = ran / result.seconds if result.seconds > 0 else float("inf")
    print(f"profile {profile.name}: {profile.description}")
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

def _generation_config(args: argparse.Namespace) -> GenerationConfig:
    config = GenerationConfig(**{f.name: getattr(args, f.name) for f in fields(GenerationConfig)})
    _flag_errors(config, args)
    if args.vae_dtype is not None:
        try:
            models.resolve_dtype(args.vae_dtype, models.resolve_device(args.device))
        except ConfigError as e:
            raise ConfigError(f"--vae-dtype: {e}") from None
    return config


def _model_options(args: argparse.Namespace, cpu_offload: bool = False) -> dict:
    """:func:`reenact.api.load_model`'s keywords from the generation commands' flags."""
    device, dtype = _device_and_dtype(args)
    return {"device": device, "dtype": dtype, "vae_dtype": args.vae_dtype,
            "attention": args.attention, "compile": args.compile, "cpu_offload": cpu_offload,
            "progress": not args.no_progress}


def cmd_animate(args: argparse.Namespace) -> int:
    """``reenact animate``: one video per image, with the embedding's motion."""
    config = _generation_config(args)
    _require(args.batch_size is None or args.batch_size >= 1,
             f"--batch-size must be >= 1 (got {args.batch_size})")
    device, _ = _device_and_dtype(args)
    _set_threads(args)
    if args.cpu_offload:
        _require(device.type == "cuda",
                 f"--cpu-offload needs a CUDA device (the device is {device.type})")
        _require(importlib.util.find_spec("accelerate") is not None,
                 "--cpu-offload needs the accelerate package (pip install accelerate)")
    stems: dict[str, Path] = {}
    for p in map(Path, args.images):
        _require(p.stem not in stems,
                 f"{stems.get(p.stem)} and {p} would both be written as '{p.stem}'; rename one")
        stems[p.stem] = p

    emb = MotionEmbedding.load(args.embedding)
    out_dir = Path(args.output)
    with _remove_new_folders_on_failure(out_dir):
        video.check_writable_dir(out_dir)
        for path in api.animate(emb, args.images, args.model, config=config, output_dir=out_dir,
                                fmt=args.format, batch_size=args.batch_size,
                                model_options=_model_options(args, args.cpu_offload)):
            print(path)
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``reenact reconstruct``: the paper's diagnostic, the reference redone from its first frame."""
    config = _generation_config(args)
    _check_range(args)
    _set_threads(args)
    output = Path(args.output) if args.output else None
    if output is not None:
        video.output_format(output)  # an unknown suffix is refused before any work

    emb = MotionEmbedding.load(args.embedding)
    with _remove_new_folders_on_failure(*([output.parent] if output else [])):
        if output is not None:
            video.check_writable_output(output)
        rec = api.reconstruct(emb, args.video, args.model, config=config, start=args.start,
                              end=args.end, stride=args.stride, output=output,
                              model_options=_model_options(args))

    if not rec.same_reference:
        print(f"reenact: note: this clip (range, size) differs from the one {emb.name} was "
              "learned on; the PSNR measures transfer, not reconstruction", file=sys.stderr)
    print(f"PSNR of the reconstruction to {Path(args.video).name} (pixels, dB):")
    for f, score in enumerate(rec.psnr):
        print(f"frame {f}: {score:.2f}")
    print(f"mean: {rec.mean_psnr:.2f}")
    if output is not None:
        print(f"saved {output}")
    return 0


# --------------------------------------------------------------------------------------------
# info, demo, bench
# --------------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    """``reenact info``: an embedding's shape, its profile, then its metadata, sorted."""
    emb = MotionEmbedding.load(args.embedding)
    profile = profiles.PROFILES.get(str(emb.metadata.get("profile")))
    learned = f"; learned with the {profile.name} profile ({profile.description})" if profile else ""
    print(f"{emb.path}: (F+1) x N x d = {emb.num_frames + 1} x {emb.tokens} x {emb.dim} "
          f"(F={emb.num_frames} frames, N={emb.tokens} tokens, d={emb.dim}){learned}")
    for key in sorted(emb.metadata):
        value = emb.metadata[key]
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
# the parser: settings flags generated from their dataclasses
# --------------------------------------------------------------------------------------------

def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _add_setting_flags(p: argparse.ArgumentParser, cls: type, profiled: bool) -> None:
    """One flag per field of ``cls`` whose metadata asks for one, in the field's help group.

    ``profiled``: the default depends on the model's profile, so argparse's default is None
    (meaning "the profile's") and the help spells out the toy and svd values with their sources.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        meta = f.metadata
        if not meta or not meta.get("flag", True):
            continue
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        default = f.default if f.default is not MISSING else None
        kwargs: dict = {"help": _escape(meta["help"])}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "optim_size":
            kwargs.update(type=_size, metavar="HxW")
        elif default is not None:
            kwargs["type"] = type(default)
        else:
            kwargs["type"] = float if "float" in str(f.type) else int
        if profiled:
            others = [(prof.name, prof.overrides[f.name]) for prof in profiles.PROFILES.values()
                      if prof is not profiles.TOY and f.name in prof.overrides]
            text = kwargs["help"]
            for name, o in others:
                shown = "the clip's" if o.value is None else o.value
                text += _escape(f"; {name} profile: {shown} [{o.source}]")
            if others:
                text += "; toy profile"
            if meta.get("source"):
                text += _escape(f" [{meta['source']}]")
            if default is not None:
                text += f" (default: {_escape(str(default))})"
            kwargs["help"] = text
            kwargs["default"] = None
            action = group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)
            action.profile_defaults = {"toy": default, **{name: o.value for name, o in others}}
        else:
            kwargs["help"] = _escape(help_text(f))
            kwargs["default"] = default
            group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def _add_model_flags(p: argparse.ArgumentParser, seed_help: str, model_default: str | None) -> None:
    g = p.add_argument_group("model")
    if model_default:
        model_help = ("hub id, local diffusers SVD folder, or 'toy' (the bundled model); the default "
                      "is the paper's base model")
    else:
        model_help = ("hub id, local diffusers SVD folder, or 'toy' (default: the model the "
                      "embedding was learned on)")
    g.add_argument("--model", default=model_default, help=model_help)
    g.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N | mps; auto picks cuda, then mps, then cpu")
    g.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="weights' precision (default: fp16 on cuda, as SVD is released; "
                        "fp32 elsewhere)")
    g.add_argument("--seed", type=int, default=0, help=seed_help)
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the free cores: the cores this process may use "
                        "less the 1-minute load average, at least 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_range_flags(p: argparse.ArgumentParser, recorded: bool) -> None:
    g = p.add_argument_group("reference clip (resampled to the model's F frames)")
    where = "the range the embedding records, else " if recorded else ""
    g.add_argument("--start", type=int, default=None,
                   help=f"first frame index used (default: {where}0)")
    g.add_argument("--end", type=int, default=None,
                   help=f"frame index after the last one used (default: {where}the clip's end)")
    g.add_argument("--stride", type=int, default=None,
                   help=f"keep every k-th frame of the range (default: {where}1)")


def _add_speed_flags(g) -> None:
    """``--attention`` and ``--compile`` of the generation commands (invert: its config's)."""
    d = InversionConfig()
    for name in ("attention", "compile"):
        f = next(f for f in fields(InversionConfig) if f.name == name)
        kwargs = {"help": _escape(f.metadata["help"]), "default": getattr(d, name)}
        if name == "compile":
            kwargs["action"] = "store_true"
        else:
            kwargs["choices"] = routing.ATTENTION_KINDS
        g.add_argument(f"--{name}", **kwargs)


def _add_generation(p: argparse.ArgumentParser) -> None:
    _add_setting_flags(p, GenerationConfig, profiled=False)
    g = p.add_argument_group("speed and memory")
    g.add_argument("--vae-dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="precision of the VAE (default: --dtype's). fp16 as the SVD pipeline "
                        "does it: the image is encoded in fp32 (the VAE's force_upcast), the "
                        "frames decoded in fp16 (half the memory of fp32); fp32 is the safe "
                        "choice if fp16 decoding shows artefacts. No fp16 on the CPU")
    _add_speed_flags(g)


def _profile_note(argv: Sequence[str] | None) -> str:
    """Which profile ``--model`` (as given on this command line, else the default) gets.

    Only worked out for ``--help`` (it may read the model's config).
    """
    argv = list(argv or [])
    if not any(a in ("-h", "--help") for a in argv):
        return ""
    model = models.DEFAULT_MODEL
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            model = argv[i + 1]
        elif a.startswith("--model="):
            model = a.split("=", 1)[1]
    try:
        with quiet_libraries():
            name = profiles.profile_for(model).name
    except ReenactError:
        return f"--model {model}: not found; its profile is decided once it is."
    return f"--model {model} gets the '{name}' profile."


def _add_invert(sub, argv: Sequence[str] | None) -> None:
    p = sub.add_parser(
        "invert", formatter_class=_HelpFormatter,
        help="learn a motion embedding from a reference video",
        description="Motion-textual inversion: optimise a (F+1) x N x d motion embedding so the "
                    "frozen SVD reconstructs VIDEO. Ctrl-C stops; rerun with --resume to "
                    "continue from the last checkpoint. Defaults come from the model's profile: "
                    + "; ".join(f"{p.name} ({p.description})" for p in profiles.PROFILES.values())
                    + "; each flag lists their values, every value can be overridden. "
                    + _escape(_profile_note(argv)),
    )
    p.add_argument("video", help="reference: a video file, an animated gif or a folder of frames")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors",
                   help="where the embedding is written (checkpoints: FILE.safetensors.ckpt)")
    _add_model_flags(p, "seed of initialisation, augmentations and noise sampling",
                     models.DEFAULT_MODEL)
    _add_range_flags(p, recorded=False)
    g = p.add_argument_group("reference clip (resampled to the model's F frames)")
    g.add_argument("--height", type=int, default=None,
                   help="size the clip is resized to and the embedding made for (default: the "
                        "model's native height; SVD: 576)")
    g.add_argument("--width", type=int, default=None,
                   help="(default: the model's native width; SVD: 1024)")
    g.add_argument("--save-frames", action="store_true",
                   help="also write the frames the model sees (after selection, crop and resize) "
                        "as pngs in FILE_frames/ beside the embedding")
    _add_setting_flags(p, InversionConfig, profiled=True)
    g = p.add_argument_group("checkpoints and previews")
    g.add_argument("--resume", action="store_true",
                   help="continue from FILE.safetensors.ckpt (same clip, model and settings; "
                        "--steps and --lr may change)")
    g.add_argument("--preview", nargs="+", default=[], metavar="IMAGE",
                   help="images to animate with the embedding at the end (and every "
                        "--preview-every steps)")
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
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per pipeline call (default: {api.CUDA_BATCH} on CUDA -- a UNet "
                        f"batch of 2 under CFG fits a 24 GB card at 14x576x1024 -- and "
                        f"{api.OTHER_BATCH} elsewhere; lower it if out of memory)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep idle components in CPU memory (cuda only; needs accelerate)")
    _add_model_flags(p, "seed of the generation noise (each image gets the same seed)", None)
    _add_generation(p)
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
    _add_model_flags(p, "seed of the generation noise", None)
    _add_range_flags(p, recorded=True)
    _add_generation(p)
    p.set_defaults(run=cmd_reconstruct, interrupted="interrupted")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``reenact`` argument parser (subcommands set ``run`` and ``interrupted``).

    ``argv``: the command line, only to say in ``invert --help`` which profile its ``--model``
    gets.
    """
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
    _add_invert(sub, argv)
    _add_animate(sub)
    _add_reconstruct(sub)

    p = sub.add_parser("info", formatter_class=_HelpFormatter,
                       help="print a motion embedding's shape, profile and metadata")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
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
