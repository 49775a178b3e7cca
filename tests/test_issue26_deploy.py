"""Issue 26, items 6, 7 and 8 for export, predict, serve and report: each bad input is one
sentence and a non-zero exit, one bad row loses no other answer, inputs the signature shows are
accepted, and a translation says what parsing cut or did not know."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from research import export, inference, serve
from tests import helpers
from tests.helpers import REPO_ROOT, run_module, subprocess_environment

CONFIGS = os.path.join(REPO_ROOT, "experiments")
TINY = {"num_train_steps": 4, "eval_every_steps": 4, "log_every_steps": 4}
TINY |= {"checkpoint_every_steps": 2, "warmup_steps": 1}
RUNS = {
    "image_classification": (
        "image_classification/configs/mnist1d_cnn.py",
        {"eval_batch_size": 256, "model.features": (4,), "model.dense_sizes": ()},
    ),
    "seq2seq": (
        "seq2seq/configs/scan_transformer.py",
        {
            "batch_size": 16,
            "eval_batch_size": 512,
            "scan_split": "addprim_turn_left",
            "decode.max_length": 8,
            "model.num_layers": 1,
            "model.width": 16,
            "model.num_heads": 2,
            "model.mlp_width": 16,
        },
    ),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, data_dir):
    """Per task: (config, run dir, exported model dir), each a tiny run."""
    trained = helpers.train_and_export(tmp_path_factory, RUNS, CONFIGS, **TINY, data_dir=data_dir)
    return {
        task_name: (config, root / "run", root / "model")
        for task_name, (config, root) in trained.items()
    }


def _signals(config, count: int) -> np.ndarray:
    from experiments.image_classification.task import DATASETS

    builder = DATASETS[config.dataset][0]
    from research import data

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
    result = run_module("research.predict", f"--model={model}", *map(str, sources))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("input") for r in records] == [str(sources[0]), None, None, None,
                                                 str(sources[2]), None]  # fmt: skip
    assert records[0]["error"].startswith(f"{sources[0]} cannot be read (No data left in file)")
    assert records[4]["error"].startswith(f"{sources[2]} holds no values")

    predictor = inference.Predictor(str(model))
    expected = predictor.predict([predictor.codec.parse(row.tolist()) for row in signals])
    answers = [records[1], records[2], records[3], records[5]]
    assert [a["class"] for a in answers] == [e["class"] for e in expected] + [expected[0]["class"]]
    as_signature = predictor.codec.parse(signals[0][:, None].tolist())  # JSON [40, 1]
    assert predictor.predict([as_signature])[0]["class"] == expected[0]["class"]


def test_translations_say_how_many_source_tokens_were_cut_or_unknown(models):
    config, _, model = models["seq2seq"]
    predictor = inference.Predictor(str(model))
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
    result = run_module("research.export", f"--workdir={run}", f"--out={a_file}")
    _one_line(result, f"--out={a_file} is a file")
    result = run_module("research.export", f"--workdir={run}", "--out=/sys/exported")
    _one_line(result, "--out=/sys/exported cannot be written (/sys: ")


def test_export_reads_one_fixed_step_while_the_run_rotates_its_checkpoints(
    models, tmp_path, monkeypatch
):
    from research import steps

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
    signature = export.export_run(str(copy), str(tmp_path / "model"))
    summary = json.loads((run / "summary.json").read_text())
    assert signature["step"] == chosen
    assert signature["params_sha256"] == summary["params_sha256"]


def test_a_damaged_model_folder_is_one_sentence(models, tmp_path):
    _, _, model = models["image_classification"]
    missing = tmp_path / "missing"
    shutil.copytree(model, missing)
    (missing / "predict.stablehlo").unlink()
    result = run_module("research.predict", f"--model={missing}", "-")
    _one_line(result, f"{missing} is not a complete exported model (predict.stablehlo is missing)")
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    text = (damaged / "signature.json").read_text()
    (damaged / "signature.json").write_text(text[: len(text) // 2])
    result = run_module("research.predict", f"--model={damaged}", "-")
    _one_line(result, f"{damaged / 'signature.json'} is damaged (not JSON")


def test_report_out_on_a_file_is_one_sentence(models, tmp_path):
    _, run, _ = models["image_classification"]
    a_file = tmp_path / "report.html"
    a_file.write_text("x")
    result = run_module("research.report", str(run), f"--out={a_file}")
    _one_line(result, f"--out={a_file} is a file")


def test_server_answers_413_for_more_instances_than_its_queue_and_names_an_empty_list(models):
    from aiohttp.test_utils import TestClient, TestServer

    config, _, model = models["image_classification"]
    predictor = inference.Predictor(str(model))
    signal_ = _signals(config, 1)[0].tolist()

    async def scenario():
        application = serve.make_app(predictor, max_queue=2, max_bytes=20000)
        async with TestClient(TestServer(application)) as client:
            response = await client.post("/v1/predict", json={"instances": [signal_] * 3})
            assert response.status == 413
            assert (await response.json())["error"] == (
                "The request has 3 instances but this server queues at most 2 (--max_queue); "
                "send at most 2 per request."
            )
            response = await client.post("/v1/predict", data=b"[" + b"0," * 20000 + b"0]")
            assert response.status == 413
            assert "limit of 20000 bytes (--max_request_bytes)" in (await response.json())["error"]
            response = await client.post("/v1/predict", json={"instances": []})
            assert response.status == 400
            assert "instances list is empty" in (await response.json())["error"]

    asyncio.run(scenario())


def _free_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return server.getsockname()[1]


def test_server_refuses_a_bad_or_busy_port_and_stops_cleanly_on_ctrl_c_at_start(models):
    _, _, model = models["image_classification"]
    result = run_module("research.serve", f"--model={model}", "--port=70000")
    _one_line(result, "--port=70000 is not a TCP port; pass one from 1 to 65535.")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_module("research.serve", f"--model={model}", f"--port={port}")
    line = _one_line(result, f"cannot listen on 127.0.0.1:{port} (")
    assert line.endswith("stop what uses that port or pass another --port.")

    server = subprocess.Popen(
        [sys.executable, "-m", "research.serve", f"--model={model}", f"--port={_free_port()}"],
        cwd=REPO_ROOT, env=subprocess_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout.readline().startswith("Loading the model")
        time.sleep(0.5)  # loading or compiling
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "Stopped before the server started listening."
