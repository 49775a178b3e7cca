"""Accuracy of a trained image classifier with each test-time average of views.

    .venv/bin/python benchmarks/test_time_views.py --workdir=runs/fm_d_16_64_128 \
        [--split=validation] [--step=N] [--out=FILE]

Scores the run's checkpoint (the newest, or `--step`) on one evaluation split with the
logits averaged over: the image alone (`plain`); it and its mirror image (`mirror`, the
model's `mirror_average`); those two each moved one pixel up, down, left and right as well
(`mirror_5_shifts`, ten views, the model's `mirror_average` with `shift_average`); and both
mirrors at all nine offsets of up to one pixel in each direction (`mirror_9_shifts`, 18
views). Moved images are filled with zeros at the edge they leave. Whatever averages the run's
config names, each row here is computed from the same 18 views, so the run's own figure in
`summary.json` is one of them. Nothing in the workdir is changed.
"""

import argparse
import itertools
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402 (after the path is set)
import numpy as np  # noqa: E402

import experiments  # noqa: E402
from research.deploy import export  # noqa: E402

OFFSETS = tuple(itertools.product((-1, 0, 1), (-1, 0, 1)))  # (down, right) in pixels
CROSS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
AVERAGES = {  # name: the (offset, mirrored) views it averages
    "plain": [((0, 0), False)],
    "mirror": [((0, 0), False), ((0, 0), True)],
    "mirror_5_shifts": [(offset, mirrored) for offset in CROSS for mirrored in (False, True)],
    "mirror_9_shifts": [(offset, mirrored) for offset in OFFSETS for mirrored in (False, True)],
}


def moved(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """`images` `[batch, height, width, channels]` moved by whole pixels, zeros filling in."""
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return padded[:, 1 - down : 1 - down + height, 1 - right : 1 - right + width]


def accuracies(workdir: str, split: str, step: int | None) -> dict:
    config, _, dataset, model, variables, step, _ = export.restore_variables(
        workdir, step, get_task=experiments.get_task
    )
    if not hasattr(model, "mirror_average"):
        raise SystemExit(f"error: {workdir}'s model ({config.model.name}) is not a ResNet.")
    if split not in dataset.eval_splits:
        raise SystemExit(
            f"error: {workdir} has no split '{split}'; choose one of "
            f"{', '.join(dataset.eval_splits)}."
        )
    model = model.clone(mirror_average=False, shift_average=False)  # one view per call
    arrays = dataset.eval_splits[split].arrays
    images, labels = arrays["inputs"], arrays["label"]
    apply = jax.jit(lambda images: model.apply(variables, images, train=False))
    batch = config.eval_batch_size

    def logits(view):
        (down, right), mirrored = view
        shown = moved(images[:, :, ::-1] if mirrored else images, down, right)
        return np.concatenate(
            [np.asarray(apply(shown[i : i + batch])) for i in range(0, len(shown), batch)]
        )

    views = {view: logits(view) for view in AVERAGES["mirror_9_shifts"]}
    result = {"workdir": workdir, "step": step, "split": split, "examples": len(labels)}
    for name, averaged in AVERAGES.items():
        mean = np.mean([views[view] for view in averaged], axis=0)
        result[name] = round(100 * float(np.mean(mean.argmax(-1) == labels)), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the result here as JSON")
    args = parser.parse_args()
    result = accuracies(args.workdir, args.split, args.step)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
