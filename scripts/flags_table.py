"""Print the CLI's flags as markdown tables (pasted into README.md's "Every flag").

tests/test_readme.py checks that every flag the parser knows appears in the README, so the two
cannot drift apart silently. Usage: python scripts/flags_table.py
"""

from __future__ import annotations

import argparse

from reenact.cli import build_parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def flag_rows(sub: argparse.ArgumentParser):
    for a in sub._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = ", ".join(f"`{o}`" for o in a.option_strings) if a.option_strings else f"`{a.metavar or a.dest.upper()}`"
        default = a.default
        profiled = getattr(a, "profile_defaults", None)  # set per model profile (reenact.profiles)
        if profiled is not None:
            default = ", ".join(f"{k}: {v}" if v is not None else f"{k}: clip's"
                                for k, v in profiled.items() if v is not None or k != "toy")
            if len(profiled) == 1:
                default = "" if profiled["toy"] is None else str(profiled["toy"])
        elif default in (None, argparse.SUPPRESS, [], False) or a.option_strings == []:
            default = ""
        text = (a.help or "").replace("%(default)s", str(a.default)).replace("%%", "%").replace("|", "\\|")
        yield name, default, text


def main() -> None:
    for name, sub in subcommands(build_parser()).items():
        print(f"\n**`reenact {name}`**\n\n| flag | default | meaning |\n|---|---|---|")
        for flag, default, text in flag_rows(sub):
            print(f"| {flag} | {default if default != '' else ''} | {text} |")


if __name__ == "__main__":
    main()
