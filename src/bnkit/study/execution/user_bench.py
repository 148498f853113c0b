"""The user's own case: their data, with their model or the built-in one.

Data (:mod:`bnkit.study.data.user`): an image-folder tree or a factory. The model: a factory
(``--model``; with ``--checkpoint`` it is the source model for every seed), or without
``--model`` the built-in ResNet (and its GroupNorm twin) sized to the data. A model without a
checkpoint is trained on the source images until it converges (``[pretrain]``), once per seed,
and cached. Per seed the source is split 90/10 into training and held-out parts and the target
40/20/40 into the adaptation pool, the labelled validation part and the test part (stratified
by class). The target is one domain, reported as the shift ``"target"``.

Image folders are streamed (:mod:`bnkit.study.data.feed`); a factory's data stay in memory.
Without ``[data] mean``/``std`` the images are normalized by the mean and std of all source
images, computed once (cached next to the source models) and written into the bench's
configuration, so they are reported and are part of every cell's key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bnkit.errors import StudyError
from bnkit.study.atomic import atomic_write
from bnkit.study.data import user as user_data
from bnkit.study.data.domain import Domain, rng_for, split
from bnkit.study.data.feed import head
from bnkit.study.data.files import FileImages
from bnkit.study.execution.bench import Bench, BenchSpec
from bnkit.study.models import user as user_model
from bnkit.study.models.resnet import build_model
from bnkit.study.models.scores import accuracy
from bnkit.study.models.source import Pretrained, init_seed
from bnkit.study.models.training import predict

__all__ = ["UserBench"]

BUILTIN = "bnkit.study.models.resnet:ResNetSmall"


def _relabel(domain: Domain, mapping: dict[int, int]) -> Domain:
    return Domain(domain.x, np.asarray([mapping[int(y)] for y in domain.y], dtype=np.int64))


class UserBench(Bench):
    """The study on the user's data (one target domain)."""

    name = "user"

    def __init__(self, spec: BenchSpec) -> None:
        super().__init__(spec)
        assert spec.user is not None
        self.user = spec.user
        if user_data.is_folder(self.user.data):
            src, tgt, self.classes = user_data.load_folders(self.user.data, self.user.image_size)
        else:
            src, tgt, self.classes = user_data.from_factory(self.user.data)
        self.data_id = user_data.identity(self.user.data, src, tgt)
        src, tgt = self._normalize(src, tgt)
        self.image_size = int(src.x.shape[-1])
        self._channels = int(src.x.shape[1])
        labels = sorted({int(y) for y in (*src.y.tolist(), *tgt.y.tolist())})
        self._outputs = len(labels) if self.user.model is None else self._check_model(src)
        self.mapping = user_model.output_labels(
            labels, self._outputs, self.user.checkpoint is not None, self.model_name
        )
        self.source, self.target = _relabel(src, self.mapping), _relabel(tgt, self.mapping)
        self._splits: dict[int, list[Domain]] = {}

    def _normalize(self, src: Domain, tgt: Domain) -> tuple[Domain, Domain]:
        """Normalize by the configured mean/std, or by the source's (then recorded)."""
        data = self.config.data
        if not data.mean:
            mean, std = self._statistics(src)
            data = dataclasses.replace(data, mean=tuple(mean), std=tuple(std))
            self.config = dataclasses.replace(self.config, data=data)
            self.spec = dataclasses.replace(self.spec, config=self.config)
        channels = int(src.x.shape[1])
        if len(data.mean) != channels:
            raise StudyError(
                f"[data] mean and std have {len(data.mean)} values, but the images have "
                f"{channels} channel(s); give one value per channel"
            )

        def norm(d: Domain) -> Domain:
            if isinstance(d.x, FileImages):
                return Domain(d.x.normalized(data.mean, data.std), d.y)
            mean = np.asarray(data.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(data.std, dtype=np.float32).reshape(1, -1, 1, 1)
            return Domain(((d.x - mean) / std).astype(np.float32), d.y)

        return norm(src), norm(tgt)

    def _statistics(self, src: Domain) -> tuple[list[float], list[float]]:
        if not isinstance(src.x, FileImages):
            x = src.x.astype(np.float64).transpose(1, 0, 2, 3).reshape(src.x.shape[1], -1)
            mean, std = x.mean(axis=1), np.maximum(x.std(axis=1), 1e-6)
            return [round(float(m), 6) for m in mean], [round(float(v), 6) for v in std]
        path = Path(self.spec.cache_dir) / f"normalization-{src.x.fingerprint()}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # not cached yet
            got = json.loads(path.read_text(encoding="utf-8"))
            return list(got["mean"]), list(got["std"])
        mean, std = user_data.statistics(src.x, self.feed.workers)
        atomic_write(path, json.dumps({"mean": mean, "std": std, "images": len(src)}))
        return mean, std

    @property
    def model_name(self) -> str:
        return self.user.model or BUILTIN

    def _check_model(self, src: Domain) -> int:
        assert self.user.model is not None
        model = user_model.build(self.user.model)
        if self.user.checkpoint is not None:
            user_model.load_checkpoint(model, self.user.checkpoint, self.user.model)
        return user_model.check_outputs(model, head(src.x, 2), self.user.model)

    # ------------------------------------------------------------------ the grid
    @property
    def norms(self) -> tuple[str, ...]:
        if self.user.model is None and self.config.groupnorm:
            return ("bn", "gn")
        return ("bn",)

    def targets(self) -> list[tuple[str, int]]:
        return [("target", 0)]

    def finetune_targets(self) -> list[tuple[str, int]]:
        return [("target", 0)]

    def is_sweep(self, shift: str, severity: int) -> bool:
        return True

    def shots(self) -> tuple[int, ...]:
        fewest = int(np.bincount(self.parts(0, "target", 0)[0].y).min())
        ks = tuple(k for k in self.config.finetune.shots if k <= fewest)
        if self.config.finetune.strategies and not ks:
            raise StudyError(
                f"the target pool has only {fewest} images of some class, fewer than every "
                f"k in {list(self.config.finetune.shots)}; lower [finetune] shots in a config file"
            )
        return ks

    def has_bn_only(self) -> bool:
        return False

    def family(self, shift: str) -> str:
        return "user"

    def source_of(self, shift: str) -> str:
        return "user"

    # ------------------------------------------------------------------ data
    def _split(self, seed: int) -> list[Domain]:
        if seed not in self._splits:
            train, val = split(self.source, (0.9, 0.1), rng_for(seed, "user-source"))
            pool, tval, test = split(self.target, (0.4, 0.2, 0.4), rng_for(seed, "user-target"))
            self._splits[seed] = [train, val, pool, tval, test]
        return self._splits[seed]

    def parts(self, seed: int, shift: str, severity: int) -> tuple[Domain, Domain, Domain]:
        _, _, pool, val, test = self._split(seed)
        return pool, val, test

    def pool_size(self, shift: str) -> int:
        return len(self._split(0)[2])

    def source_parts(self, dataset: str, seed: int) -> tuple[Domain, Domain]:
        train, val = self._split(seed)[:2]
        return train, val

    def num_classes(self) -> int:
        return self._outputs

    def in_channels(self) -> int:
        return self._channels

    def data_identity(self, shift: str) -> dict[str, Any]:
        return {"user": self.data_id, "labels": sorted(self.mapping.items())}

    # ------------------------------------------------------------------ models
    def build(self, norm: str) -> nn.Module:
        if self.user.model is None:
            return build_model(
                norm,
                in_channels=self._channels,
                num_classes=self._outputs,
                width=self.config.width,
            )
        return user_model.build(self.user.model)

    def model_identity(self, dataset: str, norm: str) -> dict[str, Any]:
        name = self.model_name if self.user.model else f"{BUILTIN}-{norm}-w{self.config.width}"
        return {"name": f"user-{name}", "device": self.device.type}

    def model_context(self, dataset: str, norm: str, seed: int) -> dict[str, Any]:
        out = super().model_context(dataset, norm, seed)
        if self.user.checkpoint is not None:
            out["checkpoint"] = user_model.checkpoint_digest(self.user.checkpoint)
        return out

    def source_model(self, dataset: str, norm: str, seed: int) -> Pretrained:
        if self.user.checkpoint is None:
            return super().source_model(dataset, norm, seed)
        key = (dataset, norm, seed)
        if key not in self._models:
            assert self.user.model is not None
            torch.manual_seed(init_seed(self.model_identity(dataset, norm), seed))
            model = self.build(norm)
            user_model.load_checkpoint(model, self.user.checkpoint, self.user.model)
            self.feed.place(model).eval()
            val = self.source_parts(dataset, seed)[1]
            with self.feed.autocast():
                logits = predict(
                    model, self.feed.images(val.x), self.config.pretrain.eval_batch_size
                )
            acc = accuracy(logits, torch.from_numpy(val.y))
            self._models[key] = Pretrained(
                model, acc, 0.0, True, Path(self.user.checkpoint), 0, True
            )
        return self._models[key]

    def source_path(self, dataset: str, norm: str, seed: int) -> Path | None:
        if self.user.checkpoint is not None:
            return None  # the checkpoint is the source model: nothing to train
        return super().source_path(dataset, norm, seed)

    def source_models(self) -> list[tuple[str, str]]:
        return [("user", n) for n in self.norms]

    def has_model(self, shift: str, norm: str) -> bool:
        return norm in self.norms

    def describe(self) -> dict[str, Any]:
        parts = self._split(0)
        names = ("source_train", "source_val", "target_pool", "target_val", "target_test")
        mapped = {y: i for y, i in self.mapping.items() if y != i}
        model = self.model_name + (
            f" with checkpoint {self.user.checkpoint}" if self.user.checkpoint else ""
        )
        return {
            "bench": self.name,
            "data": f"{self.user.data} ({len(self.classes)} classes, images "
            f"{'×'.join(str(d) for d in self.source.x.shape[1:])})",
            "sizes": {"user": {n: len(p) for n, p in zip(names, parts, strict=True)}},
            "classes": len(self.classes),
            "model": model,
            "labels": ", ".join(f"{y}→{i}" for y, i in mapped.items()) or None,
        }
