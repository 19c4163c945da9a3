"""``reenact batch``: learn many motions and apply each to many images, on one machine or a Ray cluster.

A *plan* (YAML or JSON, schema in :func:`load_plan` and the README's "Batch" section) names the
motions (reference clips to invert, or embeddings already learned), the target images, which
motions go to which targets, and the settings shared by all of them. Running it has two stages:

1. **invert** every motion that has no valid embedding yet -- one job per motion;
2. **animate** the motion x target grid -- jobs of up to ``batch_size`` targets of one motion,
   one batched pipeline call each.

Both run on Ray (Ray's batch-inference pattern): a pool of :class:`Worker` actors, each
holding one loaded model (one GPU each, or CPU threads on a machine without GPUs), takes jobs
from the driver; a worker loads the model once and serves every job it is given, inversions and
generations alike. The driver only plans, submits and records: it hashes inputs, skips what is
already done, hands jobs to idle workers (inversions first, a motion's generations as soon as
its embedding exists) and writes the report. ``ray.init()`` starts a local instance when no
address is given; ``--address auto`` or ``ray://HOST:10001`` joins a cluster (every node must see
the plan's inputs and OUT at the same paths).

Nothing lost, nothing redone:

* every file is written atomically (temporary name, then rename); a killed run leaves at most
  hidden temporaries, which the next run removes;
* an output is *valid* when it exists, decodes, and its record of what made it matches the plan:
  an embedding carries a ``batch_key`` in its metadata (model, the reference file's sha256, the
  frame range and size, the inversion settings); a result has a sidecar ``<target>.json`` (the
  embedding's and the image's sha256, the model, the generation settings), written last. A rerun
  skips valid outputs and redoes missing, stale or corrupt ones;
* an inversion runs with checkpoints (``OUT/motions/.work/<name>.safetensors.ckpt``) and resumes
  from one left by a killed run;
* a bad input (missing or corrupt video, corrupt image or embedding) fails only its own jobs,
  recorded with the one-line error; a worker process that dies is restarted by Ray and its job
  retried (``max_restarts`` / ``max_task_retries``).

Outputs: ``OUT/motions/<motion>.safetensors``, ``OUT/results/<motion>/<target>.gif`` (and
``.mp4`` with ``format: mp4``) with its ``.json`` sidecar, ``OUT/report.jsonl`` (one line per job)
and ``OUT/index.html`` (a contact sheet: rows motions, columns targets).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import html
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import quote

import yaml

from reenact import video
from reenact.errors import ConfigError, InputError, ReenactError
from reenact.files import atomic_write
from reenact.inversion import InversionConfig

__all__ = [
    "PlanError",
    "Plan",
    "Motion",
    "Target",
    "BatchSummary",
    "Worker",
    "load_plan",
    "run_batch",
]

#: Ray restarts a worker actor whose process died this many times, and retries the job it was
#: running this many times: one crash (OOM kill, preempted node) costs a job, not the batch.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
#: Object store of the local Ray instance. Jobs exchange only small records (the workers read
#: and write files themselves), so Ray's default of 30% of RAM would only reserve memory.
LOCAL_OBJECT_STORE_BYTES = 100 * 1024**2
#: The report and contact sheet are rewritten at most this often while jobs finish.
REPORT_EVERY_S = 2.0

_PLAN_SUFFIXES = (".yaml", ".yml", ".json")
_RESULT_FORMATS = ("mp4", "gif")  # a gif is always written: it is what the contact sheet shows
# inversion settings that change speed or bookkeeping, not the embedding learned
_NOT_IN_KEY = frozenset({"checkpoint_every", "preview_every", "preview_steps", "encode_chunk_size",
                         "gradient_checkpointing", "attention", "compile"})


# --------------------------------------------------------------------------------------------
# generation settings: those of `reenact animate` (GenerationConfig)
# --------------------------------------------------------------------------------------------

def _animate_defaults() -> dict[str, object]:
    """``animate:`` settings and their defaults: those of ``reenact animate``
    (:class:`reenact.pipeline.GenerationConfig`; imported late: a plan check needs no torch)."""
    from dataclasses import fields

    from reenact.pipeline import GenerationConfig

    gen = {f.name: f.default for f in fields(GenerationConfig) if f.name != "seed"}
    # None (fps, bucket, noise_aug, size): the embedding's, else SVD's (GenerationConfig.resolve)
    # batch_size None: the device's (api.default_batch_size: 1 on CUDA, 4 elsewhere); seed None:
    # defaults.seed
    return {**gen, "batch_size": None, "format": "mp4", "seed": None}


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------

class PlanError(ConfigError):
    """A plan that cannot run; ``problems`` holds one line per problem, each naming its entry."""

    def __init__(self, plan: Path | str, problems: Sequence[str]):
        self.plan = str(plan)
        self.problems = list(problems)
        super().__init__("; ".join(f"{self.plan}: {p}" for p in self.problems))


@dataclass
class Target:
    """A target image: ``name`` (its file stem, unique in the plan) and ``path``."""

    name: str
    path: Path


@dataclass
class Motion:
    """One motion: a reference ``video`` to invert, or an ``embedding`` already learned."""

    name: str
    video: Path | None = None
    embedding: Path | None = None
    start: int = 0
    end: int | None = None
    stride: int = 1
    height: int | None = None  # inversion size (default: the model's native size)
    width: int | None = None
    invert: InversionConfig = field(default_factory=InversionConfig)
    animate: dict[str, object] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # names of the targets it is applied to


@dataclass
class Plan:
    """A validated plan: every path resolved, every setting filled in and in range."""

    path: Path | None
    model: str
    dtype: str | None
    motions: list[Motion]
    targets: list[Target]

    def pairs(self) -> list[tuple[Motion, Target]]:
        """The grid of jobs, motion-major in plan order."""
        by_name = {t.name: t for t in self.targets}
        return [(m, by_name[t]) for m in self.motions for t in m.targets]


class _Problems:
    """Collects plan problems (one line each, prefixed by the entry) instead of stopping at one."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_type(value: object, default: object, where: str, problems: _Problems,
                nullable: bool = False) -> bool:
    """Is ``value`` of the kind ``default`` is? (bool, int, number, string; None if ``nullable``)."""
    if value is None:
        ok = nullable or default is None
        kind = "a value"
    elif isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif _is_int(default):
        ok, kind = _is_int(value), "an integer"
    elif isinstance(default, float):
        ok, kind = _is_number(value), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        ok, kind = True, ""
    if not ok:
        problems.add(where, f"must be {kind} (got {value!r})")
    return ok


def _read_plan_file(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"{path}: no such plan file; give a .yaml or .json plan")
    if path.suffix.lower() not in _PLAN_SUFFIXES:
        raise InputError(f"{path}: a plan is a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the plan ({e})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise PlanError(path, [f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the file"
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PlanError(path, [f"{where}: not valid YAML ({reason})"]) from None


def _inversion_config(raw: object, base: InversionConfig, where: str,
                      problems: _Problems) -> InversionConfig:
    """``base`` with the fields of mapping ``raw`` replaced, type- and range-checked."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping of inversion settings (e.g. steps: 200)")
        return base
    names = {f.name: getattr(base, f.name) for f in fields(InversionConfig)}
    changes = {}
    for key, value in raw.items():
        if key not in names:
            problems.add(f"{where}.{key}", f"unknown inversion setting; known: {', '.join(names)}")
        elif key == "optim_size":
            if value is not None and not (isinstance(value, list) and len(value) == 2
                                          and all(_is_int(v) for v in value)):
                problems.add(f"{where}.{key}", f"must be [height, width] (got {value!r})")
            else:
                changes[key] = tuple(value) if value is not None else None
        elif _check_type(value, names[key], f"{where}.{key}", problems):
            changes[key] = float(value) if isinstance(names[key], float) else value
    config = replace(base, **changes)
    try:
        config.validate()
    except ConfigError as e:  # "steps must be >= 1 (got 0)" -> "motions[1].invert.steps: ..."
        name, _, rest = str(e).partition(" ")
        problems.add(f"{where}.{name}", rest)
    return config


def _animate_settings(raw: object, base: dict[str, object], where: str,
                      problems: _Problems) -> dict[str, object]:
    if raw is None:
        return dict(base)
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping of generation settings (e.g. steps: 25)")
        return dict(base)
    defaults = _animate_defaults()
    out = dict(base)
    for key, value in raw.items():
        if key not in defaults:
            problems.add(f"{where}.{key}", f"unknown generation setting; known: {', '.join(defaults)}")
            continue
        default = defaults[key]
        if key == "format":
            if value not in _RESULT_FORMATS:
                problems.add(f"{where}.{key}", f"must be one of {', '.join(_RESULT_FORMATS)} (got {value!r})")
                continue
        elif key in ("fps", "motion_bucket_id", "height", "width", "seed", "batch_size"):
            if value is not None and not _is_int(value):
                problems.add(f"{where}.{key}", f"must be an integer (got {value!r})")
                continue
        elif key == "noise_aug_strength":
            if value is not None and not _is_number(value):
                problems.add(f"{where}.{key}", f"must be a number (got {value!r})")
                continue
        elif not _check_type(value, default, f"{where}.{key}", problems):
            continue
        out[key] = float(value) if isinstance(default, float) else value
    minimum = {"steps": 1, "min_guidance": 0, "max_guidance": 0, "fps": 1, "motion_bucket_id": 0,
               "noise_aug_strength": 0, "decode_chunk_size": 1, "batch_size": 1, "seed": 0}
    for key, low in minimum.items():
        if key in raw and out[key] is not None and out[key] < low:
            problems.add(f"{where}.{key}", f"must be >= {low} (got {out[key]})")
    for key in ("height", "width"):
        if key in raw and out[key] is not None and (out[key] < 8 or out[key] % 8):
            problems.add(f"{where}.{key}", f"must be a positive multiple of 8 (got {out[key]})")
    return out


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _expand_targets(raw: object, root: Path, problems: _Problems) -> list[Target]:
    """``targets:``: files (kept even if missing: their jobs fail), globs and folders."""
    if not isinstance(raw, list) or not raw:
        problems.add("targets", "must be a non-empty list of image files, globs or folders")
        return []
    found: list[Target] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw):
        where = f"targets[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            problems.add(where, f"must be a path, a glob or a folder (got {entry!r})")
            continue
        spec = Path(entry).expanduser()
        spec = spec if spec.is_absolute() else root / spec
        if glob.has_magic(entry):
            paths = sorted(Path(p) for p in glob.glob(str(spec), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in video.IMAGE_SUFFIXES)
            if not paths:
                problems.add(where, f"'{entry}' matches no image ({'/'.join(sorted(video.IMAGE_SUFFIXES))})")
        elif spec.is_dir():
            paths = sorted(p for p in spec.iterdir()
                           if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in video.IMAGE_SUFFIXES)
            if not paths:
                problems.add(where, f"folder '{entry}' has no images")
        else:
            paths = [spec]
        for p in paths:
            if not _valid_name(p.stem):
                problems.add(where, f"{p}: a file name starting with '.' cannot name a result; rename it")
            elif p.stem in seen:
                if seen[p.stem] != str(p):
                    problems.add(where, f"{p} and {seen[p.stem]} would both be named '{p.stem}'; "
                                        "rename one")
            else:
                seen[p.stem] = str(p)
                found.append(Target(p.stem, p))
    return found


def load_plan(path: str | os.PathLike, check_model: bool = True) -> Plan:
    """Read and validate a plan; raise :class:`PlanError` listing *every* problem found.

    Schema (paths are relative to the plan's folder)::

        defaults:                # optional; shared by every entry
          model: toy             # hub id, local SVD folder or 'toy' (one model per plan)
          dtype: fp32            # optional (fp16 on cuda, fp32 elsewhere)
          seed: 0                # inversion and generation seed
          height: 576            # optional inversion size (default: the model's)
          width: 1024
          invert: {steps: 300}   # any InversionConfig field (the `reenact invert` flags)
          animate: {steps: 25}   # the `reenact animate` settings (see _animate_defaults)
        motions:
          - video: clips/walk.mp4       # a reference to invert ...
            name: walk                  # optional (default: the file's stem)
            start: 0                    # optional frame range, as `reenact invert`
            end: 40
            stride: 1
            invert: {steps: 500}        # optional, overrides defaults.invert
            animate: {motion_bucket_id: 60}
            targets: [dog, "cat*"]      # optional target names/patterns (default: all)
          - embedding: horse.safetensors  # ... or one already learned
        targets:
          - images/dog.png              # a file, a glob or a folder of images
          - images/*.jpg
          - more/

    Structural problems (unknown keys, wrong types, out-of-range settings, duplicate names,
    patterns that match nothing, an unknown model) are plan errors. A missing or corrupt
    video or image named by the plan is not: it fails its own jobs when the batch runs.
    ``check_model``: also check that the model can be found (reads its config files only).
    """
    path = Path(path).expanduser()
    raw = _read_plan_file(path)
    root = path.resolve().parent
    problems = _Problems()
    if not isinstance(raw, dict):
        raise PlanError(path, ["the plan must be a mapping with 'motions' and 'targets'"])
    for key in raw:
        if key not in ("defaults", "motions", "targets"):
            problems.add(str(key), "unknown section; a plan has defaults, motions and targets")

    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.add("defaults", "must be a mapping (model, seed, invert, animate, ...)")
        defaults = {}
    allowed = ("model", "dtype", "seed", "height", "width", "invert", "animate")
    for key in defaults:
        if key not in allowed:
            problems.add(f"defaults.{key}", f"unknown setting; known: {', '.join(allowed)}")
    from reenact.models import DEFAULT_MODEL

    model = defaults.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        problems.add("defaults.model", f"must be a hub id, a folder or 'toy' (got {model!r})")
        model = DEFAULT_MODEL
    elif check_model:
        try:
            from reenact.models import native_geometry

            native_geometry(model)
        except ReenactError as e:
            problems.add("defaults.model", str(e))
    dtype = defaults.get("dtype")
    if dtype is not None and dtype not in ("fp32", "fp16", "bf16"):
        problems.add("defaults.dtype", f"must be fp32, fp16 or bf16 (got {dtype!r})")
    seed = defaults.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        problems.add("defaults.seed", f"must be an integer >= 0 (got {seed!r})")
        seed = 0
    try:  # the model's profile, as `reenact invert` (reenact.profiles)
        from reenact.profiles import inversion_config

        profile_config = inversion_config(model, seed=seed)
    except ReenactError:  # reported above (defaults.model)
        profile_config = InversionConfig(seed=seed)
    base_invert = _inversion_config(defaults.get("invert"), profile_config, "defaults.invert",
                                    problems)
    base_animate = _animate_settings(defaults.get("animate"), {**_animate_defaults(), "seed": seed},
                                     "defaults.animate", problems)
    base_size = {}
    for key in ("height", "width"):
        value = defaults.get(key)
        if value is not None and (not _is_int(value) or value < 8 or value % 8):
            problems.add(f"defaults.{key}", f"must be a positive multiple of 8 (got {value!r})")
            value = None
        base_size[key] = value

    targets = _expand_targets(raw.get("targets"), root, problems)
    target_names = [t.name for t in targets]

    motions: list[Motion] = []
    raw_motions = raw.get("motions")
    if not isinstance(raw_motions, list) or not raw_motions:
        problems.add("motions", "must be a non-empty list of motions (video: or embedding:)")
        raw_motions = []
    names: dict[str, int] = {}
    motion_keys = ("name", "video", "embedding", "start", "end", "stride", "height", "width",
                   "invert", "animate", "targets")
    for i, entry in enumerate(raw_motions):
        where = f"motions[{i}]"
        if isinstance(entry, str):  # shorthand: a path
            entry = {"embedding" if entry.endswith(".safetensors") else "video": entry}
        if not isinstance(entry, dict):
            problems.add(where, "must be a mapping with video: or embedding:")
            continue
        for key in entry:
            if key not in motion_keys:
                problems.add(f"{where}.{key}", f"unknown key; known: {', '.join(motion_keys)}")
        sources = [k for k in ("video", "embedding") if entry.get(k) is not None]
        if len(sources) != 1:
            problems.add(where, "needs exactly one of video: (a reference to invert) or "
                                "embedding: (a .safetensors already learned)")
            continue
        kind = sources[0]
        if not isinstance(entry[kind], str):
            problems.add(f"{where}.{kind}", f"must be a path (got {entry[kind]!r})")
            continue
        source = Path(entry[kind]).expanduser()
        source = source if source.is_absolute() else root / source
        if kind == "embedding" and source.suffix != ".safetensors":
            problems.add(f"{where}.embedding", f"{source.name}: an embedding is a .safetensors file")
        name = entry.get("name", source.stem if source.suffix else source.name)
        if not isinstance(name, str) or not _valid_name(name):
            problems.add(f"{where}.name", f"must be a file-name-safe string (got {name!r})")
            continue
        if name in names:
            problems.add(f"{where}.name", f"'{name}' is also the name of motions[{names[name]}]; "
                                          "give one a name:")
            continue
        names[name] = i
        motion = Motion(name=name, **{kind: source})
        if kind == "video":
            for key, low in (("start", 0), ("stride", 1)):
                value = entry.get(key, getattr(motion, key))
                if not _is_int(value) or value < low:
                    problems.add(f"{where}.{key}", f"must be an integer >= {low} (got {value!r})")
                else:
                    setattr(motion, key, value)
            end = entry.get("end")
            if end is not None and (not _is_int(end) or end <= motion.start):
                problems.add(f"{where}.end", f"must be an integer > start={motion.start} (got {end!r})")
            else:
                motion.end = end
            for key in ("height", "width"):
                value = entry.get(key, base_size[key])
                if value is not None and (not _is_int(value) or value < 8 or value % 8):
                    problems.add(f"{where}.{key}", f"must be a positive multiple of 8 (got {value!r})")
                else:
                    setattr(motion, key, value)
            motion.invert = _inversion_config(entry.get("invert"), base_invert, f"{where}.invert", problems)
        else:
            for key in ("start", "end", "stride", "height", "width", "invert"):
                if key in entry:
                    problems.add(f"{where}.{key}", "only a video: motion is inverted; an embedding: "
                                                   "takes name, animate and targets")
        motion.animate = _animate_settings(entry.get("animate"), base_animate, f"{where}.animate", problems)
        patterns = entry.get("targets")
        if patterns is None:
            motion.targets = list(target_names)
        elif not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            problems.add(f"{where}.targets", "must be a list of target names or patterns (dog, 'cat*')")
        else:
            picked = []
            for pattern in patterns:
                hits = [n for n in target_names if fnmatch.fnmatchcase(n, pattern)]
                if not hits and target_names:
                    problems.add(f"{where}.targets", f"'{pattern}' matches no target name "
                                                     f"(targets: {', '.join(target_names)})")
                picked += [h for h in hits if h not in picked]
            motion.targets = [n for n in target_names if n in picked]  # plan order
        motions.append(motion)

    if problems.lines:
        raise PlanError(path, problems.lines)
    return Plan(path=path, model=model, dtype=dtype, motions=motions, targets=targets)


# --------------------------------------------------------------------------------------------
# validity of outputs: what made a file, recorded with it
# --------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str | None:
    """sha256 of a file, or of a folder's visible files (names and bytes, sorted); None if absent."""
    h = hashlib.sha256()
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if path.is_dir() else [path]
        for f in files:
            if path.is_dir():
                h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _jsonable(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples become lists), so keys compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _inversion_key(plan: Plan, motion: Motion) -> dict:
    """What decides the embedding a motion's inversion learns."""
    config = {k: v for k, v in motion.invert.to_dict().items() if k not in _NOT_IN_KEY}
    return _jsonable({
        "model": plan.model,
        "reference_sha256": _sha256(motion.video),
        "range": [motion.start, motion.end, motion.stride],
        "size": [motion.height, motion.width],
        "invert": config,
    })


def _embedding_valid(path: Path, key: dict) -> bool:
    """``path`` loads as an embedding whose ``batch_key`` metadata is ``key``."""
    from reenact.embedding import MotionEmbedding

    try:
        emb = MotionEmbedding.load(path)
    except ReenactError:
        return False
    return emb.metadata.get("batch_key") == key and bool(emb.tensor.isfinite().all())


def _result_key(plan: Plan, motion: Motion, embedding_sha256: str | None,
                image_sha256: str | None) -> dict:
    """What decides a result video: the embedding, the image, the model, the settings."""
    return _jsonable({
        "model": plan.model,
        "embedding_sha256": embedding_sha256,
        "image_sha256": image_sha256,
        "animate": {k: v for k, v in motion.animate.items() if k != "batch_size"},
    })


def _decodes(path: Path) -> bool:
    """Does ``path`` (gif or mp4) decode to at least one frame, to the end?"""
    try:
        if path.suffix == ".gif":
            from PIL import Image

            with Image.open(path) as im:
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    im.load()
            return True
        import av

        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0)) > 0
    except Exception:  # any decoder complaint means: not a usable result
        return False


def _result_files(motion: Motion, target: Target, out: Path) -> list[Path]:
    folder = out / "results" / motion.name
    files = [folder / f"{target.name}.gif"]
    if motion.animate["format"] == "mp4":
        files.append(folder / f"{target.name}.mp4")
    return files


def _sidecar(motion: Motion, target: Target, out: Path) -> Path:
    return out / "results" / motion.name / f"{target.name}.json"


def _result_valid(motion: Motion, target: Target, out: Path, key: dict) -> bool:
    try:
        record = json.loads(_sidecar(motion, target, out).read_text())
    except (OSError, ValueError):
        return False
    return record.get("key") == key and all(_decodes(f) for f in _result_files(motion, target, out))


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# jobs and the worker
# --------------------------------------------------------------------------------------------

@dataclass
class InvertJob:
    """Invert ``motion``'s reference into ``output`` (checkpoints in ``work``'s ``.ckpt``)."""

    motion: Motion
    output: Path
    work: Path
    key: dict


@dataclass
class AnimateJob:
    """Animate ``targets`` with ``motion``'s embedding; one result (and sidecar) per target."""

    motion: Motion
    embedding: Path
    targets: list[Target]
    keys: list[dict]
    out: Path


def _record(job: str, motion: Motion, target: Target | None, inputs: dict, output: Path | None,
            out: Path, status: str, seconds: float = 0.0, device: str | None = None,
            error: str | None = None, **extra) -> dict:
    """One line of report.jsonl."""
    return {
        "job": job, "motion": motion.name, "target": target.name if target else None,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "output": str(output.relative_to(out)) if output is not None else None,
        "status": status, "seconds": round(seconds, 3), "device": device, "error": error, **extra,
    }


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, ReenactError) else f"{type(e).__name__}: {text}"


class Worker:
    """Holds one loaded model and runs jobs with it (a Ray actor; usable directly, too).

    ``device``: ``cuda`` (Ray gives the actor its GPU through ``CUDA_VISIBLE_DEVICES``) or
    ``cpu``; ``threads``: torch's intra-op threads (on the CPU: the one CPU Ray reserved).
    """

    def __init__(self, model: str, device: str, dtype: str | None, threads: int | None = None):
        import torch

        from reenact import api, models

        if threads:
            torch.set_num_threads(threads)
        self.model = model
        self.pipe = api.load_model(model, device, dtype, attention=InversionConfig().attention)
        self.device = self.pipe.unet.device
        self.num_frames, self.height, self.width = models.native_geometry(model)
        where = socket.gethostname()
        if self.device.type == "cuda":
            self.label = f"{torch.cuda.get_device_name(self.device)} @ {where}"
        else:
            self.label = f"cpu x{torch.get_num_threads()} @ {where}"

    def describe(self) -> str:
        return self.label

    def invert(self, job: InvertJob) -> list[dict]:
        """Learn the motion's embedding; resume from a checkpoint a killed run left."""
        from reenact import api, inversion

        m, out = job.motion, job.output.parent.parent
        t0 = time.perf_counter()
        inputs = {"video": m.video}
        try:
            def run(resume: bool):  # as `reenact invert` (reference reading, metadata)
                return api.invert_video(m.video, self.pipe, job.work, start=m.start, end=m.end,
                                        stride=m.stride, height=m.height, width=m.width,
                                        config=m.invert, resume=resume, progress=False)

            ckpt = inversion.checkpoint_path(job.work)
            resume = ckpt.exists()
            try:
                result = run(resume)
            except ReenactError as e:
                if not (resume and str(ckpt) in str(e)):
                    raise
                ckpt.unlink(missing_ok=True)  # a checkpoint of other settings: start over
                result = run(False)
            emb = result.embedding
            emb.metadata["batch_key"] = job.key
            emb.save(job.output)
            job.work.unlink(missing_ok=True)
        except Exception as e:  # one bad input fails its own job; the batch goes on
            if not isinstance(e, ReenactError):
                traceback.print_exc()
            return [_record("invert", m, None, inputs, job.output, out, "failed",
                            time.perf_counter() - t0, self.label, _one_line(e))]
        return [_record("invert", m, None, inputs, job.output, out, "done",
                        time.perf_counter() - t0, self.label, resumed_from=result.resumed_from,
                        steps=result.steps_done, final_loss=emb.metadata.get("final_loss"))]

    def animate(self, job: AnimateJob) -> list[dict]:
        """One batched pipeline call for the job's targets; a bad image fails only its cell."""
        import torch  # noqa: F401  (the generators)

        from reenact import api, embedding
        from reenact.embedding import MotionEmbedding
        from reenact.pipeline import GenerationConfig

        m, out = job.motion, job.out
        t0 = time.perf_counter()
        records: list[dict | None] = [None] * len(job.targets)

        def fail(i: int, error: str) -> None:
            t = job.targets[i]
            records[i] = _record("animate", m, t, {"embedding": job.embedding, "image": t.path},
                                 _result_files(m, t, out)[0], out, "failed",
                                 time.perf_counter() - t0, self.label, error)

        settings = GenerationConfig(**{k: v for k, v in m.animate.items()
                                       if k not in ("batch_size", "format")})
        try:
            emb = MotionEmbedding.load(job.embedding)
            embedding.check_compatible(emb, self.pipe.unet, self.model, self.num_frames)
            gen = api.generation_config(emb, self.pipe, settings)
        except Exception as e:
            for i in range(len(job.targets)):
                fail(i, _one_line(e))
            return records  # type: ignore[return-value]
        images, ok = [], []
        for i, t in enumerate(job.targets):
            try:
                images.append(video.load_image(t.path, gen.height, gen.width))
                ok.append(i)
            except ReenactError as e:
                fail(i, _one_line(e))
        if ok:
            try:
                videos = self.pipe.animate(images, emb, gen)
                seconds = (time.perf_counter() - t0) / len(ok)
                for i, frames in zip(ok, videos):
                    t = job.targets[i]
                    files = _result_files(m, t, out)
                    for f in files:
                        video.write_video(frames, f, fps=gen.fps)
                    _write_text(_sidecar(m, t, out), json.dumps(
                        {"key": job.keys[i], "files": [f.name for f in files]}, indent=1))
                    records[i] = _record("animate", m, t, {"embedding": job.embedding, "image": t.path},
                                         files[0], out, "done", seconds, self.label)
            except Exception as e:
                if not isinstance(e, ReenactError):
                    traceback.print_exc()
                for i in ok:
                    if records[i] is None:
                        fail(i, _one_line(e))
        return records  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------

def available_cpus() -> int:
    """CPUs this process may use (its affinity mask: what a container or taskset allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to Ray for the duration: join ``address``, or start a local instance.

    If Ray is already initialised in this process (a notebook, a test module) it is used as is
    and left running. The local instance gets ``num_cpus`` (default: :func:`available_cpus`),
    a small object store and no dashboard; its workers import this ``reenact`` (the package's
    folder is put first on their ``PYTHONPATH``).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"cannot join the Ray cluster at '{address}': {_one_line(e)}") from None
    else:
        src = str(Path(__file__).resolve().parent.parent)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {"PYTHONPATH": os.pathsep.join([src, *[p for p in paths if p != src]])}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the local raylet and its workers inherit the driver's environment
        try:
            ray.init(num_cpus=num_cpus or available_cpus(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class _Pool:
    """How many workers, and what each reserves."""

    size: int
    device: str
    options: dict
    threads: int | None


def _pool(jobs: int, gpus_per_job: float, max_parallel: int | None) -> _Pool:
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), max(1.0, resources.get("CPU", 1.0))
    if gpus_per_job > 0 and gpus >= gpus_per_job:
        slots = int(gpus // gpus_per_job)
        size = min(jobs, max_parallel or slots)
        return _Pool(size, "cuda", {"num_gpus": gpus_per_job, "num_cpus": 1}, None)
    # CPU only: one worker per CPU, one torch thread each -- more workers rather than more
    # threads. Measured (docs/PERFORMANCE.md, "Batch"): on a shared 2-core machine a toy
    # inversion step takes 0.1 s with one thread and 1.2 s with two threads competing for cores.
    size = max(1, min(jobs, max_parallel or int(cpus), int(cpus)))
    return _Pool(size, "cpu", {"num_cpus": 1}, 1)


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------

@dataclass
class BatchSummary:
    """What a run did: counts per job kind and status, seconds, and where the report is."""

    records: list[dict]
    seconds: float
    report: Path
    sheet: Path
    workers: int = 0
    device: str | None = None

    def count(self, status: str, job: str | None = None) -> int:
        return sum(1 for r in self.records
                   if r["status"] == status and (job is None or r["job"] == job))

    @property
    def failed(self) -> int:
        return self.count("failed")

    def line(self) -> str:
        inv = {s: self.count(s, "invert") for s in ("done", "skipped", "failed")}
        ani = {s: self.count(s, "animate") for s in ("done", "skipped", "failed")}
        where = f" on {self.workers} {self.device} worker{'s' * (self.workers != 1)}" if self.workers else ""
        return (f"batch: {len(self.records)} jobs in {self.seconds:.1f} s{where} -- inversions "
                f"{inv['done']} done, {inv['skipped']} skipped, {inv['failed']} failed; results "
                f"{ani['done']} done, {ani['skipped']} skipped, {ani['failed']} failed; "
                f"report {self.report}, contact sheet {self.sheet}")


def _clean_temporaries(out: Path) -> None:
    """Remove the hidden temporaries a killed run left (checkpoints stay: they are resumed)."""
    for folder in [out, out / "motions", out / "motions" / ".work",
                   *(out / "results").glob("*")]:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if ".tmp-" in p.name or ".old-" in p.name:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One batch at a time per OUT (two would race on the same files); released on any exit."""
    import fcntl

    fh = open(out / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{out} is being written by another reenact batch; wait for it, "
                             "or use another -o") from None
        yield
    finally:
        fh.close()


class _Recorder:
    """Keeps the records of this run and rewrites the report and contact sheet as they come."""

    def __init__(self, plan: Plan, out: Path, progress: bool, total: int):
        from tqdm.auto import tqdm

        self.plan, self.out = plan, out
        self.records: dict[tuple, dict] = {}
        self.bar = tqdm(total=total, desc="batch", unit="job", disable=not progress)
        self.last_write = 0.0

    def add(self, records: Sequence[dict], quiet: bool = False) -> None:
        for r in records:
            self.records[(r["job"], r["motion"], r["target"])] = r
            if r["status"] == "failed" and not quiet:
                self.bar.write(f"failed: {r['job']} {r['motion']}"
                               f"{' x ' + r['target'] if r['target'] else ''}: {r['error']}",
                               file=sys.stderr)
        self.bar.update(len(records))
        if time.monotonic() - self.last_write > REPORT_EVERY_S:
            self.write()

    def ordered(self) -> list[dict]:
        order = [("invert", m.name, None) for m in self.plan.motions]
        order += [("animate", m.name, t.name) for m, t in self.plan.pairs()]
        return [self.records[k] for k in order if k in self.records]

    def write(self) -> None:
        self.last_write = time.monotonic()
        lines = [json.dumps(r, sort_keys=True) for r in self.ordered()]
        _write_text(self.out / "report.jsonl", "".join(line + "\n" for line in lines))
        _write_text(self.out / "index.html", contact_sheet(self.plan, self.out, self.records))

    def close(self) -> None:
        self.bar.close()
        self.write()


def run_batch(
    plan: Plan | str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    gpus_per_job: float = 1,
    max_parallel: int | None = None,
    progress: bool = True,
    worker_cls: type = Worker,
) -> BatchSummary:
    """Run ``plan`` into ``out`` (see the module docstring); returns what was done.

    ``address``: a Ray cluster to join (``auto``, ``ray://host:10001``); default: the Ray
    instance this process already has, else a local one. ``gpus_per_job``: GPUs each worker
    reserves (when the cluster has none, workers run on the CPUs). ``max_parallel``: workers
    at most (default: one per ``gpus_per_job`` GPUs; on a CPU-only cluster one per CPU, each
    with one torch thread).
    ``worker_cls``: the actor class (a subclass of :class:`Worker`).
    """
    t_start = time.perf_counter()
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    if gpus_per_job < 0:
        raise ConfigError(f"--gpus-per-job must be >= 0 (got {gpus_per_job})")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1 (got {max_parallel})")
    out = Path(out)
    video.check_writable_dir(out)
    with _lock(out):
        return _run(plan, out, address, gpus_per_job, max_parallel, progress, worker_cls, t_start)


def _run(plan: Plan, out: Path, address: str | None, gpus_per_job: float,
         max_parallel: int | None, progress: bool, worker_cls: type, t_start: float) -> BatchSummary:
    _clean_temporaries(out)
    (out / "motions" / ".work").mkdir(parents=True, exist_ok=True)
    recorder = _Recorder(plan, out, progress, total=len(plan.motions) + len(plan.pairs()))

    # plan: what is already done, what must run
    inversions: deque[InvertJob] = deque()
    embeddings: dict[str, Path] = {}
    for m in plan.motions:
        if m.embedding is not None:
            embeddings[m.name] = m.embedding
            recorder.add([_record("invert", m, None, {"embedding": m.embedding}, None, out,
                                  "skipped", error=None, note="given as an embedding")])
            continue
        output = out / "motions" / f"{m.name}.safetensors"
        job = InvertJob(m, output, out / "motions" / ".work" / output.name, _inversion_key(plan, m))
        if _embedding_valid(output, job.key):
            embeddings[m.name] = output
            recorder.add([_record("invert", m, None, {"video": m.video}, output, out, "skipped")])
        else:
            inversions.append(job)

    animations: deque[AnimateJob] = deque()
    image_digests: dict[str, str | None] = {}  # each image is hashed once per run

    def plan_animations(m: Motion) -> None:
        """Queue ``m``'s cells that are not valid yet (split into jobs of ``batch_size``
        targets when submitted, once the workers' device is known)."""
        path = embeddings[m.name]
        digest = _sha256(path)
        todo: list[tuple[Target, dict]] = []
        for t in (t for mm, t in plan.pairs() if mm is m):
            if t.name not in image_digests:
                image_digests[t.name] = _sha256(t.path)
            key = _result_key(plan, m, digest, image_digests[t.name])
            if digest is not None and _result_valid(m, t, out, key):
                recorder.add([_record("animate", m, t, {"embedding": path, "image": t.path},
                                      _result_files(m, t, out)[0], out, "skipped")])
            else:
                todo.append((t, key))
        if todo:
            animations.append(AnimateJob(m, path, [t for t, _ in todo], [k for _, k in todo], out))

    def fail_cells(m: Motion, error: str) -> None:
        """The cells of a motion that could not be learned (its failure was printed already)."""
        recorder.add([_record("animate", m, t, {"video": m.video}, _result_files(m, t, out)[0],
                              out, "failed", error=error) for mm, t in plan.pairs() if mm is m],
                     quiet=True)

    for m in plan.motions:
        if m.name in embeddings:
            plan_animations(m)

    workers, device = 0, None
    try:
        if inversions or animations:
            jobs = len(inversions) + sum(len(m.targets) for m in plan.motions)  # at most
            with ray_session(address):
                workers, device = _execute(plan, out, inversions, animations, embeddings,
                                           plan_animations, fail_cells, recorder, jobs,
                                           gpus_per_job, max_parallel, worker_cls)
    finally:  # interrupted too: the report says what was finished
        recorder.close()
    return BatchSummary(recorder.ordered(), time.perf_counter() - t_start, out / "report.jsonl",
                        out / "index.html", workers, device)


def _execute(plan: Plan, out: Path, inversions: deque, animations: deque,
             embeddings: dict[str, Path], plan_animations: Callable[[Motion], None], fail_cells: Callable[[Motion, str], None],
             recorder: _Recorder, jobs: int, gpus_per_job: float, max_parallel: int | None,
             worker_cls: type) -> tuple[int, str]:
    """Hand jobs to idle workers until none is left: inversions first, then each motion's
    generations as soon as its embedding exists. Returns (workers, device kind)."""
    import ray
    from ray.exceptions import RayError

    pool = _pool(jobs, gpus_per_job, max_parallel)
    actor_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                           **pool.options)(worker_cls)

    def start():
        return actor_cls.remote(plan.model, pool.device, plan.dtype, pool.threads)

    idle = [start() for _ in range(pool.size)]
    running: dict = {}  # object ref -> (actor, job)
    try:
        while inversions or animations or running:
            while idle and (inversions or animations):
                actor = idle.pop()
                job = inversions.popleft() if inversions else _next_batch(animations, pool.device)
                call = actor.invert if isinstance(job, InvertJob) else actor.animate
                running[call.remote(job)] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                actor, job = running.pop(ref)
                try:
                    records = ray.get(ref)
                except RayError as e:  # the worker died more often than Ray retries
                    ray.kill(actor)
                    actor = start()
                    records = _lost(job, out, f"worker lost: {_one_line(e)}")
                idle.append(actor)
                recorder.add(records)
                if isinstance(job, InvertJob):
                    if records[0]["status"] == "done":
                        embeddings[job.motion.name] = job.output
                        plan_animations(job.motion)
                    else:
                        fail_cells(job.motion, f"motion '{job.motion.name}' could not be learned: "
                                               f"{records[0]['error']}")
    finally:
        for actor in idle + [a for a, _ in running.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
    return pool.size, pool.device


def _next_batch(animations: deque, device: str) -> AnimateJob:
    """The first ``batch_size`` targets of the next queued job (the rest stays queued first)."""
    from reenact import api

    job = animations.popleft()
    size = int(job.motion.animate["batch_size"] or api.default_batch_size(device))
    if len(job.targets) > size:
        animations.appendleft(replace(job, targets=job.targets[size:], keys=job.keys[size:]))
        job = replace(job, targets=job.targets[:size], keys=job.keys[:size])
    return job


def _lost(job: InvertJob | AnimateJob, out: Path, error: str) -> list[dict]:
    """Failure records for every output of a job whose worker could not be recovered."""
    if isinstance(job, InvertJob):
        return [_record("invert", job.motion, None, {"video": job.motion.video}, job.output, out,
                        "failed", error=error)]
    return [_record("animate", job.motion, t, {"embedding": job.embedding, "image": t.path},
                    _result_files(job.motion, t, out)[0], out, "failed", error=error)
            for t in job.targets]


# --------------------------------------------------------------------------------------------
# the contact sheet
# --------------------------------------------------------------------------------------------

def _href(path: Path, out: Path) -> str:
    return quote(os.path.relpath(path, out).replace(os.sep, "/"))


def contact_sheet(plan: Plan, out: Path, records: dict[tuple, dict]) -> str:
    """``index.html``: one row per motion, one column per target, each cell the result's gif
    (or the error that stopped it). Toy-sized results are shown enlarged, pixels kept sharp."""
    esc = html.escape
    head = ["<th></th>"]
    for t in plan.targets:
        img = (f'<img src="{_href(t.path, out)}" alt="">' if t.path.is_file() else "")
        head.append(f"<th>{img}<div>{esc(t.name)}</div></th>")
    rows = []
    for m in plan.motions:
        inv = records.get(("invert", m.name, None), {})
        source = m.video or m.embedding
        label = f"<div>{esc(m.name)}</div><small>{esc(source.name)}</small>"
        if inv.get("status") == "failed":
            label += f'<div class="err">{esc(inv["error"] or "")}</div>'
        cells = [f"<th>{label}</th>"]
        for t in plan.targets:
            r = records.get(("animate", m.name, t.name))
            if t.name not in m.targets:
                cells.append('<td class="off"></td>')
            elif r is None:
                cells.append('<td class="todo">not run</td>')
            elif r["status"] == "failed":
                cells.append(f'<td class="fail" title="{esc(r["error"] or "")}">'
                             f'{esc((r["error"] or "")[:200])}</td>')
            else:
                gif = _result_files(m, t, out)[0]
                cells.append(f'<td><img src="{_href(gif, out)}" alt="{esc(m.name)} x {esc(t.name)}">'
                             "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    done = sum(1 for r in records.values() if r["job"] == "animate" and r["status"] != "failed")
    cells_total = len(plan.pairs())
    title = f"reenact batch: {esc(plan.path.name if plan.path else 'plan')}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px; text-align: center; vertical-align: middle; }}
img {{ width: 160px; image-rendering: pixelated; }}
th img {{ width: 80px; }}
td.fail, .err {{ color: #a00; font-size: small; max-width: 160px; }}
td.off {{ background: #eee; }}
td.todo {{ color: #888; }}
</style></head><body>
<h1>{title}</h1>
<p>model <code>{esc(plan.model)}</code>; {done} of {cells_total} results. Rows: motions;
columns: targets.</p>
<table><tr>{''.join(head)}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
