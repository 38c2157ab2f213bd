"""SFT and generation speed on the embedded LLM, side by side with plain PEFT + transformers on the same data.

python benchmarks/llm_speed.py [--task sni_emotion] [--train 96] [--prompts 32] [--max-new-tokens 32]
    [--min-new-tokens 32] [--precision fp32,bf16] [--targets q_proj,...] [--no-shared-prefix] [--no-generation]
    [--threads 2] [--json FILE]

1. SFT tokens/s, one epoch over the same ``--train`` examples of one task, the same LoRA (rank 8, alpha 16 on
   ``--targets``, by default the model's default targets: q/k/v/o and gate/up/down on SmolLM2), batch 8, lr 1e-3,
   the same token ids (the chat-template prompt + response + eos; loss on the response only):
   - ours: ``adaptforge.train.trainer.train`` (length-grouped dynamic batches);
   - peer: a ``peft.get_peft_model`` model trained by ``transformers.Trainer`` with dynamic padding
     (``DataCollatorForSeq2Seq``) and ``group_by_length=True``.
   Tokens are the non-padding input tokens of every example, counted once per epoch for both.
   Each ``--precision`` runs both sides at that precision: ``fp32``, and ``bf16`` (ours: ``TrainConfig(precision=
   "bf16")``; the peer: ``TrainingArguments(bf16=True)``; both bfloat16 autocast over float32 LoRA weights).
   ``--no-shared-prefix`` turns off our one pass over the tokens a batch's rows share (an ablation).
2. Greedy generation of ``--max-new-tokens`` tokens for ``--prompts`` prompts with one adapter, the end of
   sequence held off for ``--min-new-tokens`` on both sides (default: all 32, as throughput benchmarks ignore
   EOS; the SFT adapter's own answers are a label word, which would time the prompts' prefill, not decoding):
   - ours: what ``adaptforge predict`` runs (``generation.generate``: batches of 8 by length, left padding, KV
     cache, the adapter folded into the base);
   - peer: one prompt at a time, ``PeftModel.generate`` (the unmerged adapter), as a script would.
   The outputs are compared token for token (both greedy on the same weights up to the fold's rounding).
Bars (issue 29): SFT >= 1.5x the peer's tokens/s; batched generation >= 3x the peer's tokens/s.
Run it alone on the machine: both sides share the cores.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from llm_sft import load  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments  # noqa: E402

from adaptforge import generation  # noqa: E402
from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.generation import IGNORE, SFTScorer, encode_prompts, generate  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.trainer import train  # noqa: E402


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def peer_sft(
    backbone: Backbone, ids: list[tuple[int, ...]], starts: list[int], args: argparse.Namespace, precision: str
) -> float:
    """Seconds for one epoch of PEFT + Trainer over the same token ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(backbone.path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=args.targets.split(","), lora_dropout=0.0)
    )
    rows = [
        {"input_ids": list(x), "attention_mask": [1] * len(x), "labels": [IGNORE] * s + list(x[s:])}
        for x, s in zip(ids, starts, strict=True)
    ]
    # length-grouped batches: transformers 5 spells it train_sampling_strategy, 4.x group_by_length
    grouping = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters
        else {"group_by_length": True}
    )
    training = TrainingArguments(
        **grouping,
        output_dir=str(args.work / "peer"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-3,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        bf16=precision == "bf16",
    )
    collator = DataCollatorForSeq2Seq(backbone.tokenizer, padding=True, label_pad_token_id=IGNORE)
    trainer = Trainer(model=model, args=training, train_dataset=Rows(rows), data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sni_emotion")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--min-new-tokens", type=int, default=32, help="end of sequence held off this long on both sides (decode speed)"
    )
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (both sides each)")
    parser.add_argument("--targets", help="comma-separated LoRA targets of both sides; default: the model's default")
    parser.add_argument("--no-shared-prefix", action="store_true", help="ablation: no shared-prefix pass in ours")
    parser.add_argument("--no-generation", action="store_true", help="SFT only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/llm_speed"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    task = load(args.task)
    task = task.with_splits(train=task.sample("train", args.train, seed=0))
    backbone = Backbone.load(args.model)
    args.targets = args.targets or ",".join(backbone.default_targets())
    encoded = SFTScorer(backbone, max_length=256).encode(task, task.split("train"))
    ids, starts = list(encoded.ids), list(encoded.targets)
    tokens = sum(len(x) for x in ids)

    if args.no_shared_prefix:  # the ablation: every row runs in full
        generation.SHARED_PREFIX_MIN = 10**9
    sft, ours = {}, None
    for precision in args.precision.split(","):
        cfg = TrainConfig(
            epochs=1,
            batch_size=8,
            lr=1e-3,
            max_length=256,
            rank=8,
            alpha=16.0,
            targets=tuple(args.targets.split(",")),
            checkpoint_every=0,
            seed=0,
            precision=precision,
        )
        start = time.perf_counter()
        result = train(task, backbone, cfg)
        ours_s = time.perf_counter() - start
        ours = ours or result
        peer_s = peer_sft(backbone, ids, starts, args, precision)
        sft[precision] = {
            "tokens": tokens,
            "ours_s": ours_s,
            "peer_s": peer_s,
            "ours_tok_s": tokens / ours_s,
            "peer_tok_s": tokens / peer_s,
            "ratio": peer_s / ours_s,
            "ours_reported_tok_s": result.tokens_per_second,
            "ours_final_loss": result.history[-1][2],
        }
        print(json.dumps({"sft": {precision: sft[precision]}}), flush=True)
    for precision, row in sft.items():
        print(
            f"SFT {precision}: ours {row['ours_tok_s']:.0f} tok/s, PEFT+Trainer {row['peer_tok_s']:.0f} tok/s: "
            f"{row['ratio']:.2f}x (bar 1.5x: {'met' if row['ratio'] >= 1.5 else 'NOT met'})"
        )
    if "fp32" in sft and "bf16" in sft:
        print(f"SFT ours bf16 vs PEFT+Trainer fp32: {sft['fp32']['peer_s'] / sft['bf16']['ours_s']:.2f}x")
    if args.no_generation:
        if args.json:
            settings = {**vars(args), "work": None, "json": None}
            args.json.write_text(json.dumps({"settings": settings, "sft": sft}, indent=2) + "\n")
        return

    examples = task.sample("test", args.prompts, seed=0)
    prompts = encode_prompts(backbone.tokenizer, task.description, examples, 256)
    start = time.perf_counter()
    with backbone.applied(ours.delta) as tuned:
        batched = generate(
            tuned, backbone.tokenizer, prompts, args.max_new_tokens, 8, min_new_tokens=args.min_new_tokens
        )
    ours_gen = time.perf_counter() - start
    from peft import PeftModel

    folder = args.work / "adapter"
    from adaptforge.adapters import write_adapter

    write_adapter(ours.delta, folder, base_model=str(backbone.path))
    from transformers import AutoModelForCausalLM

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone.path), folder).eval()
    tok = backbone.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    singles, new_tokens = [], 0
    start = time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:
            x = torch.tensor([prompt])
            out = peft_model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=args.max_new_tokens,
                min_new_tokens=args.min_new_tokens or None,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tok.eos_token_id,
            )
            new_tokens += out.shape[1] - x.shape[1]
            singles.append(tok.decode(out[0, x.shape[1] :], skip_special_tokens=True).strip())
    peer_gen = time.perf_counter() - start
    same = sum(a == b for a, b in zip(batched, singles, strict=True))
    gen = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "ours_s": ours_gen,
        "peer_s": peer_gen,
        "peer_new_tokens": new_tokens,
        "ratio": peer_gen / ours_gen,
        "identical_outputs": same,
    }
    print(json.dumps({"generation": gen}), flush=True)
    print(
        f"generation: batched {ours_gen:.1f} s vs one at a time {peer_gen:.1f} s for {len(prompts)} prompts: "
        f"{gen['ratio']:.2f}x (bar 3x: {'met' if gen['ratio'] >= 3 else 'NOT met'}); "
        f"{same}/{len(prompts)} outputs identical"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": {**vars(args), "work": None, "json": None}, "sft": sft, "generation": gen}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
