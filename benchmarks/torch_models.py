"""PyTorch twins of the benchmarked models and optimizers, built from the same configs.

Each twin has the architecture, parameter shapes, dropout and float32 dtype of the Flax
model, and the optimizer, schedule, weight-decay mask and gradient clipping of
`research.core.optimizers.create_optimizer`, so a step does the same arithmetic in PyTorch's
idiomatic form (NCHW convolutions, `nn.Transformer`).
"""

import itertools
import math
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD_ID, BOS_ID = 0, 1  # as experiments/seq2seq/decoding.py


class RegressionMLP(nn.Module):
    """`experiments/regression/models.py`: ReLU layers, one output scaled to the targets."""

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], mean: float, std: float):
        super().__init__()
        sizes = [in_features, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.output = nn.Linear(sizes[-1], 1)
        self.mean, self.std = mean, std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            features = F.relu(layer(features))
        return self.mean + self.std * self.output(features)[:, 0]


class CNN(nn.Module):
    """`models/cnn.py`: convolutions (SAME padding) each with pooling, then dense layers.

    Inputs `[batch, channels, *spatial]` (NCL or NCHW, PyTorch's layout).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, model: dict):
        super().__init__()
        *spatial, channels = input_shape  # the Flax model's channels-last shape
        dims = len(spatial)
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.pool_size = tuple(model.get("pool_size", (2,) * dims))
        self.pool = {
            (1, "max"): F.max_pool1d,
            (1, "avg"): F.avg_pool1d,
            (2, "max"): F.max_pool2d,
            (2, "avg"): F.avg_pool2d,
        }[dims, model.get("pooling", "max")]
        strides = tuple(model.get("strides", (1,) * dims))
        assert all(stride == 1 for stride in strides), "padding='same' needs stride 1"
        self.convs = nn.ModuleList()
        for features in model["features"]:
            self.convs.append(conv(channels, features, tuple(model["kernel_size"]), padding="same"))
            channels = features
            if self.pool_size:
                spatial = [size // pool for size, pool in zip(spatial, self.pool_size, strict=True)]
        sizes = [channels * math.prod(spatial), *model.get("dense_sizes", ())]
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.output = nn.Linear(sizes[-1], num_classes)
        self.dropout = nn.Dropout(model.get("dropout_rate", 0.0))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for conv in self.convs:
            hidden = F.relu(conv(hidden))
            if self.pool_size:
                hidden = self.pool(hidden, self.pool_size)
        hidden = hidden.flatten(1)
        for layer in self.dense:
            hidden = F.relu(layer(self.dropout(hidden)))
        return self.output(self.dropout(hidden))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, features, 3, stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(features)  # PyTorch's momentum 0.1 is Flax's 0.9
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(features)
        self.shortcut = nn.Identity()
        if in_channels != features or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, features, 1, stride, bias=False), nn.BatchNorm2d(features)
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.norm1(self.conv1(inputs)))
        return F.relu(self.norm2(self.conv2(hidden)) + self.shortcut(inputs))


class ResNet(nn.Module):
    """`models/resnet.py`: CIFAR stem, basic blocks, global average pooling."""

    def __init__(self, num_classes: int, stage_sizes: Sequence[int], width: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, channels = [], width
        for stage, num_blocks in enumerate(stage_sizes):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width * 2**stage, stride))
                channels = width * 2**stage
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.output(self.blocks(self.stem(images)).mean(dim=(2, 3)))


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """`[length, width]` as `sinusoidal_position_embeddings` of the Flax model."""
    half = width // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half) / half)
    angles = torch.arange(length)[:, None].float() * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Transformer(nn.Module):
    """`seq2seq/models/transformer.py` (pre-LN, sinusoidal positions) on `nn.Transformer`."""

    def __init__(self, input_vocab_size: int, target_vocab_size: int, model: dict):
        super().__init__()
        width = model["width"]
        assert model.get("positions", "sinusoidal") == "sinusoidal"
        self.width = width
        self.target_embedding = nn.Embedding(target_vocab_size, width)
        self.share = model.get("share_embeddings", False)
        self.input_embedding = (
            self.target_embedding if self.share else nn.Embedding(input_vocab_size, width)
        )
        for table in {self.input_embedding, self.target_embedding}:
            nn.init.normal_(table.weight, std=width**-0.5)
        self.output_projection = None if self.share else nn.Linear(width, target_vocab_size)
        self.register_buffer("positions", sinusoidal_positions(model["max_length"], width))
        self.transformer = nn.Transformer(
            d_model=width,
            nhead=model["num_heads"],
            num_encoder_layers=model["num_layers"],
            num_decoder_layers=model["num_layers"],
            dim_feedforward=model["mlp_width"],
            dropout=model["dropout_rate"],
            batch_first=True,
            norm_first=model.get("pre_layer_norm", True),
        )
        self.dropout = nn.Dropout(model["dropout_rate"])

    def _embed(self, table: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        hidden = table(tokens) * math.sqrt(self.width) + self.positions[: tokens.shape[1]]
        return self.dropout(hidden)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: token ids `[batch, length]` -> logits `[batch, length, vocab]`."""
        decoder_inputs = F.pad(targets, (1, 0), value=BOS_ID)[:, :-1]
        padding = inputs == PAD_ID
        causal = nn.Transformer.generate_square_subsequent_mask(targets.shape[1])
        hidden = self.transformer(
            self._embed(self.input_embedding, inputs),
            self._embed(self.target_embedding, decoder_inputs),
            tgt_mask=causal,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
            tgt_is_causal=True,
        )
        if self.share:
            return F.linear(hidden, self.target_embedding.weight)
        return self.output_projection(hidden)


def create_optimizer(model: nn.Module, config: ml_collections.ConfigDict):
    """(optimizer, scheduler) as `research.core.optimizers.create_optimizer` builds them with optax.

    Weight decay applies to tensors of two or more dimensions only (the `_is_matrix` mask):
    coupled (added to the gradient) for SGD-family optimizers, decoupled for adamw.
    """
    decay_rate = config.weight_decay
    matrices = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": matrices, "weight_decay": decay_rate}, {"params": others}]
    name, rate = config.optimizer, config.learning_rate
    if name == "adam":  # PyTorch's Adam weight_decay is coupled, as optax's chain here
        optimizer = torch.optim.Adam(groups, lr=rate, weight_decay=0.0)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=rate, weight_decay=0.0)
    elif name in ("momentum", "nesterov"):
        optimizer = torch.optim.SGD(
            groups,
            lr=rate,
            momentum=config.momentum,
            nesterov=name == "nesterov",
            weight_decay=0.0,
        )
    else:
        assert name == "sgd", name
        optimizer = torch.optim.SGD(groups, lr=rate, weight_decay=0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule_factor(config))


def _schedule_factor(config: ml_collections.ConfigDict) -> Callable[[int], float]:
    """The learning rate at a step over the peak rate (constant or warmup_cosine)."""
    schedule = config.schedule
    warmup, total = config.warmup_steps, config.num_train_steps
    assert schedule in ("constant", "warmup_cosine"), schedule

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def create_model(config: ml_collections.ConfigDict, info: dict, batch: dict) -> nn.Module:
    """The twin of the task's `create_model(config, info)`; the JAX task's numpy `batch` gives the
    input shapes (channels last)."""
    settings = config.model.to_dict()
    if config.task == "regression":
        features = batch["features"].shape[1]
        return RegressionMLP(
            features, settings["hidden_sizes"], info["target_mean"], info["target_std"]
        )
    if config.task == "image_classification":
        name = settings.pop("name")
        if name == "cnn":
            return CNN(batch["inputs"].shape[1:], info["num_classes"], settings)
        assert name == "resnet", name
        return ResNet(info["num_classes"], settings["stage_sizes"], settings["width"])
    assert config.task == "seq2seq" and settings.pop("name") == "transformer"
    return Transformer(info["input_vocab_size"], info["target_vocab_size"], settings)


def _tensors(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]) -> dict:
    """A numpy batch of the JAX task as PyTorch tensors, images moved to channels-first."""
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}
    if config.task == "image_classification":
        images = tensors["inputs"]
        tensors["inputs"] = images.movedim(-1, 1).contiguous()
        tensors["label"] = tensors["label"].long()
    if config.task == "seq2seq":
        tensors = {key: value.long() for key, value in tensors.items()}
    return tensors


def _loss(config: ml_collections.ConfigDict, model: nn.Module, batch: dict) -> torch.Tensor:
    """The task's training loss: the weighted mean over the batch, as `research.core.steps`."""
    if config.task == "regression":
        return F.mse_loss(model(batch["features"]), batch["target"])
    if config.task == "image_classification":
        return F.cross_entropy(model(batch["inputs"]), batch["label"])
    logits = model(batch["inputs"], batch["targets"])
    return F.cross_entropy(
        logits.flatten(0, 1),
        batch["targets"].flatten(),
        ignore_index=PAD_ID,
        label_smoothing=config.get("label_smoothing", 0.0),
    )


def create_train_step(
    config: ml_collections.ConfigDict, info: dict, batch: dict[str, np.ndarray]
) -> tuple[Callable[[], torch.Tensor], int]:
    """(a function running one training step on `batch`: forward, loss, backward, update;
    the model's number of parameters)."""
    torch.manual_seed(config.seed)
    tensors = _tensors(config, batch)
    model = create_model(config, info, batch)
    model.train()
    optimizer, scheduler = create_optimizer(model, config)
    clip_norm = config.grad_clip_norm

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(config, model, tensors)
        loss.backward()
        if clip_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        scheduler.step()
        return loss

    return step, sum(parameter.numel() for parameter in model.parameters())
