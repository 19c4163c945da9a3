"""Per-model defaults: which :class:`~reenact.inversion.InversionConfig` values a model gets.

:class:`InversionConfig`'s own defaults were *measured* on the bundled toy model
(benchmarks/convergence.py, docs/PERFORMANCE.md); they are the ``toy`` profile, used for the toy
and for any model that is neither the toy nor in the SVD family. The ``svd`` profile (Stability's
img2vid / img2vid-xt checkpoints and any folder with SVD's UNet layout) replaces some of them
with values from the paper and public figures. **None of the svd values was measured here**: this
project has neither SVD's weights nor a GPU in its test environment; each says its source.

A profile is the single home of a model's defaults: the CLI help, ``reenact info``, the README
and the embedding's metadata (``profile``) all read it; every value stays overridable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import models
from .inversion import InversionConfig

__all__ = ["Override", "Profile", "PROFILES", "TOY", "TOY_V2", "SVD", "profile_for", "inversion_config"]


@dataclass(frozen=True)
class Override:
    """One value of a profile that differs from InversionConfig's default, with its source."""

    value: object
    source: str


@dataclass(frozen=True)
class Profile:
    """A named set of :class:`Override` s of :class:`InversionConfig`'s defaults."""

    name: str
    description: str
    overrides: dict[str, Override] = field(default_factory=dict)

    def config(self, **changes) -> InversionConfig:
        """InversionConfig with this profile's values, then ``changes`` (the user's) on top."""
        base = {k: o.value for k, o in self.overrides.items()}
        return dataclasses.replace(InversionConfig(), **{**base, **changes})


TOY = Profile(
    "toy",
    "measured on the bundled toy model (benchmarks/convergence.py; docs/PERFORMANCE.md); also "
    "used for models outside the SVD family",
)

SVD = Profile(
    "svd",
    "Stable Video Diffusion family: from the paper and public figures, NOT measured here (no SVD "
    "weights or GPU in this project's test environment); see docs/METHOD.md",
    {
        "steps": Override(1000, "paper: snapshots at 200, 500, 1000 and 2000 steps; 1000 is "
                                "inside that range (about an hour per motion on an A100)"),
        "lr": Override(1e-2, "with --lr-relative: 1e-2 x the initial embedding's RMS; the toy's "
                             "best 5e-2 reaches its plateau in ~60 steps, 1e-2 in ~480 (8x): "
                             "well inside 1000 steps and gentler on a 1.5 B-parameter model"),
        "lr_relative": Override(True, "Adam's step is absolute per element, so the lr is scaled "
                                      "to the scale of SVD's CLIP embeddings (the toy's are ~1)"),
        "log_sigma_mean": Override(2.8, "public reimplementation on SVD: ln s ~ N(2.8, 1.6^2), "
                                        "the high noise levels where motion is decided"),
        "num_augmentations": Override(4, "paper: augmentations against appearance leakage (kind "
                                         "open); 4 augmented copies beside the original"),
        "flip_prob": Override(0.25, "horizontal flip, one candidate named for the paper's "
                                    "augmentations; it mirrors the motion too, so kept rare "
                                    "(--flip-prob 0 for direction-specific motions)"),
        "crop_scale": Override(0.8, "random crop of 80-100% of the side, the other candidate "
                                    "(random crops/rescales)"),
        "gradient_checkpointing": Override(True, "14x576x1024 fp16: peak 54.7 -> 11.0 GB by the "
                                                 "memory benchmark (docs/PERFORMANCE.md): fits "
                                                 "a 12-24 GB card"),
        "fps": Override(None, "the clip's: SVD was trained with each clip's real frame rate as "
                              "its fps conditioning, so the rate at which the selected frames "
                              "replay the reference is the honest value (issue 8 item 4)"),
        "checkpoint_every": Override(100, "a step costs seconds on SVD: lose at most ~100"),
    },
)

#: toy-v2's inversion steps; its two starts run all of them before the choice (start_steps = steps)
_TOY_V2_STEPS = 56

TOY_V2 = Profile(
    "toy-v2",
    "measured on the bundled world-v2 toy model (benchmarks/toy_variants.py and reenact bench toy; "
    "docs/RESULTS.md): chosen on its first, pre-trained weights and re-checked on the shipped "
    "fine-tuned ones (reenact bench toy at two seeds, benchmarks/toy_sweep.py); the rest as the "
    "toy profile",
    {
        "init": Override("random", "the toy's CLIP encoder is random and untrained, so its CLIP "
                                   "embeddings are nothing its UNet was trained on; from the null "
                                   "context one shared set scored 0.57 vs 0.37 from clip (8 "
                                   "references, benchmarks/toy_variants.py)"),
        "frame_lr": Override(0.1, "scored above the paper's independent sets (1) with both "
                                  "initialisations: clip 0.50 vs 0.24 (6 references), random "
                                  "0.37 vs 0.30 (9) (benchmarks/toy_variants.py); the full "
                                  "benchmark (configs e vs p): docs/RESULTS.md"),
        "log_sigma_mean": Override(3.5, "ln s ~ N(3.5, 1.6^2), the high noise levels where the "
                                        "context decides the motion: 8 references where the "
                                        "default failed went from -0.01 to 0.70 mean cosine "
                                        "(0.7 -> 3.5; 2.0 and 2.8 in between, 4.5 lower; "
                                        "benchmarks/toy_variants.py); the full benchmark: "
                                        "docs/RESULTS.md; on the shipped weights 3.5 vs 2.8 "
                                        "scored 0.835 vs 0.843 (CPU) and 0.914 vs 0.823 (GPU "
                                        "screen), two draws of the same benchmark"),
        "motion_weight": Override(4.0, "the loss weighed up where the reference moves (as the toy was "
                                       "trained): on the full benchmark at three draws (243 videos, "
                                       "2026-11-27) 0.944 / 93.8 % direction vs 0.922 / 89.3 % with the "
                                       "uniform loss, better at every draw, motion classes below 0.80 "
                                       "1 vs 2 (docs/RESULTS.md, \"The motion-weighted loss is the "
                                       "toy-v2 default\")"),
        "starts": Override(2, "two starts (own initialisation and noise stream each) in one UNet "
                              "batch, the one with the lower probe loss kept: the seed picks the "
                              "basin the inversion stops in, and the loss ranks the basins; on the "
                              "full benchmark at three draws (2026-11-27) 0.970 / 95.1 % vs 0.944 / "
                              "93.8 % for one start of 80 steps (docs/RESULTS.md, \"Two starts, "
                              "the better kept, are the toy-v2 default\")"),
        "steps": Override(_TOY_V2_STEPS,
                          "a step of two starts costs ~1.8x one start's (80 steps at batch 2: "
                          "34.0 vs 18.8 s), so 56 steps keep a default inversion inside 30 s "
                          "on 2 CPU cores (27.8 s measured; 64 steps took 30.1-30.8 s)"),
        "start_steps": Override(_TOY_V2_STEPS,
                                "= the profile's steps, so the choice is made at the end: the "
                                "starts run all their steps, then the one with the lower probe "
                                "loss is kept (a choice after 40 steps with the plain probe kept "
                                "worse starts than one: benchmarks/toy_starts.py); a longer "
                                "--steps chooses at 56 and continues the kept start"),
        "probe": Override("plain", "after a full run the basins' losses differ clearly (circle 5: "
                                   "0.109 vs 0.134 on 48 common draws, benchmarks/toy_basins.py), "
                                   "so the reference itself ranks them; the hue probe's three "
                                   "copies would take the run over 30 s"),
        "probe_draws": Override(16, "16 common noise draws, one forward pass of both starts each "
                                    "(no gradient): the paired comparison of the two finished starts"),
    },
)

PROFILES: dict[str, Profile] = {p.name: p for p in (TOY, TOY_V2, SVD)}


def profile_for(model) -> Profile:
    """The profile of ``model`` (a name or a loaded pipeline): ``svd`` for the SVD family,
    ``toy-v2`` for the bundled world-v2 model (by name, or by the folder a pipeline was loaded
    from), else ``toy`` (see module docs)."""
    if models.is_svd_family(model):
        return SVD
    name = model if isinstance(model, str) else getattr(model, "model_name", None)
    if name is not None and models.bundled_name(name) == "toy-v2":
        return TOY_V2
    return TOY


def inversion_config(model: str, **changes) -> InversionConfig:
    """The effective settings for ``model``: its profile's, with ``changes`` on top."""
    return profile_for(model).config(**changes)
