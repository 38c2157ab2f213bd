"""Training throughput: adaptforge's trainer vs a plain PEFT + transformers loop, side by side.

Same model (embedded all-MiniLM-L6-v2), same LoRA config, same objective (cosine / temperature
cross-entropy against label embeddings recomputed every batch), same examples, batch size and max
length. The plain loop follows the usual transformers recipe: tokenize with
``padding="max_length"`` and iterate a shuffled DataLoader. A second peer pads dynamically per
batch (``DataCollatorWithPadding``) without length bucketing, to show where the gain comes from.

    python benchmarks/train_speed.py [--tasks sst2,tweet_emotion,...] [--n 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.trainer import lora_config, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"


def plain_peft_loop(task: Task, backbone: Backbone, cfg: TrainConfig, dynamic: bool) -> float:
    """Examples per second of the textbook loop (one epoch)."""
    tok, model = backbone.tokenizer, backbone.model
    examples = task.sample("train", cfg.max_train, seed=cfg.seed)
    texts = [f"{task.description.strip()} {e.text}" for e in examples]
    targets = torch.tensor([task.labels.index(e.label) for e in examples])
    padding = False if dynamic else "max_length"
    enc = tok(texts, truncation=True, max_length=cfg.max_length, padding=padding)
    rows = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": int(targets[i])}
        for i in range(len(texts))
    ]
    collate = DataCollatorWithPadding(tok) if dynamic else None
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=collate or _stack,
        generator=torch.Generator().manual_seed(0),
    )
    label_enc = tok(list(task.labels), padding=True, return_tensors="pt")
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora_config(cfg))
    try:
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
        peft_model.train()
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            labels = batch.pop("labels")
            x = _pool(peft_model(**batch).last_hidden_state, batch["attention_mask"])
            y = _pool(peft_model(**label_enc).last_hidden_state, label_enc["attention_mask"])
            loss = F.cross_entropy(x @ y.T / cfg.temperature, labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen += len(labels)
        return seen / (time.perf_counter() - t0)
    finally:
        peft_model.unload()
        model.eval()
        model.requires_grad_(False)


def _stack(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="sst2,tweet_emotion,agnews,mnli")
    parser.add_argument("--n", type=int, default=512, help="training examples per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    backbone = Backbone.load()
    cfg = TrainConfig(
        epochs=1, max_train=args.n, batch_size=args.batch_size, max_length=args.max_length, checkpoint_every=0
    ).resolved(backbone.kind, backbone.default_targets())
    rows = []
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, max_length {args.max_length}, n {args.n}")
    print(f"{'task':<22}{'adaptforge ex/s':>16}{'plain ex/s':>12}{'plain+dyn ex/s':>16}{'ratio':>8}{'ratio dyn':>10}")
    for name in args.tasks.split(","):
        task = load_task(SHARED / name)
        best = {"ours": 0.0, "plain": 0.0, "dynamic": 0.0}
        for _ in range(args.repeats):  # interleaved, best of N: the same machine state for each side
            best["ours"] = max(best["ours"], train(task, backbone, cfg).examples_per_second)
            best["plain"] = max(best["plain"], plain_peft_loop(task, backbone, cfg, dynamic=False))
            best["dynamic"] = max(best["dynamic"], plain_peft_loop(task, backbone, cfg, dynamic=True))
        row = {
            "task": name,
            **{k: round(v, 1) for k, v in best.items()},
            "ratio": round(best["ours"] / best["plain"], 2),
            "ratio_dynamic": round(best["ours"] / best["dynamic"], 2),
        }
        rows.append(row)
        print(
            f"{name:<22}{row['ours']:>16}{row['plain']:>12}{row['dynamic']:>16}{row['ratio']:>8}{row['ratio_dynamic']:>10}"
        )
    geo = torch.tensor([r["ratio"] for r in rows]).log().mean().exp().item()
    geo_dyn = torch.tensor([r["ratio_dynamic"] for r in rows]).log().mean().exp().item()
    print(
        f"geometric mean ratio vs plain (max_length padding): {geo:.2f}x; vs plain with dynamic padding: {geo_dyn:.2f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "geomean_ratio": geo, "geomean_ratio_dynamic": geo_dyn}, indent=2)
        )


if __name__ == "__main__":
    main()
