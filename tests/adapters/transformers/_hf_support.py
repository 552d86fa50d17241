"""Helpers of the Hugging Face tests: offline environment, a network guard, a tiny model.

Imported before ``transformers``: the environment variables below are read at its import.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_HOME = Path(tempfile.mkdtemp(prefix="eventhooks-hf-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in ("HF_HOME", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ[_name] = str(_HOME / _name.lower())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DISABLE_MLFLOW_INTEGRATION"] = "TRUE"
os.environ["WANDB_DISABLED"] = "true"

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from eventhooks import EventBus  # noqa: E402
from eventhooks.adapters.transformers import TransformersCallback  # noqa: E402


class Tiny(nn.Module):
    """A linear classifier whose ``forward`` returns ``{"loss", "logits"}``, as HF models do.

    ``fail_at``: the forward call (counted from 1) that raises ``Boom``.
    """

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise Boom(f"forward failed at call {self.calls}")
        logits = self.linear(x)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Boom(RuntimeError):
    """The model's own failure."""


class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """``n`` random examples of 4 features and a 0/1 label."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def make_trainer(
    out: Path,
    bus: EventBus | None = None,
    *,
    epochs: int = 2,
    n_train: int = 20,
    model: nn.Module | None = None,
    train_data: Data | bool | None = True,
    **args: Any,
) -> Trainer:
    """A Trainer of :class:`Tiny` on CPU: batches of 4, gradient accumulation 2, evaluation and
    a checkpoint each epoch; with a :class:`TransformersCallback` for ``bus`` if given."""
    settings: dict[str, Any] = {
        "output_dir": str(out), "report_to": [], "use_cpu": True,
        "num_train_epochs": epochs, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 2,
        "eval_strategy": "epoch", "save_strategy": "epoch", "learning_rate": 0.1,
        "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0,
    }  # fmt: skip
    settings.update(args)
    dataset = Data(n_train) if train_data is True else (train_data or None)
    return Trainer(
        model=model or Tiny(),
        args=TrainingArguments(**settings),
        train_dataset=dataset,
        eval_dataset=Data(8, seed=1),
        callbacks=[TransformersCallback(bus)] if bus is not None else None,
    )
