"""Prints continuations of a prompt by a trained language model: the run's newest checkpoint.

python -m experiments.language_modeling.sample --workdir=RUN --prompt="And God said"
    [--num_samples=3 --max_new_tokens=200 --temperature=0.8 --top_k=0 --top_p=0.95 --seed=0]
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

from experiments.language_modeling import generation, task, tokenizers
from research.core import steps
from research.deploy import export
from research.errors import UserError
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib


def load_run(workdir: str):
    """(model, params, tokenizer) of the newest checkpoint of a language-modeling run."""
    config = workdir_lib.read_config(workdir)
    if config.task != "language_modeling":
        raise workdir_lib.WorkdirError(
            f"{workdir} holds a '{config.task}' run; pass the workdir of a language_modeling run."
        )
    artifacts = os.path.join(workdir, workdir_lib.ARTIFACTS_DIR, task.TOKENIZER_DIR)
    tokenizer = tokenizers.load_tokenizer(artifacts)
    model = task.create_model(config, {"vocab_size": tokenizer.vocab_size})
    tokens = jnp.zeros((1, 1), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
    like = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                            opt_state=())  # fmt: skip
    directory = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    state, _ = checkpoints.restore_model_from(directory, like)
    return model, state.params, tokenizer


def check_arguments(arguments: argparse.Namespace) -> None:
    """Refuses settings that sampling would ignore or break on, before the run is loaded."""
    for name in ("num_samples", "max_new_tokens"):
        if getattr(arguments, name) < 1:
            raise UserError(f"--{name} must be 1 or more, not {getattr(arguments, name)}.")
    try:
        generation.check_sampling(
            arguments.temperature, arguments.top_k, arguments.top_p, arguments.seed, prefix="--"
        )
    except generation.SamplingError as error:
        raise generation.SamplingError(f"{error}.") from None


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="A language_modeling run's workdir.")
    parser.add_argument("--prompt", default="", help="Text to continue (may be empty).")
    parser.add_argument("--num_samples", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy.")
    parser.add_argument("--top_k", type=int, default=0, help="0: no top-k cut.")
    parser.add_argument("--top_p", type=float, default=1.0, help="1.0: no nucleus cut.")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    export.quiet_logs()
    try:
        check_arguments(arguments)
        model, params, tokenizer = load_run(arguments.workdir)
        texts = task.sample(
            model, params, tokenizer, arguments.prompt,
            num_samples=arguments.num_samples, max_new_tokens=arguments.max_new_tokens,
            sampling=generation.Sampling(arguments.temperature, arguments.top_k, arguments.top_p),
            seed=arguments.seed,
        )  # fmt: skip
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for number, text in enumerate(texts):
        print(f"--- sample {number} (seed {arguments.seed})\n{arguments.prompt}{text}")
    return texts


if __name__ == "__main__":
    main()
