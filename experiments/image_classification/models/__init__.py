"""Image classification models, one family per module; `config.model.name` picks one."""
