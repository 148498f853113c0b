"""The user's own case: their model (a factory, optionally a checkpoint) on their data.

Data is either an image-folder tree::

    DIR/source/<class>/*.png      the domain the model was (or will be) trained on
    DIR/target/<class>/*.png      the shifted domain (same class names)

read with Pillow (grayscale when every image is, else RGB; resized to ``image_size`` or to the
first source image's size; scaled to [0, 1]), or ``package.module:function`` returning
``(source_dataset, target_dataset)``, each a sequence of ``(image tensor (C, H, W), label)``.
Per seed the source is split 90/10 into training and held-out parts and the target 50/50 into
the adaptation pool and the test set (stratified by class). The target is one domain, reported
as the shift ``"target"``.

The model comes from ``package.module:function`` (called without arguments; it must return an
``nn.Module`` with at least one BatchNorm layer and logits of shape (N, classes)). With a
checkpoint (a state dict, or a dict holding one under ``"state_dict"``, loaded with
``weights_only=True``) it is the source model for every seed; without one it is trained on the
source data like the default benchmark's models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bnkit.errors import StudyError
from bnkit.layers.select import bn_layers
from bnkit.study.bench import Bench, BenchSpec
from bnkit.study.data import Domain, Split, rng_for
from bnkit.study.pretrain import Pretrained
from bnkit.study.user_data import from_factory, load_factory, load_folders

__all__ = ["UserBench"]


def _halves(domain: Domain, seed: int, part: str, first: float) -> tuple[Domain, Domain]:
    rng = rng_for(seed, part)
    a, b = [], []
    for label in np.unique(domain.y):
        idx = rng.permutation(np.flatnonzero(domain.y == label))
        cut = round(first * idx.size)
        a.append(idx[:cut])
        b.append(idx[cut:])
    return domain.take(rng.permutation(np.concatenate(a))), domain.take(
        rng.permutation(np.concatenate(b))
    )


class UserBench(Bench):
    """The study on the user's model and data (one target domain, no GroupNorm twin)."""

    name = "user"

    def __init__(self, spec: BenchSpec) -> None:
        super().__init__(spec)
        assert spec.user is not None
        self.user = spec.user
        if Path(self.user.data).is_dir() or ":" not in self.user.data:
            self.source, self.target_domain, self.classes = load_folders(
                self.user.data, self.user.image_size
            )
        else:
            self.source, self.target_domain, self.classes = from_factory(self.user.data)
        self._check_model()

    @property
    def norms(self) -> tuple[str, ...]:
        return ("bn",)

    def targets(self) -> list[tuple[str, int]]:
        return [("target", 0)]

    def finetune_targets(self) -> list[tuple[str, int]]:
        return [("target", 0)]

    def sweep_severity(self, shift: str) -> int:
        return 0

    def family(self, shift: str) -> str:
        return "user"

    def shots(self) -> tuple[int, ...]:
        fewest = int(np.bincount(self.split(0).target_pool.y).min())
        ks = tuple(k for k in self.config.finetune.shots if k <= fewest)
        if self.config.finetune.strategies and not ks:
            raise StudyError(
                f"the target pool has only {fewest} images of some class, fewer than every "
                f"k in {list(self.config.finetune.shots)}; lower [finetune] shots in a config file"
            )
        return ks

    def describe(self) -> dict[str, Any]:
        s = self.split(0)
        return {
            "bench": self.name,
            "data": f"{self.user.data} ({len(self.classes)} classes, images "
            f"{'×'.join(str(d) for d in self.source.x.shape[1:])})",
            "sizes": {
                "source_train": len(s.source_train),
                "source_val": len(s.source_val),
                "target_pool": len(s.target_pool),
                "target_test": len(s.target_test),
            },
            "classes": len(self.classes),
            "model": self.user.model
            + (f" with checkpoint {self.user.checkpoint}" if self.user.checkpoint else ""),
        }

    def data(self) -> Domain:
        return self.source

    def make_split(self, seed: int) -> Split:
        train, val = _halves(self.source, seed, "user-source", 0.9)
        pool, test = _halves(self.target_domain, seed, "user-target", 0.5)
        return Split(train, val, pool, test)

    def make_target(self, seed: int, shift: str, severity: int) -> tuple[Domain, Domain]:
        s = self.split(seed)
        return s.target_pool, s.target_test

    def num_classes(self) -> int:
        return len(self.classes)

    def build(self, norm: str) -> nn.Module:
        model = load_factory(self.user.model, "--model")()
        if not isinstance(model, nn.Module):
            raise StudyError(
                f"--model {self.user.model!r} returned {type(model).__name__}; it must return a "
                "torch.nn.Module"
            )
        return model

    def model_description(self, norm: str) -> dict[str, Any]:
        return {"name": f"user-{self.user.model}", "image_size": list(self.source.x.shape[1:])}

    def _check_model(self) -> None:
        model = self.build("bn")
        if not any(True for _ in bn_layers(model)):
            raise StudyError(
                f"--model {self.user.model!r} has no BatchNorm layer; bnkit study compares "
                "BatchNorm strategies, so the model needs at least one"
            )
        self._load_checkpoint(model)
        x = torch.from_numpy(self.source.x[:2])
        try:
            with torch.no_grad():
                out = model.eval()(x)
        except Exception as err:
            raise StudyError(
                f"--model {self.user.model!r} failed on a batch of shape {tuple(x.shape)}: {err}; "
                "check the image size (--image-size) and channels"
            ) from None
        want = (2, self.num_classes())
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise StudyError(
                f"--model {self.user.model!r} must return logits of shape (N, {want[1]}) for "
                f"the {want[1]} classes of the data (got {got})"
            )

    def _load_checkpoint(self, model: nn.Module) -> None:
        if self.user.checkpoint is None:
            return
        try:
            state = torch.load(self.user.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:
            raise StudyError(f"cannot load checkpoint {self.user.checkpoint!r}: {err}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise StudyError(
                f"checkpoint {self.user.checkpoint!r} does not fit --model "
                f"{self.user.model!r}: {err}"
            ) from None

    def source_model(self, norm: str, seed: int) -> Pretrained:
        if self.user.checkpoint is None:
            return super().source_model(norm, seed)
        if (norm, seed) not in self._models:
            from bnkit.study.metrics import accuracy
            from bnkit.study.training import predict

            model = self.build(norm)
            self._load_checkpoint(model)
            model.to(self.device).eval()
            val = self.split(seed).source_val
            acc = accuracy(
                predict(model, torch.from_numpy(val.x).to(self.device)), torch.from_numpy(val.y)
            )
            self._models[(norm, seed)] = Pretrained(
                model, acc, 0.0, True, Path(self.user.checkpoint)
            )
        return self._models[(norm, seed)]
