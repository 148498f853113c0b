"""Outputs of a watch: the summary table, TensorBoard scalars and the drift plot.

TensorBoard and matplotlib are optional; each is imported only when used, and a missing one
raises :class:`~bnkit.errors.MissingDependencyError` naming the extra that installs it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from bnkit.diagnostics._facts import running_stats
from bnkit.errors import DiagnosticError, MissingDependencyError

if TYPE_CHECKING:
    from bnkit.diagnostics.watch import LayerStep, Watch

__all__ = ["Table", "plot", "summary", "write_scalars", "writer"]

_EXTRA = "pip install 'bnkit[watch]'"


@dataclasses.dataclass(frozen=True)
class Table:
    """A titled table: ``str()`` is plain text, ``print()`` uses rich on a terminal."""

    title: str
    rows: list[dict[str, str]]

    def __str__(self) -> str:
        from bnkit.cli._render import plain_table

        if not self.rows:
            return f"{self.title}: (none)"
        return f"{self.title}\n{plain_table(self.rows)}"

    def print(self) -> None:
        """Print the table."""
        from bnkit.cli._render import print_table

        print_table(self.title, self.rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"title": self.title, "rows": self.rows}


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def summary(w: Watch) -> Table:
    """One row per watched layer over every recorded step."""
    records = [*w.records, *w._pending()]
    rows = []
    for name, layer in w.layers:
        kept = running_stats(layer)[0] is not None  # else only calls and gamma/beta to watch
        mine = [r for r in records if r.layer == name]
        recorded = [r for r in w.records if r.layer == name]
        used = sorted({u for r in mine for u in r.used.split(", ") if u})
        means = [r.mean_change for r in mine if r.mean_change is not None]
        drifts = [r.drift for r in mine if r.drift is not None]
        rows.append(
            {
                "layer": name or "(root)",
                "calls": str(sum(r.calls for r in mine)),
                "normalized with": ", ".join(used) or "-",
                "batches": f"{sum(r.batches for r in mine):+d}",
                "max |Δ mean|": _g(max(means)) if means else "-" if kept else "no running stats",
                "drift": _g(drifts[-1]) if drifts else "-" if kept else "no running stats",
                "gamma/beta grad": f"{sum(r.grad for r in recorded)}/{len(recorded)} records",
                "gamma/beta max |Δ|": _g(max((r.affine_change for r in mine), default=0.0)),
            }
        )
    every = f", a record every {w.every} steps" if w.every > 1 else ""
    return Table(f"bnkit.watch: {w.steps} steps of {type(w.model).__name__}{every}", rows)


def writer(arg: Any) -> tuple[Any, bool]:
    """The writer to log to and whether the watch owns it (created from a log directory)."""
    if arg is None:
        return None, False
    if isinstance(arg, (str, os.PathLike)):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise MissingDependencyError(
                f"bnkit.watch(writer={os.fspath(arg)!r}) logs to TensorBoard, which needs the "
                f"tensorboard package ({err}); install it: {_EXTRA}"
            ) from None
        return SummaryWriter(log_dir=os.fspath(arg)), True
    if callable(getattr(arg, "add_scalar", None)):
        return arg, False
    raise DiagnosticError(
        f"writer must be a TensorBoard SummaryWriter (with add_scalar) or a log directory "
        f"(got {type(arg).__name__})"
    )


def write_scalars(sink: Any, records: list[LayerStep]) -> None:
    """Log each record as scalars ``bnkit/<layer>/<quantity>`` at its step."""
    for r in records:
        base = f"bnkit/{r.layer or 'root'}"
        values = {
            "mean_change": r.mean_change,
            "var_change": r.var_change,
            "drift": r.drift,
            "batches": r.batches,
            "grad": float(r.grad),
            "affine_change": r.affine_change,
        }
        for key, value in values.items():
            if value is not None:
                sink.add_scalar(f"{base}/{key}", value, r.step)


def plot(w: Watch, path: str | os.PathLike[str]) -> None:
    """A PNG with two panels per step: drift from the start, and relative change per step."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError(
            f"Watch.plot() needs matplotlib ({err}); install it: {_EXTRA}"
        ) from None
    if not w.records:
        raise DiagnosticError("nothing to plot: the watch has not recorded a step yet")
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    final: dict[str, float] = {}
    for name, _ in w.layers:
        mine = [r for r in w.records if r.layer == name and r.drift is not None]
        if mine:
            final[name] = mine[-1].drift or 0.0
    if not final:
        raise DiagnosticError(
            "nothing to plot: no watched layer keeps running statistics (the summary has their "
            "calls and gamma/beta)"
        )
    labelled = set(sorted(final, key=final.__getitem__, reverse=True)[:8])
    for name in final:
        mine = [r for r in w.records if r.layer == name]
        steps = [r.step for r in mine]
        label = (name or "(root)") if name in labelled else None
        width = 1.5 if label else 0.6
        top.plot(steps, [r.drift or 0.0 for r in mine], label=label, linewidth=width)
        bottom.plot(steps, [r.rel_change or 0.0 for r in mine], linewidth=width)
    top.set_ylabel("drift from start\n(mean symmetric KL)")
    bottom.set_ylabel("relative change\nper record")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.grid(alpha=0.3)
    if labelled:
        top.legend(fontsize="small", title="layers (largest drift)")
    top.set_title(f"Running statistics of {type(w.model).__name__}: {w.steps} steps")
    canvas.print_png(os.fspath(path))  # type: ignore[no-untyped-call]
