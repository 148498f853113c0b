"""``bnkit policies``: the preset table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bnkit.policy import Policy
from bnkit.presets import preset_info, presets


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "policies", help="list the policy presets", description="List the policy presets."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def rows() -> list[dict[str, str]]:
    """One row per preset: name, the three axes, the peer behaviour it reproduces."""
    out = []
    for name in presets():
        info = preset_info(name)
        pol: Policy = info.policy
        out.append(
            {
                "name": name,
                "train()": pol.describe(True),
                "eval()": pol.describe(False),
                "the same as": info.same_as,
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    from bnkit._render import print_table

    print_table("bnkit policy presets", table)
    return 0
