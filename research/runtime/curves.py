"""Learning curves as a PNG grid: one run's (written into its workdir) and many runs' (reports)."""

from typing import NamedTuple


class Line(NamedTuple):
    """One curve of a panel; lines with the same `group` share a colour and a legend entry."""

    group: str
    steps: list[int]
    values: list[float]


def line(group: str, points: list[tuple[int, float]]) -> Line:
    """The Line through (step, value) points."""
    steps, values = zip(*points, strict=True)
    return Line(group, list(steps), list(values))


def draw(panels: dict[str, list[Line]], path: str, *, log_scale: frozenset = frozenset()) -> None:
    """Writes `panels` ({title: lines}, in order, three to a row) to the PNG `path`.

    Panels named in `log_scale` use a logarithmic y axis when all their values are positive.
    """
    # A bare Figure drawn by Agg: no pyplot state, no GUI backend, nothing to close.
    import matplotlib
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(line.group for lines in panels.values() for line in lines))
    colours = {group: matplotlib.colormaps["tab10"](i % 10) for i, group in enumerate(groups)}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    width, height = 5.2 * columns, 3.6 * rows
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    labelled = set()
    for axis, (title, lines) in zip(axes.flat, panels.items(), strict=False):
        for line in lines:
            axis.plot(
                line.steps,
                line.values,
                color=colours[line.group],
                alpha=0.8,
                linewidth=1.2,
                marker="o" if len(line.steps) < 30 else None,
                markersize=3,
                label=None if line.group in labelled else line.group,
            )
            labelled.add(line.group)
        if title in log_scale and all(v > 0 for line in lines for v in line.values):
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    handles, labels = [], []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.append(handle)
            labels.append(label)
    figure.legend(
        handles,
        labels,
        loc="upper center",
        ncol=min(4, len(labels)),
        fontsize="medium",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    # Fixed margins in inches (tick labels, titles, the legend's rows above): measuring the
    # text as tight_layout does costs a second rendering of the figure.
    legend_rows = -(-len(labels) // 4)
    figure.subplots_adjust(
        left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height,
        top=1 - (0.3 + 0.3 * legend_rows) / height, wspace=0.3, hspace=0.45,
    )  # fmt: skip
    figure.savefig(path, dpi=90)
