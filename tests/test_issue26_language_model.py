"""Issue 26, items 5, 7, 8 and 9 for language models: sampling settings are checked wherever
they are accepted, one bad prompt loses no other answer, unknown tokens are counted, and the
commands that read a run print no library logs."""

import asyncio
import json
import os

import pytest
from helpers import load_config, run_experiment, run_module
from test_language_modeling import CONFIGS, SHORT_RUN, TINY_TRANSFORMER, write_text_folder

import experiments
from research.deploy import inference, serve


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    """(run, exported model, the export command's result): a tiny character Transformer."""
    root = tmp_path_factory.mktemp("language_model")
    folder = write_text_folder(root / "text")
    config = load_config(
        os.path.join(CONFIGS, "transformer_char.py"),
        data_dir=str(folder), seed=7, **SHORT_RUN, **TINY_TRANSFORMER,
    )  # fmt: skip
    run_experiment(config, root / "run")
    exported = run_module(
        "experiments.export", f"--workdir={root / 'run'}", f"--out={root / 'model'}",
        "--max_prompt_length=6", "--max_new_tokens=5",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    return root / "run", root / "model", exported


def _one_error_line(result, message: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].endswith("."), lines[0]


def test_sample_and_predict_refuse_sampling_settings_out_of_range(language_model):
    run, model, _ = language_model
    cases = {
        "--temperature=-1": "--temperature must be a finite number, 0 (greedy) or more, not -1.0",
        "--temperature=nan": "--temperature must be a finite number, 0 (greedy) or more, not nan",
        "--top_p=1.5": "--top_p must be in (0, 1] (1 keeps every token), not 1.5",
        f"--seed={2**31}": f"--seed must be within -2147483648 and 2147483647, not {2**31}",
    }
    for flag, message in cases.items():
        result = run_module(
            "experiments.language_modeling.sample", f"--workdir={run}", "--prompt=the", flag
        )
        _one_error_line(result, message)
        assert "--- sample" not in result.stdout  # no prompt printed as if sampled
    cases = {
        "--temperature=inf": "--temperature must be a finite number, 0 (greedy) or more, not inf",
        f"--top_k={2**31}": f"--top_k must be a whole number from 0 (every token) to {2**31 - 1}",
    }
    for flag, message in cases.items():
        result = run_module("experiments.predict", f"--model={model}", flag, "-")
        _one_error_line(result, message)


def test_server_refuses_sampling_settings_out_of_range_with_400(language_model):
    from aiohttp.test_utils import TestClient, TestServer

    _, model, _ = language_model
    predictor = inference.Predictor(str(model), get_task=experiments.get_task)
    bodies = {
        b'{"instances": [{"prompt": "the", "temperature": NaN}]}': "temperature must be a finite",
        b'{"instances": [{"prompt": "the", "seed": 2147483648}]}': "seed must be within",
        b'{"instances": [{"prompt": "the", "top_k": 1e10}]}': "top_k must be a whole number",
        b'{"instances": [{"prompt": "the", "top_p": 1.5}]}': "top_p must be in (0, 1]",
        b'{"instances": [{"prompt": "the", "seed": Infinity}]}': "seed must be a whole number",
    }

    async def scenario():
        async with TestClient(TestServer(serve.make_app(predictor))) as client:
            for body, message in bodies.items():
                response = await client.post("/v1/predict", data=body)
                answer = await response.json()
                assert response.status == 400, (body, answer)
                assert answer["error"].startswith("instances[0]: " + message), answer

    asyncio.run(scenario())


def test_predict_answers_every_prompt_but_an_over_long_one_and_names_its_line(
    language_model, tmp_path
):
    _, model, _ = language_model
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the\nthe dog runs in the park\na\n")
    result = run_module("experiments.predict", f"--model={model}", str(prompts))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    assert "continuation" in records[0] and "continuation" in records[2]
    assert records[1]["input"] == f"{prompts} line 2"
    assert records[1]["error"].startswith(f"{prompts} line 2: the prompt makes 25 tokens")
    assert "Traceback" not in result.stderr


def test_answers_count_prompt_tokens_unknown_to_the_tokenizer(language_model):
    _, model, _ = language_model
    predictor = inference.Predictor(str(model), get_task=experiments.get_task)
    known, unknown = predictor.predict([predictor.codec.parse(p) for p in ("the", "t€€")])
    assert "unknown_prompt_tokens" not in known
    assert unknown["unknown_prompt_tokens"] == 2


def test_export_and_sample_print_no_library_logs(language_model):
    run, _, exported = language_model
    assert exported.stdout.startswith("Exported step 4 of ")
    assert exported.stderr == ""  # no absl INFO lines, no read-only checkpoint notices
    result = run_module(
        "experiments.language_modeling.sample", f"--workdir={run}", "--prompt=the",
        "--max_new_tokens=5", "--num_samples=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("--- sample 0 (seed 0)\nthe")
