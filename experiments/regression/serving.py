"""Regression export and codec: raw feature rows (CSV or JSON lists) -> predicted values.

Features are standardized on the host with the training split's statistics, in float64 as
`task.load_data` does, so a row from the data gives the bits the trainer's model saw.
"""

import csv
import io
import sys

import numpy as np

from research.core import data
from research.deploy.export import ExportSpec, Function
from research.deploy.inference import InputError

FEATURE_NAMES = {
    "diabetes": ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"),
}


def export_spec(config, model, dataset: data.Dataset, artifacts_dir: str, options) -> ExportSpec:
    """One function `predict`: standardized `features [batch, features]` -> `value [batch]`."""
    del artifacts_dir
    if options:
        raise InputError(f"Regression exports take no options ({', '.join(options)}).")
    num_features = dataset.train["features"].shape[1]

    def predict(variables, features):
        return {"value": model.apply(variables, features, train=False)}

    names = FEATURE_NAMES.get(config.dataset, tuple(f"x{i}" for i in range(num_features)))
    info = dataset.info
    return ExportSpec(
        functions={"predict": Function(predict, [("features", "float32", (num_features,))])},
        default_function="predict",
        assets={},
        metadata={
            "feature_names": list(names),
            "feature_mean": info["feature_mean"],
            "feature_std": info["feature_std"],
            "raw_dtype": info["raw_dtype"],
        },
        eval_inputs=lambda arrays: {"features": arrays["features"]},
    )


class Codec:
    """A JSON instance is a list of feature values (or {name: value}); the answer {"value": y}."""

    def __init__(self, model, options: dict):
        if options:
            raise InputError(f"Regression models take no options ({', '.join(options)}).")
        metadata = model.signature["metadata"]
        self.function = model.signature["default_function"]
        self.names = metadata["feature_names"]
        self.mean = np.asarray(metadata["feature_mean"], np.float64)
        self.std = np.asarray(metadata["feature_std"], np.float64)
        self.raw_dtype = np.dtype(metadata["raw_dtype"])

    def _expected(self) -> str:
        return f"{len(self.names)} numbers ({', '.join(self.names)})"

    def parse(self, instance) -> dict[str, np.ndarray]:
        if isinstance(instance, dict):
            missing = [name for name in self.names if name not in instance]
            if missing or len(instance) != len(self.names):
                raise InputError(f"expected the keys {', '.join(self.names)}")
            instance = [instance[name] for name in self.names]
        if not isinstance(instance, list) or len(instance) != len(self.names):
            count = f"{len(instance)} values" if isinstance(instance, list) else "not a list"
            raise InputError(f"expected {self._expected()}, got {count}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in instance):
            raise InputError(f"expected {self._expected()}, got a value that is not a number")
        # The raw dtype first: a decimal string is rounded to the bits the dataset holds.
        raw = np.asarray(instance, np.float64).astype(self.raw_dtype)
        features = ((raw - self.mean) / self.std).astype(np.float32)
        if not np.all(np.isfinite(features)):
            raise InputError("expected finite feature values")
        return {"features": features}

    def read(self, source: str):
        """(where, example or InputError) for every CSV row of `source` ("-" = stdin)."""
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as file:
                text = file.read()
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            where = f"{source} line {number}"
            if not row or not "".join(row).strip():
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                if number == 1:  # a header
                    continue
                yield where, InputError(f"{where}: expected {self._expected()} separated by commas")
                continue
            try:
                yield where, self.parse(values)
            except InputError as error:
                yield where, InputError(f"{where}: {error}")

    def format(self, outputs: dict[str, np.ndarray]) -> dict:
        return {"value": float(outputs["value"])}
