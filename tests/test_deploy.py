"""Export, predict and serve: an exported model answers as the trainer's evaluation did."""

import asyncio
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import experiments
from research.core import data, evaluation, steps
from research.deploy import export, inference, predict, serve
from research.runtime import parallel
from tests import helpers
from tests.helpers import REPO_ROOT, run_module, subprocess_environment

CONFIGS = os.path.join(REPO_ROOT, "experiments")
TINY = {"num_train_steps": 8, "eval_every_steps": 8, "log_every_steps": 4}
TINY |= {"checkpoint_every_steps": 8, "warmup_steps": 2}
RUNS = {
    "regression": ("regression/configs/diabetes_mlp.py", {"eval_batch_size": 32}),
    # With moving averages of the weights: those are what the run is evaluated and exported with.
    "image_classification": (
        "image_classification/configs/mnist1d_cnn.py",
        {
            "eval_batch_size": 256,
            "model.features": (8, 8),
            "model.dense_sizes": (),
            "ema_decay": 0.5,
        },
    ),
    "seq2seq": (
        "seq2seq/configs/scan_transformer.py",
        {
            "batch_size": 32,
            "eval_batch_size": 512,
            "scan_split": "addprim_turn_left",  # its test split is the smallest (1208)
            "model.num_layers": 1,
            "model.width": 32,
            "model.num_heads": 2,
            "model.mlp_width": 64,
        },
    ),
}

# Runs the exported functions where flax, research and experiments cannot be imported.
ISOLATED = """
import importlib.abc, os, sys
BLOCKED = ("flax", "research", "experiments", "optax", "tensorflow")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be needed")
sys.meta_path.insert(0, Blocker())
jobs = sys.argv[2:]
# No entry of the import path holds the repository's packages (a virtual environment
# inside the checkout, as CI makes, holds only installed ones).
assert not any(os.path.isdir(os.path.join(p, "research")) for p in sys.path if p), sys.path
import numpy as np
for job in jobs:
    directory, inputs_path, batch_size, outputs_path = job.split(",")
    sys.path.insert(0, directory)
    import serving_runtime
    model = serving_runtime.load(directory)
    sys.path.pop(0)
    del sys.modules["serving_runtime"]
    name = model.signature["default_function"]
    with np.load(inputs_path) as saved:
        inputs = dict(saved)
    count, size = len(next(iter(inputs.values()))), int(batch_size)
    padded = -(-count // size) * size  # zero rows, as the trainer's evaluation pads
    inputs = {k: np.concatenate([v, np.zeros((padded - count, *v.shape[1:]), v.dtype)])
              for k, v in inputs.items()}
    parts = [model.run(name, {k: v[i:i + size] for k, v in inputs.items()})
             for i in range(0, padded, size)]
    np.savez(outputs_path, **{k: np.concatenate([p[k] for p in parts])[:count] for k in parts[0]})
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    """Per task: (config, run dir, model dir, test arrays, the trainer's test predictions)."""
    trained = helpers.train_and_export(tmp_path_factory, RUNS, CONFIGS, **TINY, data_dir=data_dir)
    return {
        task_name: (config, root, *_trainer_predictions(str(root / "run")))
        for task_name, (config, root) in trained.items()
    }


def _trainer_predictions(workdir):
    """The test split's arrays and predictions through the trainer's own evaluation path."""
    config, task, dataset, model, variables, _, _ = export.restore_variables(
        workdir, get_task=experiments.get_task
    )
    if task.predict is None:  # the model's outputs, as eval_step computes them
        apply = lambda model, variables, batch: model.apply(  # noqa: E731
            variables, *task.model_inputs(batch), train=False
        )
        task = dataclasses.replace(task, predict=apply)
    predict = jax.jit(functools.partial(steps.predict_step, model=model, task=task))
    state = steps.TrainState(
        step=0,
        params=variables.pop("params"),
        model_state=variables,
        opt_state=(),
    )
    arrays = dataset.eval_splits["test"]
    mesh = parallel.make_mesh(config.get("mesh") or {})
    predictions = evaluation.predictions_of_split(
        predict, parallel.put_replicated(state, mesh), arrays, config.eval_batch_size, mesh
    )
    return arrays, predictions


def test_exported_models_run_without_the_repository_and_match_the_trainer(exported, tmp_path):
    jobs = []
    for task_name, (config, root, arrays, _) in exported.items():
        signature = json.loads((root / "model" / "signature.json").read_text())
        summary = json.loads((root / "run" / "summary.json").read_text())
        exported_params = summary.get("ema_params_sha256", summary["params_sha256"])
        assert signature["params_sha256"] == exported_params
        assert ("ema_params_sha256" in summary) == (task_name == "image_classification")
        assert signature["platforms"] == ["cpu", "cuda", "tpu"]
        inputs = _eval_inputs(task_name, config, arrays)
        np.savez(tmp_path / f"{task_name}.npz", **inputs)
        outputs = tmp_path / f"{task_name}-out.npz"
        jobs.append(f"{root / 'model'},{tmp_path / f'{task_name}.npz'},"
                    f"{config.eval_batch_size},{outputs}")  # fmt: skip
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, REPO_ROOT, *jobs],
        check=True, cwd=tmp_path, env=environment, timeout=300,
    )  # fmt: skip
    for task_name, (_, _, _, expected) in exported.items():
        with np.load(tmp_path / f"{task_name}-out.npz") as outputs:
            if task_name == "regression":
                np.testing.assert_allclose(outputs["value"], expected, rtol=1e-6, atol=1e-6)
            elif task_name == "image_classification":
                np.testing.assert_array_equal(outputs["class"], expected.argmax(-1))
            else:
                np.testing.assert_array_equal(outputs["tokens"], expected)


def _eval_inputs(task_name, config, arrays):
    if task_name == "seq2seq":
        penalty = np.full(len(arrays["inputs"]), config.decode.length_penalty, np.float32)
        return {"inputs": arrays["inputs"], "length_penalty": penalty}
    key = "features" if task_name == "regression" else "inputs"
    return {key: arrays[key]}


def _raw_test_inputs(task_name, config):
    """What a user has: the test split before the trainer's preprocessing."""
    if task_name == "seq2seq":
        from experiments.seq2seq import scan

        return [source for source, _ in scan.load_split(config.scan_split)["test"]]
    if task_name == "regression":
        from experiments.regression.task import BUILDERS

        builder, key = BUILDERS[config.dataset], "features"
    else:
        from experiments.image_classification.task import DATASETS

        builder, key = DATASETS[config.dataset][0], "signal"
    return data.load_tfds_arrays(config.dataset, "test", config.data_dir, builder)[key]


def test_predict_reads_raw_inputs_like_the_trainer_and_names_bad_ones(exported, tmp_path):
    for task_name, (config, root, _, expected) in exported.items():
        raw = _raw_test_inputs(task_name, config)
        if task_name == "regression":
            rows = [",".join(repr(float(v)) for v in row) for row in raw]
            rows.insert(3, "1.0,2.0")  # a wrong feature count
            (tmp_path / "rows.csv").write_text("\n".join(["age,sex,x", *rows]) + "\n")
            sources = [str(tmp_path / "rows.csv")]
        elif task_name == "image_classification":
            np.save(tmp_path / "batch.npy", raw)
            np.save(tmp_path / "bad.npy", raw[0, :30])
            sources = [str(tmp_path / "batch.npy"), str(tmp_path / "bad.npy")]
        else:
            lines = "\n".join(raw[:100]).encode() + b"\n\xff\xfe bad\n"
            (tmp_path / "source.txt").write_bytes(lines)
            sources = [str(tmp_path / "source.txt")]
        predictor = inference.Predictor(str(root / "model"), get_task=experiments.get_task)
        output_path = tmp_path / f"{task_name}.jsonl"
        with open(output_path, "w") as output:
            failures = predict.predict_sources(predictor, sources, output)
        assert failures == 1
        records = [json.loads(line) for line in output_path.read_text().splitlines()]
        errors = [r for r in records if "error" in r]
        answers = [r for r in records if "error" not in r]
        if task_name == "regression":
            assert "line 5" in errors[0]["error"] and "expected 10 numbers" in errors[0]["error"]
            values = [r["value"] for r in answers]
            np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-6)
        elif task_name == "image_classification":
            assert "bad.npy" in errors[0]["error"] and "shape [40] " in errors[0]["error"]
            assert [r["class"] for r in answers] == expected.argmax(-1).tolist()
            assert len(answers[0]["top_k"]) == 3
        else:
            assert "line 101 is not UTF-8" in errors[0]["error"]
            assert [r["tokens"] for r in answers] == [_cut(row) for row in expected[:100]]


def _cut(row):
    row = row.tolist()
    return row[: row.index(2) + 1] if 2 in row else row


def _post(port, body: bytes, timeout=60):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _post_in_two_parts(port, body: bytes, second_part_may_go, timeout=60):
    """Like `_post`, but the second half of the body waits for the event `second_part_may_go`."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest("POST", "/v1/predict")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body[: len(body) // 2])
        second_part_may_go.wait(timeout)
        connection.send(body[len(body) // 2 :])
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _free_port() -> int:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return server.getsockname()[1]


def test_server_batches_concurrent_clients_rejects_bad_requests_and_drains_on_sigterm(
    exported, tmp_path
):
    import signal
    import threading
    import urllib.request

    config, root, _, _ = exported["image_classification"]
    signals = _raw_test_inputs("image_classification", config)[:50]
    predictor = inference.Predictor(str(root / "model"), get_task=experiments.get_task)
    expected = predictor.predict([predictor.codec.parse(s.tolist()) for s in signals])
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"--model={root / 'model'}",
         f"--port={port}", "--max_queue=20000",
         f"--max_request_bytes={2**24}"],  # the large requests below
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.5)
        bad_bodies = [b"{not json", b'{"instances": [[1, 2, 3]]}', b'{"instances": ["x"]}']
        failures = []

        def client(number):
            for request in range(50):
                if (number + request) % 10 == 0:
                    status, answer = _post(port, bad_bodies[request % 3])
                    if status != 400 or not answer["error"].endswith("."):
                        failures.append((status, answer))
                    continue
                body = json.dumps({"instances": [signals[request].tolist()]}).encode()
                status, answer = _post(port, body)
                got, want = answer["predictions"][0], expected[request]
                if (
                    status != 200
                    or got["class"] != want["class"]
                    or got["top_k"][0]["probability"]
                    != pytest.approx(want["top_k"][0]["probability"], rel=1e-5)
                ):
                    failures.append((status, got, want))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not failures, failures[:3]

        # SIGTERM while large requests are in flight (thousands of examples each, so they
        # are still being answered) and one whose body is still arriving: each is answered,
        # then the server exits.
        answers, sent_term_event = [], threading.Event()
        big = json.dumps({"instances": [s.tolist() for s in signals] * 80}).encode()
        senders = [
            threading.Thread(target=lambda: answers.append((_post(port, big), time.time())))
            for _ in range(3)
        ]
        senders.append(
            threading.Thread(
                target=lambda: answers.append(
                    (_post_in_two_parts(port, big, sent_term_event), time.time())
                )
            )
        )
        for sender in senders:
            sender.start()
        give_up = time.time() + 120
        while True:  # until the server holds the 4 requests (or has answered some already)
            answered = len(answers)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                if answered + json.loads(reply.read())["requests_in_flight"] >= 4:
                    break
            assert time.time() < give_up, "the large requests never reached the server"
            time.sleep(0.05)
        sent_term = time.time()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server has begun stopping before the rest of the body comes
        sent_term_event.set()
        for sender in senders:
            sender.join(timeout=120)
        assert server.wait(timeout=60) == 0
        assert [status for (status, _), _ in answers] == [200] * 4, answers
        assert all(len(answer["predictions"]) == 80 * len(signals) for (_, answer), _ in answers)
        assert max(when for _, when in answers) > sent_term  # some were in flight
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def test_server_answers_413_for_more_instances_than_its_queue_or_large_bodies_and_400_for_none(
    exported,
):
    from aiohttp.test_utils import TestClient, TestServer

    _, root, _, _ = exported["regression"]
    predictor = inference.Predictor(str(root / "model"), get_task=experiments.get_task)

    async def scenario():
        application = serve.make_app(predictor, max_queue=2, max_bytes=2000)
        async with TestClient(TestServer(application)) as client:
            three = {"instances": [[0.0] * 10] * 3}  # never fits: 413, not 503 "retry"
            response = await client.post("/v1/predict", json=three)
            assert response.status == 413, await response.text()
            assert (await response.json())["error"] == (
                "The request has 3 instances but this server queues at most 2 (--max_queue); "
                "send at most 2 per request."
            )
            response = await client.post("/v1/predict", json={"instances": []})
            assert response.status == 400
            assert "instances list is empty" in (await response.json())["error"]
            two = {"instances": [[0.0] * 10] * 2}
            response = await client.post("/v1/predict", json=two)
            assert response.status == 200
            assert (await response.json())["predictions"] == predictor.predict(
                [predictor.codec.parse([0.0] * 10)] * 2
            )
            response = await client.post("/v1/predict", data=b"[" + b"0," * 2000 + b"0]")
            assert response.status == 413
            assert "(--max_request_bytes)" in (await response.json())["error"]
            response = await client.post("/v1/predict", json={"instances": [[True] * 10]})
            assert response.status == 400
            assert "not a number" in (await response.json())["error"]
            response = await client.get("/v1/model")
            assert (await response.json())["params_sha256"] == predictor.signature["params_sha256"]

    asyncio.run(scenario())


# Bad input on the deploy paths (export, predict, serve, report): one sentence each.


@pytest.fixture(scope="module")
def models(exported):
    """Per task: (config, run dir, exported model dir) of the `exported` runs."""
    return {
        task: (config, root / "run", root / "model")
        for task, (config, root, *_) in exported.items()
    }


def _signals(config, count: int) -> np.ndarray:
    from experiments.image_classification.task import DATASETS

    builder = DATASETS[config.dataset][0]
    from research.core import data

    return data.load_tfds_arrays(config.dataset, "test", config.data_dir, builder)["signal"][:count]


def _one_line(result, *parts: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_predict_names_empty_npy_files_and_takes_the_shape_the_signature_shows(models, tmp_path):
    config, _, model = models["image_classification"]
    signals = _signals(config, 3)  # [3, 40], the raw test signals
    signature = json.loads((model / "signature.json").read_text())
    assert signature["functions"]["predict"]["inputs"][0]["shape"] == ["batch", 40, 1]
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "no_rows.npy", np.zeros((0, 40)))
    np.save(tmp_path / "batch.npy", signals[:, :, None])  # [3, 40, 1]
    np.save(tmp_path / "one.npy", signals[0][:, None])  # [40, 1]
    sources = [tmp_path / name for name in ("empty.npy", "batch.npy", "no_rows.npy", "one.npy")]
    result = run_module("experiments.predict", f"--model={model}", *map(str, sources))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("input") for r in records] == [str(sources[0]), None, None, None,
                                                 str(sources[2]), None]  # fmt: skip
    assert records[0]["error"].startswith(f"{sources[0]} cannot be read (No data left in file)")
    assert records[4]["error"].startswith(f"{sources[2]} holds no values")

    predictor = inference.Predictor(str(model), get_task=experiments.get_task)
    expected = predictor.predict([predictor.codec.parse(row.tolist()) for row in signals])
    answers = [records[1], records[2], records[3], records[5]]
    assert [a["class"] for a in answers] == [e["class"] for e in expected] + [expected[0]["class"]]
    as_signature = predictor.codec.parse(signals[0][:, None].tolist())  # JSON [40, 1]
    assert predictor.predict([as_signature])[0]["class"] == expected[0]["class"]


def test_translations_say_how_many_source_tokens_were_cut_or_unknown(models):
    config, _, model = models["seq2seq"]
    predictor = inference.Predictor(str(model), get_task=experiments.get_task)
    long = " and ".join(["jump twice"] * 30)  # far more words than max_input_length
    plain, cut, unknown = predictor.predict(
        [predictor.codec.parse(text) for text in ("jump twice", long, "jump blorp twice")]
    )
    assert "source_tokens_cut" not in plain and "unknown_source_tokens" not in plain
    assert cut["source_tokens_cut"] == len(long.split()) - (config.max_input_length - 1)
    assert unknown["unknown_source_tokens"] == 1 and "source_tokens_cut" not in unknown


def test_export_refuses_a_file_or_read_only_folder_in_one_sentence(models, tmp_path):
    _, run, _ = models["image_classification"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = run_module("experiments.export", f"--workdir={run}", f"--out={a_file}")
    _one_line(result, f"--out={a_file} is a file")
    result = run_module("experiments.export", f"--workdir={run}", "--out=/sys/exported")
    _one_line(result, "--out=/sys/exported cannot be written (/sys: ")


def test_export_reads_one_fixed_step_while_the_run_rotates_its_checkpoints(
    models, tmp_path, monkeypatch
):
    from research.core import steps

    _, run, _ = models["image_classification"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    chosen = max(int(name) for name in os.listdir(copy / "checkpoints") if name.isdigit())
    create = steps.create_train_state

    def rotate_then_create(*args, **kwargs):  # the run saves a newer one, deletes the chosen
        shutil.copytree(copy / "checkpoints" / str(chosen), copy / "checkpoints" / "99")
        shutil.rmtree(copy / "checkpoints" / str(chosen))
        return create(*args, **kwargs)

    monkeypatch.setattr(steps, "create_train_state", rotate_then_create)
    signature = export.export_run(str(copy), str(tmp_path / "model"), get_task=experiments.get_task)
    summary = json.loads((run / "summary.json").read_text())
    assert signature["step"] == chosen
    assert signature["params_sha256"] == summary["ema_params_sha256"]  # the run's RUNS entry


def test_a_damaged_model_folder_is_one_sentence(models, tmp_path):
    _, _, model = models["image_classification"]
    missing = tmp_path / "missing"
    shutil.copytree(model, missing)
    (missing / "predict.stablehlo").unlink()
    result = run_module("experiments.predict", f"--model={missing}", "-")
    _one_line(result, f"{missing} is not a complete exported model (predict.stablehlo is missing)")
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    text = (damaged / "signature.json").read_text()
    (damaged / "signature.json").write_text(text[: len(text) // 2])
    result = run_module("experiments.predict", f"--model={damaged}", "-")
    _one_line(result, f"{damaged / 'signature.json'} is damaged (not JSON")


def test_report_out_on_a_file_is_one_sentence(models, tmp_path):
    _, run, _ = models["image_classification"]
    a_file = tmp_path / "report.html"
    a_file.write_text("x")
    result = run_module("research.compare.report", str(run), f"--out={a_file}")
    _one_line(result, f"--out={a_file} is a file")


def test_server_refuses_a_bad_or_busy_port_and_stops_cleanly_on_ctrl_c_at_start(models):
    _, _, model = models["image_classification"]
    result = run_module("experiments.serve", f"--model={model}", "--port=70000")
    _one_line(result, "--port=70000 is not a TCP port; pass one from 1 to 65535.")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_module("experiments.serve", f"--model={model}", f"--port={port}")
    line = _one_line(result, f"cannot listen on 127.0.0.1:{port} (")
    assert line.endswith("stop what uses that port or pass another --port.")

    server = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"--model={model}",
         f"--port={_free_port()}"],
        cwd=REPO_ROOT, env=subprocess_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout.readline().startswith("Loading the model")
        server.send_signal(signal.SIGINT)  # while it loads and compiles
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "Stopped before the server started listening."


def test_ctrl_c_that_lands_in_a_garbage_collection_hook_prints_no_traceback():
    """CI once hit this: Ctrl-C arrived inside JAX's gc callback, which Python ignores."""
    code = """
import gc, sys
from research.deploy import serve
sys.unraisablehook = serve._quiet_ignored_interrupt
def hook(phase, info):
    raise KeyboardInterrupt
def fails(phase, info):
    raise ValueError("still shown")
gc.callbacks.append(hook)
gc.collect()
gc.callbacks[:] = [fails]
gc.collect()
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_environment(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "KeyboardInterrupt" not in result.stderr
    assert "ValueError: still shown" in result.stderr
