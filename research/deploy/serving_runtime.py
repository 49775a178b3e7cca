"""Loads an exported model directory and runs it with only jax and numpy.

`research.deploy.export` copies this file into every exported directory, so a consumer can
`import serving_runtime` from there without this repository, flax or the experiments.
"""

import hashlib
import json
import os

import jax
import numpy as np
from jax import export as jax_export

SIGNATURE_FILE = "signature.json"
PARAMETERS_FILE = "parameters.npz"
FUNCTION_SUFFIX = ".stablehlo"
ASSETS_DIR = "assets"
FORMAT_VERSION = 1


class ModelDirectoryError(ValueError):
    """An exported directory that cannot be used as it is; the message names the file."""


def parameters_sha256(entries: list[dict], arrays: list[np.ndarray]) -> str:
    """The trainer's `params_sha256`: over the "params" leaves, in sorted key-path order."""
    digest = hashlib.sha256()
    for entry, array in zip(entries, arrays, strict=True):
        if entry["collection"] != "params":
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{entry['path']}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _short(error: Exception) -> str:
    """An error as a few words: a missing file's name, else the first line of the message."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{os.path.basename(error.filename)} is missing"
    if isinstance(error, KeyError):
        return f"no entry {error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class ExportedModel:
    """An exported directory: its signature, parameters and serialized functions.

    `run(name, inputs)` takes `{input: array [batch, ...]}` for any batch size and returns
    `{output: numpy array [batch, ...]}`; each batch size compiles once.
    """

    def __init__(self, directory: str, *, check_parameters: bool = True):
        self.directory = os.path.abspath(directory)
        try:
            self._load(check_parameters)
        except (OSError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, ModelDirectoryError):
                raise
            raise ModelDirectoryError(
                f"{self.directory} is not a complete exported model ({_short(error)}); "
                "export the run again into a new directory."
            ) from None

    def _load(self, check_parameters: bool) -> None:
        self.signature = self._read_signature()
        if self.signature.get("format_version") != FORMAT_VERSION:
            raise ModelDirectoryError(
                f"{self._path(SIGNATURE_FILE)} has format_version "
                f"{self.signature.get('format_version')}, this runtime reads {FORMAT_VERSION}; "
                "export the run again with this code."
            )
        entries = self.signature["parameters"]
        with np.load(self._path(PARAMETERS_FILE)) as saved:
            arrays = [saved[str(index)] for index in range(len(entries))]
        if check_parameters:
            digest = parameters_sha256(entries, arrays)
            if digest != self.signature["params_sha256"]:
                raise ModelDirectoryError(
                    f"{self._path(PARAMETERS_FILE)} does not hold the parameters the signature "
                    f"names (SHA-256 {digest[:12]}... != {self.signature['params_sha256'][:12]}"
                    "...); export the run again."
                )
        self.parameters = [jax.device_put(array) for array in arrays]
        self.functions = {}
        for name in self.signature["functions"]:
            with open(self._path(name + FUNCTION_SUFFIX), "rb") as file:
                serialized = bytearray(file.read())
            try:
                self.functions[name] = jax_export.deserialize(serialized)
            except Exception as error:  # noqa: BLE001 (the deserializer raises many kinds)
                raise ModelDirectoryError(
                    f"{self._path(name + FUNCTION_SUFFIX)} is damaged ({_short(error)}); export "
                    "the run again."
                ) from None
        self._compiled = {name: jax.jit(function.call) for name, function in self.functions.items()}

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _read_signature(self) -> dict:
        path = self._path(SIGNATURE_FILE)
        try:
            with open(path) as file:
                signature = json.load(file)
        except FileNotFoundError:
            raise ModelDirectoryError(
                f"{self.directory} holds no {SIGNATURE_FILE}; pass a directory written by "
                "python -m experiments.export."
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelDirectoryError(
                f"{path} is damaged (not JSON: {_short(error)}); export the run again."
            ) from None
        if not isinstance(signature, dict):
            raise ModelDirectoryError(
                f"{path} is damaged (not a JSON object); export the run again."
            )
        return signature

    def asset_path(self, name: str) -> str:
        """The path of an asset file (a tokenizer model, class names) of this directory."""
        return self._path(os.path.join(ASSETS_DIR, name))

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs function `name` on `{input: [batch, ...]}`; returns `{output: [batch, ...]}`."""
        spec = self.signature["functions"][name]
        arrays = []
        for input_spec in spec["inputs"]:
            array = np.asarray(inputs[input_spec["name"]], dtype=input_spec["dtype"])
            arrays.append(array)
        outputs = self._compiled[name](self.parameters, *arrays)
        return {key: np.asarray(value) for key, value in outputs.items()}

    def zeros(self, name: str, batch_size: int) -> dict[str, np.ndarray]:
        """Inputs of function `name` for `batch_size` examples, all zero (to compile it)."""
        return {
            spec["name"]: np.zeros((batch_size, *spec["shape"][1:]), spec["dtype"])
            for spec in self.signature["functions"][name]["inputs"]
        }


def load(directory: str) -> ExportedModel:
    """The exported model in `directory` (parameters checked against `params_sha256`)."""
    return ExportedModel(directory)
