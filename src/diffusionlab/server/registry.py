"""The models a studio serves (floor 6): every model folder under one root, loaded on first use and kept within a
memory budget, the least recently used unloaded first.

A model's name is its folder's path relative to the root (``digits``, ``tables/adult``), or the folder's own name
when the root is itself a model folder. Names resolve only to the folders found under the root when the studio
started (or rescanned): a name is looked up, never joined onto a path, so ``../x`` or an absolute path can never
reach outside it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..interop import MODEL_INDEX, is_diffusers_folder, read_diffusers_config, weights_file
from ..io import CheckpointError
from ..pipeline import CONFIG_NAME, EMA_NAME, MODEL_NAME, Pipeline, read_model_config

__all__ = ["ModelEntry", "ModelRegistry", "UnknownModel", "find_model_folders", "MAX_DEPTH"]

MAX_DEPTH = 4  # folders below the root searched for models
_HASH_CHARS = 12


class UnknownModel(KeyError):
    """A model name that is not one of the served models."""

    def __str__(self) -> str:
        return str(self.args[0])


def find_model_folders(root: Path, max_depth: int = MAX_DEPTH) -> dict[str, Path]:
    """Every model folder (one with a config.json that is not an autoencoder's) at or below ``root``, by name."""
    root = root.resolve()
    if (root / CONFIG_NAME).is_file() or (root / MODEL_INDEX).is_file():
        return {root.name: root}
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root, followlinks=False):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        ours = CONFIG_NAME in files and (here / MODEL_NAME).is_file()
        if here != root and (ours or MODEL_INDEX in files):  # MODEL_INDEX: a diffusers folder (interop)
            found[here.relative_to(root).as_posix()] = here
            subfolders.clear()  # a model's own subfolders (its autoencoder, checkpoints) are not models
            continue
        if depth >= max_depth:
            subfolders.clear()
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return dict(sorted(found.items()))


def weights_hash(folder: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the weights a model samples with (its EMA file, else its model
    file): the hash its PNGs record, as the Stable Diffusion UIs record theirs."""
    path = folder / EMA_NAME if (folder / EMA_NAME).is_file() else folder / MODEL_NAME
    if is_diffusers_folder(folder):
        path = weights_file(folder)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:_HASH_CHARS]


def _folder_bytes(folder: Path) -> int:
    """The bytes of a model's weight files (what loading it costs in memory, near enough)."""
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors") if p.is_file())


@dataclass
class ModelEntry:
    """One served model: its name, folder, config (read without its weights), weights hash and size."""

    name: str
    folder: Path
    config: ModelConfig
    hash: str
    bytes: int

    @property
    def kind(self) -> str:
        """The model's data kind: its space's name (image, latent_image, points, tokens, table, signal)."""
        return self.config.space


class ModelRegistry:
    """The served models by name; ``get`` loads one (thread-safe) and unloads the least recently used ones while
    the loaded models' weights exceed ``memory_budget_bytes`` (the one in use always stays)."""

    def __init__(self, root: str | os.PathLike[str], memory_budget_bytes: int = 2 * 2**30) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise CheckpointError(f"{root} is not a folder; expected a model folder or a folder of model folders.")
        self.memory_budget_bytes = memory_budget_bytes
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Pipeline] = OrderedDict()
        self.entries: dict[str, ModelEntry] = {}
        self._pinned: dict[str, Pipeline] = {}
        self.rescan()

    @classmethod
    def of_pipeline(cls, pipe: Pipeline, name: str) -> ModelRegistry:
        """A registry serving one in-memory pipeline (tests, notebooks): never unloaded."""
        registry = cls.__new__(cls)
        registry.root = Path.cwd()
        registry.memory_budget_bytes = 0
        registry._lock = threading.Lock()
        registry._loaded = OrderedDict()
        registry._pinned = {name: pipe}
        params = sum(p.numel() * p.element_size() for p in pipe.network.parameters())
        registry.entries = {name: ModelEntry(name, Path(name), pipe.config, "in-memory", params)}
        return registry

    def rescan(self) -> None:
        """Find the model folders under the root again (new ones appear; removed ones go, unloaded)."""
        found = find_model_folders(self.root)
        entries = {}
        for name, folder in found.items():
            old = self.entries.get(name)
            if old is not None and old.folder == folder:
                entries[name] = old
                continue
            try:
                config = read_diffusers_config(folder) if is_diffusers_folder(folder) else read_model_config(folder)
            except CheckpointError:
                continue  # not a diffusion model (an autoencoder, a broken folder): not served
            entries[name] = ModelEntry(name, folder, config, weights_hash(folder), _folder_bytes(folder))
        with self._lock:
            self.entries = entries
            for gone in [n for n in self._loaded if n not in entries]:
                del self._loaded[gone]

    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> ModelEntry:
        """The served model ``name``, or UnknownModel naming the ones there are."""
        if name in self.entries:
            return self.entries[name]
        shown = ", ".join(list(self.entries)[:10]) or "none"
        raise UnknownModel(f"model={name[:64]!r} is not a served model; the models are: {shown}.")

    def loaded(self) -> list[str]:
        """The names of the models in memory, least recently used first."""
        with self._lock:
            return list(self._pinned) + list(self._loaded)

    def get(self, name: str) -> Pipeline:
        """The loaded pipeline of model ``name`` (loading it, and unloading others over the budget)."""
        entry = self.entry(name)
        if name in self._pinned:
            return self._pinned[name]
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            pipe = Pipeline.load(entry.folder)
            self._loaded[name] = pipe
            while len(self._loaded) > 1 and self._resident_bytes() > self.memory_budget_bytes:
                self._loaded.popitem(last=False)
            return pipe

    def _resident_bytes(self) -> int:
        return sum(self.entries[n].bytes for n in self._loaded)

    def describe(self, name: str) -> dict[str, Any]:
        """What the model picker shows: kind, conditioning, size, defaults."""
        entry = self.entry(name)
        cfg = entry.config
        k = cfg.network.num_classes
        return {
            "name": name,
            "kind": entry.kind,
            "hash": entry.hash,
            "megabytes": round(entry.bytes / 2**20, 2),
            "loaded": name in self.loaded(),
            "num_classes": k,
            "class_names": (cfg.data.class_names or [str(c) for c in range(k)]) if k else None,
            "text": cfg.text_encoder is not None,
            "image_condition": cfg.data.image_condition,
            "latent": cfg.latent is not None,
            "image_size": cfg.data.image_size,
            "channels": cfg.data.channels,
            "family": cfg.diffusion.process.family,
            "defaults": {"sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance},
        }
