"""LoRA adapters in llama.cpp's GGUF adapter format, so an adapter of a LLaMA-family base runs in llama.cpp
(``llama-cli -m BASE.gguf --lora ADAPTER.gguf``) on the base's own GGUF file.

The file holds what llama.cpp's ``convert_lora_to_gguf.py`` writes: ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha``, the base's architecture, and per adapted module the two
float32 tensors ``<gguf name>.lora_a`` (``A``, ``r x in``) and ``<gguf name>.lora_b`` (``B``, ``out x r``),
named as the base's tensors are in GGUF (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight``, the MLP's
``mlp.gate_proj``/``up_proj``/``down_proj`` -> ``blk.3.ffn_gate``/``ffn_up``/``ffn_down``, from the ``gguf``
package's name map). llama.cpp checks each pair against the base tensor: ``A``'s columns are its input size and
``B``'s rows its output size (``ffn_down``: input the MLP width, output the hidden size), as in PEFT, so the factors
are written untransposed. Two details follow from how llama.cpp stores a LLaMA:

- its q and k projections keep the rows of each head's two rotary halves interleaved, where Hugging Face keeps
  them as two blocks; the rows of ``B`` of those projections are reordered the same way (``A`` is unchanged,
  the reordering is on the output side);
- it scales every module by ``alpha / r`` with ``r`` read from the tensor (the bare adapter scale when alpha is
  0). When every module's scale times its rank is the same number, that number is the alpha (a plain PEFT
  adapter: its own ``lora_alpha``); otherwise (rsLoRA, merges with mixed scales) each scale is folded into ``B``
  and alpha is written as 0.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adaptforge.core import AdaptforgeError, LoraDelta

# model_type -> (gguf architecture name, whether q/k rows are in llama.cpp's interleaved rotary order)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True)}


def rotary_rows(b: torch.Tensor, heads: int) -> torch.Tensor:
    """``b``'s rows (a q or k projection's outputs) from Hugging Face's order (per head: the first rotary half,
    then the second) to llama.cpp's (the two halves interleaved row by row)."""
    out = b.shape[0]
    if out % (2 * heads):
        raise AdaptforgeError(f"a projection of {out} rows cannot be split into {heads} heads of two rotary halves")
    return b.reshape(heads, 2, out // heads // 2, *b.shape[1:]).transpose(1, 2).reshape(b.shape)


def gguf_tensors(delta: LoraDelta, config: object) -> tuple[dict[str, torch.Tensor], float]:
    """The adapter's tensors by llama.cpp name and the file's alpha, for a base with Hugging Face ``config``."""
    import gguf

    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise AdaptforgeError(
            f"GGUF export supports LLaMA-family bases ({', '.join(sorted(ARCHITECTURES))}); this adapter's base is "
            f"{model_type!r}; export it as a PEFT folder instead"
        )
    arch, rotary = ARCHITECTURES[model_type]
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), layers)
    products = {round(m.scale * m.rank, 6) for m in delta.modules.values()}
    alpha = products.pop() if len(products) == 1 else 0.0
    tensors: dict[str, torch.Tensor] = {}
    for module, lora in sorted(delta.modules.items()):
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None or not name.startswith("blk."):
            raise AdaptforgeError(f"module {module!r} has no llama.cpp tensor to adapt; GGUF export covers the blocks")
        b = lora.B.float() * (1.0 if alpha else float(lora.scale))
        if rotary and name.endswith((".attn_q.weight", ".attn_k.weight")):
            b = rotary_rows(b, heads if ".attn_q." in name else kv_heads)
        tensors[f"{name}.lora_a"] = lora.A.float().contiguous()
        tensors[f"{name}.lora_b"] = b.contiguous()
    return tensors, float(alpha)


def write_gguf_adapter(delta: LoraDelta, config: object, dest: Path, name: str) -> Path:
    """Write ``delta`` (an adapter of a base with ``config``) to ``dest`` as a llama.cpp GGUF LoRA adapter."""
    import gguf

    tensors, alpha = gguf_tensors(delta, config)
    arch, _ = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(dest), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, tensor in tensors.items():
        writer.add_tensor(key, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
