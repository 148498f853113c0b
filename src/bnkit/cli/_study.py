"""``bnkit study``: run the BatchNorm strategy benchmark (or finish an interrupted one).

Exit 0 when the study ran, whatever its directional checks found (a FAIL is a finding, not an
error); 2, with one line on stderr, for every error found before or during the run: bad flags or
settings (checked before any work), an output folder that is a file or cannot be written, a
model or data that cannot be used, a full disk, parts that cannot be collected.

Three ways to run: the local process pool (default), Ray (``--executor ray [--address ADDR]``),
or one part of the grid per job (``--shard I/N``), merged by ``bnkit study collect DIR...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bnkit.errors import StudyError

__all__ = ["collect", "register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "study",
        help="measure which BatchNorm strategy wins under a domain shift",
        description=(
            "Measure BatchNorm strategies for test-time adaptation and few-shot fine-tuning on "
            "a shifted domain: the default benchmark (digits, offline) or your own model and "
            "data. Results are saved per cell; run the same command again to resume."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a smaller grid (a few minutes)")
    p.add_argument("--config", metavar="TOML", help="a TOML file with grid settings")
    p.add_argument("--out", default="bnkit-study", metavar="DIR", help="output folder")
    p.add_argument("--cache", metavar="DIR", help="source-model cache (default OUT/cache)")
    p.add_argument("--workers", type=int, metavar="N", help="processes (default: one per core)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads per worker (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seeds", type=int, metavar="N", help="number of seeds")
    p.add_argument(
        "--model", metavar="PKG.MOD:FACTORY", help="your model factory (default: built-in)"
    )
    p.add_argument("--checkpoint", metavar="FILE", help="weights for --model (a state dict)")
    p.add_argument("--data", metavar="DIR|PKG.MOD:FACTORY", help="your source/target data")
    p.add_argument("--image-size", type=int, metavar="N", help="resize --data images to N×N")
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: a process pool on this machine (default); ray: Ray tasks (bnkit[ray])",
    )
    p.add_argument("--address", metavar="ADDR", help="the Ray cluster to join (default: start one)")
    p.add_argument("--shard", metavar="I/N", help="run part I of N of the grid (then collect)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    sub_study = p.add_subparsers(dest="study_command", metavar="collect")
    c = sub_study.add_parser(
        "collect",
        help="merge the parts of a sharded study into one report",
        description="Merge the --out folders of the parts of a study run with --shard I/N "
        "into one report, as a single run would have made it.",
    )
    c.add_argument("parts", nargs="+", metavar="DIR", help="the --out folder of each part")
    c.add_argument("--out", default="bnkit-study", metavar="DIR", help="output folder")
    c.set_defaults(run=collect)


def _config(args: argparse.Namespace) -> Any:
    from bnkit.study import StudyConfig

    config = StudyConfig.quick() if args.quick else StudyConfig.default()
    if args.config:
        config = StudyConfig.from_toml(args.config, base=config)
    if args.seeds is not None:
        config = config.replace_from({"seeds": args.seeds}, where="--seeds")
    return config


def _user(args: argparse.Namespace) -> Any:
    from bnkit.study import UserSpec

    if args.data is None:
        if args.model is not None:
            raise StudyError("--model needs --data DIR (your source/ and target/ images)")
        for flag in ("checkpoint", "image_size"):
            if getattr(args, flag) is not None:
                raise StudyError(f"--{flag.replace('_', '-')} needs --data")
        return None
    if args.checkpoint is not None and args.model is None:
        raise StudyError("--checkpoint needs --model PKG.MOD:FACTORY (the model it belongs to)")
    return UserSpec(args.model, args.data, args.checkpoint, args.image_size)


def run(args: argparse.Namespace) -> int:
    import bnkit.study as study

    config = _config(args)
    user = _user(args)
    try:
        results = study.run(
            config,
            out=args.out,
            workers=args.workers,
            threads=args.threads,
            device=args.device,
            cache=args.cache,
            user=user,
            progress=not args.no_progress,
            executor=args.executor,
            address=args.address,
            shard=args.shard,
        )
        m = results.meta
        if m["shard"][1] > 1:
            i, n = m["shard"]
            print(
                f"bnkit study: part {i}/{n}: {m['cells']} of {m['grid_cells']} cells "
                f"({m['ran']} run now, {m['skipped']} already done) in {m['wall_s']:.0f} s"
            )
            print(f"merge the parts with: bnkit study collect DIR_0 ... DIR_{n - 1} --out DIR")
            return 0
        report = study.render(results, args.out)
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise StudyError(f"cannot write the study's files{where}: {err.strerror or err}") from None
    print(
        f"bnkit study: {m['cells']} cells ({m['ran']} run now, {m['skipped']} already done) "
        f"in {m['wall_s']:.0f} s on {m['device']} ({m['workers']} worker(s), {m['executor']})"
    )
    _show(results, report)
    return 0


def collect(args: argparse.Namespace) -> int:
    import bnkit.study as study

    try:
        results = study.collect(args.parts, out=args.out)
        report = study.render(results, args.out)
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise StudyError(f"cannot write the study's files{where}: {err.strerror or err}") from None
    m = results.meta
    print(f"bnkit study collect: {m['cells']} cells from {len(m['parts'])} part(s)")
    _show(results, report)
    return 0


def _show(results: Any, report: Any) -> None:
    from bnkit.cli._render import print_table
    from bnkit.study.results.report import checks_table
    from bnkit.study.results.tables import headline_table

    print()
    print_table(
        "Directional checks (a FAIL is a finding of this study, not an error)",
        [
            {k: row[k] for k in ("result", "check", "measured", "source")}
            for row in checks_table(results)
        ],
    )
    print()
    print_table(
        "Test time: source accuracy (%), then Δ against it (points), i.i.d. stream",
        headline_table(results),
    )
    print()
    print(f"report: {report}")
    print(f"        {report.with_suffix('.md')}")
    print(f"rows:   {report.parent / 'results.csv'}")
    sys.stdout.flush()
