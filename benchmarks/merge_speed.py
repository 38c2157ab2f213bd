"""Merge wall time: adaptforge vs PEFT ``add_weighted_adapter`` vs mergekit, on the same LoRA adapters.

python benchmarks/merge_speed.py [--adapters 3] [--rank 8] [--hidden 512] [--layers 4] [--threads 1]
    [--mergekit-path out/mergekit-pkgs] [--json out.json]

A tiny LLaMA-style model is built from a config and saved with ``save_pretrained`` (mergekit 0.1.5
fails on BERT-family models, so the comparison uses LLaMA). ``--adapters`` PEFT LoRA adapters (rank
``--rank`` on q/k/v/o/gate/up/down, random ``lora_B``) are created on it and saved; adaptforge reads the
same folders. mergekit merges full models, so each adapter is also materialized as base + dW with
``save_pretrained`` (not timed: mergekit's LoRA input path does the same work before merging). The
base's target weights are zero so that base + dW - base is exactly dW in float32: otherwise rounding
in the materialized models flips a few entries at the TIES trim threshold (~1e-3 relative difference).

Timed, each the median of ``--repeats`` runs, all on ``--threads`` torch threads:
- adaptforge: ``merge(method, deltas, params)`` in memory; end to end from the PEFT folders to a PEFT
  folder (read, merge, re-factor to LoRA, write); and from the PEFT folders to a dense model folder,
  mergekit's output (read, merge at full rank, which skips the SVD, stream base + dW into a model folder as
  ``merge --dense-out`` does, :func:`adaptforge.dense.write_dense_model`; ``save_pretrained`` until 2026-12-07);
- PEFT: ``add_weighted_adapter`` on the loaded PeftModel (in memory), the matching combination type;
- mergekit: ``run_merge`` from model folders to an output folder (its only mode), ``--mergekit-path``
  being a folder where ``pip install --no-deps --target`` put mergekit 0.1.5 and immutables.
Parity: the dense merged deltas of adaptforge (TIES at full rank, task arithmetic) against mergekit's
output minus the base, as the max relative Frobenius error over modules.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from adaptforge.adapters import read_adapter, write_adapter  # noqa: E402
from adaptforge.core import LoraDelta  # noqa: E402
from adaptforge.dense import write_dense_model  # noqa: E402
from adaptforge.merge import merge  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (adaptforge method, adaptforge params, PEFT combination type, PEFT kwargs, mergekit method, mergekit params)
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], str | None, dict[str, Any]]] = [
    ("task_arithmetic", {}, "cat", {}, "task_arithmetic", {}),
    ("ties", {"density": 0.2}, "ties_svd", {"density": 0.2}, "ties", {"density": 0.2}),
    ("dare_ties", {"density": 0.5, "seed": 0}, "dare_ties_svd", {"density": 0.5}, "dare_ties", {"density": 0.5}),
    ("ties_factors", {"density": 0.2}, "ties", {"density": 0.2}, None, {}),
]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def build(root: Path, args: argparse.Namespace) -> tuple[Path, list[Path], list[Path], PeftModel]:
    """Base model folder, PEFT adapter folders, full-model folders (base + dW) and the PEFT model."""
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base_dir = root / "base"
    base = LlamaForCausalLM(config)
    with torch.no_grad():  # zero target weights: base + dW is then exact in float32, so mergekit sees dW exactly
        for name, module in base.named_modules():
            if name.rsplit(".", 1)[-1] in TARGETS:
                module.weight.zero_()
    base.save_pretrained(base_dir)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS),
        "a0",
    )
    for i in range(1, args.adapters):
        model.add_adapter(f"a{i}", LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS))
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.lora_B:
                torch.nn.init.normal_(module.lora_B[name].weight, std=0.02)
    names = [f"a{i}" for i in range(args.adapters)]
    model.save_pretrained(root / "peft", selected_adapters=names)
    adapter_dirs = [root / "peft" / n for n in names]
    full_dirs = []
    for i, folder in enumerate(adapter_dirs):
        delta, _ = read_adapter(folder)
        full = LlamaForCausalLM.from_pretrained(base_dir)
        named = dict(full.named_modules())
        with torch.no_grad():
            for mod in delta:
                named[mod].weight.add_(delta.dense(mod))
        full_dirs.append(root / f"full{i}")
        full.save_pretrained(full_dirs[-1])
    return base_dir, adapter_dirs, full_dirs, model


def peft_time(model: PeftModel, names: list[str], combination: str, kwargs: dict[str, Any], repeats: int) -> float:
    counter = iter(range(10**6))

    def once() -> None:
        out = f"m{next(counter)}"
        model.add_weighted_adapter(names, [1.0] * len(names), out, combination_type=combination, **kwargs)
        model.delete_adapter(out)

    return timed(once, repeats)[0]


def mergekit_run(method: str, params: dict[str, Any], base: Path, models: list[Path], out: Path, threads: int) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 1.0, **params}} for m in models],
        "dtype": "float32",
    }
    if method in ("ties", "dare_ties"):
        config["parameters"] = {"normalize": True}
    if out.exists():
        shutil.rmtree(out)
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0, num_threads=threads)
    run_merge(MergeConfiguration.model_validate(config), str(out), options=options)
    return out


def mergekit_deltas(out: Path, base: Path, modules: list[str]) -> dict[str, torch.Tensor]:
    merged, original = {}, {}
    for f in out.glob("*.safetensors"):
        merged.update(load_file(str(f)))
    for f in base.glob("*.safetensors"):
        original.update(load_file(str(f)))
    return {m: merged[f"{m}.weight"].float() - original[f"{m}.weight"].float() for m in modules}


def rel_error(ours: LoraDelta, theirs: dict[str, torch.Tensor]) -> float:
    return max(float((ours.dense(m) - t).norm() / t.norm().clamp(min=1e-12)) for m, t in theirs.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mergekit-path", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mergekit_path is not None:
        sys.path.insert(0, str(args.mergekit_path.resolve()))
    try:
        import mergekit  # noqa: F401

        have_mergekit = True
    except ImportError:
        have_mergekit = False

    root = Path(tempfile.mkdtemp(prefix="merge-speed-"))
    try:
        base, adapter_dirs, full_dirs, model = build(root, args)
        deltas = [read_adapter(d)[0] for d in adapter_dirs]
        names = [f"a{i}" for i in range(args.adapters)]
        modules = deltas[0].targets
        rows = []
        for ours, params, peft_type, peft_kwargs, mk_method, mk_params in CASES:
            t_ours, _ = timed(lambda ours=ours, params=params: merge(ours, deltas, params), args.repeats)

            def end_to_end(ours: str = ours, params: dict[str, Any] = params) -> None:
                loaded = [read_adapter(d)[0] for d in adapter_dirs]
                write_adapter(merge(ours, loaded, params).delta, root / "ours-out", base_model=str(base))

            t_e2e, _ = timed(end_to_end, args.repeats)

            def to_dense_model(ours: str = ours, params: dict[str, Any] = params) -> None:
                """mergekit's output: a full model folder, base + the exact merged dW (no re-factoring)."""
                loaded = [read_adapter(d)[0] for d in adapter_dirs]
                full_rank = {} if ours == "task_arithmetic" else {"rank": 2 * args.hidden}  # TA: exact concat
                merged = merge(ours, loaded, {**params, **full_rank}).delta
                (root / "ours-dense").mkdir(exist_ok=True)
                write_dense_model(base, merged, root / "ours-dense")  # what merge --dense-out writes

            t_dense, _ = timed(to_dense_model, args.repeats)
            t_peft = peft_time(model, names, peft_type, peft_kwargs, args.repeats)
            row: dict[str, Any] = {
                "method": ours,
                "peft": peft_type,
                "ours_s": t_ours,
                "ours_end_to_end_s": t_e2e,
                "ours_dense_model_s": t_dense,
                "peft_s": t_peft,
                "mergekit": mk_method,
                "mergekit_s": None,
                "parity_vs_mergekit": None,
            }
            if have_mergekit and mk_method is not None:
                out = root / "mk-out"
                row["mergekit_s"], _ = timed(
                    lambda m=mk_method, p=mk_params, o=out: mergekit_run(m, p, base, full_dirs, o, args.threads),
                    args.repeats,
                )
                if mk_method in ("task_arithmetic", "ties"):  # deterministic: compare the dense deltas
                    full_rank = {"rank": 2 * args.hidden} if mk_method == "ties" else {}
                    exact = merge(ours, deltas, {**params, **full_rank}).delta
                    row["parity_vs_mergekit"] = rel_error(exact, mergekit_deltas(out, base, modules))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    setting = (
        f"{args.adapters} adapters, rank {args.rank}, LLaMA hidden {args.hidden} x {args.layers} layers, "
        f"{len(TARGETS)} targets/layer, {args.threads} thread(s), median of {args.repeats}"
    )
    print(f"\n{setting}\n")
    print(
        "| adaptforge | in memory s | PEFT folders -> PEFT folder s | PEFT folders -> dense model s | PEFT | PEFT s "
        "| mergekit | mergekit s | mergekit / ours (LoRA out) | mergekit / ours (dense out) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mk = "-" if r["mergekit_s"] is None else f"{r['mergekit_s']:.3f}"
        lora_x = "-" if r["mergekit_s"] is None else f"{r['mergekit_s'] / r['ours_end_to_end_s']:.1f}x"
        dense_x = "-" if r["mergekit_s"] is None else f"{r['mergekit_s'] / r['ours_dense_model_s']:.1f}x"
        print(
            f"| {r['method']} | {r['ours_s']:.3f} | {r['ours_end_to_end_s']:.3f} | {r['ours_dense_model_s']:.3f} "
            f"| {r['peft']} | {r['peft_s']:.3f} | {r['mergekit'] or '-'} | {mk} | {lora_x} | {dense_x} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
