"""The one place that silences the libraries reenact is built on.

diffusers, transformers and huggingface_hub print notes ("install accelerate", "torchvision not
installed", hub retries) and loading bars that are not the user's problem and would bury our
one-line messages. :func:`quiet_libraries` turns them off for a block and restores them after, so
library users and tests keep their own settings; our own bars (inversion, denoising) stay.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["quiet_libraries"]


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers/hub warnings and loading bars for the duration."""
    from diffusers.utils import logging as d_log
    from huggingface_hub.utils import logging as h_log
    from transformers.utils import logging as t_log

    saved = [(log, log.get_verbosity(), log.is_progress_bar_enabled()) for log in (d_log, t_log)]
    hub_verbosity = h_log.get_verbosity()
    for log, _, _ in saved:
        log.set_verbosity_error()
        log.disable_progress_bar()
    h_log.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, verbosity, bars in saved:
            log.set_verbosity(verbosity)
            (log.enable_progress_bar if bars else log.disable_progress_bar)()
        h_log.set_verbosity(hub_verbosity)
