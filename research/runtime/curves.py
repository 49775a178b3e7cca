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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(line.group for lines in panels.values() for line in lines))
    colours = {group: plt.get_cmap("tab10")(i % 10) for i, group in enumerate(groups)}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
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
    legend_rows = -(-len(labels) // 4)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.06 * legend_rows / rows))
    figure.savefig(path, dpi=90)
    plt.close(figure)
