"""Motion-transfer benchmark on the toy world: ``python benchmarks/toy_transfer.py [flags]``.

The same as ``reenact bench toy [flags]``; everything lives in :mod:`reenact.toy.bench` (see its
docstring for the references, targets, configurations a-e/o and metrics, and ``--help`` for the
flags). Defaults: 16 references x 3 targets, configurations a,b,c,d,e, 300 inversion steps, 25
generation steps, 2 threads, results in ``bench-out/`` (results.json, table.md, example grids).
"""

from __future__ import annotations

import sys

from reenact.errors import ReenactError
from reenact.toy.bench import main

if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except ReenactError as e:
        print(f"toy_transfer: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
