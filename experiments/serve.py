"""Serves an exported model over HTTP with dynamic batching.

`python -m experiments.serve --model=DIR --port=8000`: `POST /v1/predict` with
`{"instances": [...]}` answers `{"predictions": [...]}`, `GET /v1/model` the signature,
`GET /healthz`; SIGTERM answers requests in flight, then exits.
The command of research/deploy/serve.py, given this repository's tasks and their options.
"""

import functools

from absl import app

import experiments
from research.deploy import serve

if __name__ == "__main__":
    serve.define_flags(experiments.serving_modules())
    app.run(functools.partial(serve.main, get_task=experiments.get_task))
