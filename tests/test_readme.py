"""The README is the front door: it must document every CLI flag and the two set-up commands."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from flags_table import subcommands  # noqa: E402

from reenact.cli import build_parser  # noqa: E402

README = (ROOT / "README.md").read_text()


def test_every_flag_of_every_subcommand_is_in_the_readme():
    missing = []
    for name, sub in subcommands(build_parser()).items():
        assert f"reenact {name}" in README, name
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and f"`{opt}`" not in README:
                    missing.append(f"{name} {opt}")
    assert not missing, f"flags not documented in README.md: {missing}"


def test_the_two_commands_and_the_ci_script_agree():
    assert "make demo" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), "CI must run the README's test command"
