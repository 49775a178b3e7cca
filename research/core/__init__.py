"""The training core: the config, the Task contract, batches and training sources, jitted
steps, optimizers, evaluation and the trainer loop that runs every experiment, and the text
tools every text task shares (`text`)."""
