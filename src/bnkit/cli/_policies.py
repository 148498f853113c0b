"""``bnkit policies``: the preset table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bnkit.policy import Normalize, Policy, Update, preset_info, presets

__all__ = ["register", "run"]


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
                "normalize (train | eval)": _normalize(pol),
                "update": _update(pol),
                "gamma/beta": pol.affine.value,
                "the same as": info.same_as,
            }
        )
    return out


_SHORT = {
    Normalize.BATCH: "batch",
    Normalize.RUNNING: "running",
    Normalize.RENORM: "renorm (r_max {p.r_max:g}, d_max {p.d_max:g})",
    Normalize.GHOST: "ghost ({p.ghost_size} per ghost)",
    Normalize.PRIOR: "prior (N={p.prior_strength:g})",
}


def _normalize(pol: Policy) -> str:
    train, evaluate = (_SHORT[pol.stats_in(t)].format(p=pol) for t in (True, False))
    return train if train == evaluate else f"{train} | {evaluate}"


def _update(pol: Policy) -> str:
    if pol.update is Update.NEVER:
        return "never"
    if pol.update is Update.CUMULATIVE:
        rule = "cumulative"
    else:
        rule = "EMA (layer's momentum)" if pol.momentum is None else f"EMA {pol.momentum:g}"
    return f"{rule} in {pol.update_in.value}"


def run(args: argparse.Namespace) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    from bnkit.cli._render import print_table

    print_table("bnkit policy presets", table)
    return 0
