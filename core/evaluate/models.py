"""Which model an evaluation scores, and its fingerprint.

A model is named as `bundled:smollm2`, a local folder (a saved Hugging Face model, or a PEFT adapter whose
`adapter_config.json` names its base) or a hub id available locally. It is checked before any work: a model that
cannot be loaded is refused with its reason. The fingerprint hashes the weights (and the adapter's weights and
its base's fingerprint), so a cached score is reused only for the very same model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from core.ingest import file_sha256
from core.models import BUNDLED_LM, ModelUnavailable, resolve_lm

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONFIG_FILES = ("config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                "generation_config.json")


@dataclass(frozen=True)
class ModelSpec:
    """A loadable model: `path` is what from_pretrained reads; `adapter` a PEFT adapter folder on it."""

    name: str  # as the user named it
    path: str
    adapter: str | None
    fingerprint: str

    def lm_eval_args(self, dtype: str, device: str) -> dict[str, object]:
        args: dict[str, object] = {"pretrained": self.path, "dtype": dtype, "device": device}
        if self.adapter:
            args["peft"] = self.adapter
        return args

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "adapter": self.adapter, "fingerprint": self.fingerprint}


@cache
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def folder_fingerprint(folder: Path) -> str:
    """Hash of a model folder's weights and configs (file names and contents; cached per size and mtime)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise ModelUnavailable(f"{folder} holds no model weights (*.safetensors, *.bin)")
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{_file_hash(str(p), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


def _hub_folder(name: str) -> Path | None:
    """The local snapshot of a hub id, if it was downloaded before (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not available locally"
        return None


def _check_loadable(folder: Path, what: str) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelUnavailable(f"{what}: {folder} has no config.json (not a saved Hugging Face model)")
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise ModelUnavailable(f"{what}: its config cannot be read: {exc}".splitlines()[0]) from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelUnavailable(f"{what}: model type {cfg.model_type!r} is not a causal language model")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ModelUnavailable(f"{what}: {folder} has no tokenizer")


def _local_model(name: str) -> Path:
    if name == BUNDLED_LM:
        return Path(resolve_lm(name, with_model=True))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelUnavailable(f"{name}: not a folder")
        return path.resolve()
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:  # a hub id is owner/name
        raise ModelUnavailable(f"{name}: no such folder")
    folder = _hub_folder(name)
    if folder is None:
        raise ModelUnavailable(f"{name}: neither a local folder nor a model in the local Hugging Face cache "
                               f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')})")
    return folder


def resolve_model(name: str) -> ModelSpec:
    """The model `name` names, checked to be loadable (config, weights, tokenizer), with its fingerprint."""
    if not name or not name.strip():
        raise ModelUnavailable("no model named")
    folder = _local_model(name.strip())
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        try:
            base_name = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except json.JSONDecodeError as exc:
            raise ModelUnavailable(f"{name}: adapter_config.json is not valid JSON: {exc}") from exc
        studio_meta = folder / "studio_model.json"
        if studio_meta.is_file():  # a training job records the base it was trained on, by the studio's name
            base_name = json.loads(studio_meta.read_text(encoding="utf-8")).get("base_model") or base_name
        if not base_name:
            raise ModelUnavailable(f"{name}: the adapter does not name its base model")
        base = resolve_model(str(base_name))
        if base.adapter:
            raise ModelUnavailable(f"{name}: its base {base_name} is itself an adapter")
        fp = hashlib.sha256(f"{base.fingerprint}+adapter:{folder_fingerprint(folder)}".encode()).hexdigest()
        return ModelSpec(name=name, path=base.path, adapter=str(folder), fingerprint=fp)
    _check_loadable(folder, name)
    return ModelSpec(name=name, path=str(folder), adapter=None, fingerprint=folder_fingerprint(folder))
