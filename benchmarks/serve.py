"""Serving many adapters: adaptforge serve vs PEFT adapter swapping, PEFT's mixed batch and merged models.

python benchmarks/serve.py [--adapters 100] [--clients 1,4,16,64] [--streams zipf,uniform] [--seconds 15]
    [--max-loaded 32] [--max-batch 32] [--max-wait-ms 5] [--threads 2] [--repeats 2]
    [--engines ours-http,ours,peft-swap,peft-mixed,merged] [--cliff 8,16,32,64,100] [--cliff-clients 16]
    [--out out/serve_bench]

A library of ``--adapters`` rank-8 LoRA adapters on the embedded MiniLM (random factors, default targets, each
labelled with one of the shipped tasks) is built once in ``OUT/library``. Closed-loop clients (threads) each send
one text per request and the next request when the answer arrives; the adapter of each request is drawn from
a Zipf (s = ``--zipf-s``) or a uniform distribution over the adapters. Every engine sees the same queue (the
serve micro-batcher: ``--max-batch``, ``--max-wait-ms``) and keeps at most ``--max-loaded`` adapters in memory:

* ``ours-http``: ``adaptforge serve`` itself, over loopback HTTP (httpx clients);
* ``ours``: the same service without HTTP (the planner and the batcher called in-process), the like-for-like
  comparison with the baselines, which run in-process too;
* ``peft-swap`` (a): one PEFT model, ``load_adapter`` on a miss (LRU ``delete_adapter``), ``set_adapter`` and one
  forward per request;
* ``peft-mixed`` (b): one PEFT model, one forward per batch with ``adapter_names`` (PEFT's mixed batch);
* ``merged`` (c): one merged model (base + dW) per adapter, made on demand, at most ``--merged-max`` kept; the
  requests of a batch for one adapter share a forward.

Label embeddings are computed once per adapter and cached by every engine. Engines run interleaved per cell,
best of ``--repeats``; a cell reports throughput (texts/s) and client-side p50/p99 latency. The cache cliff runs
``--cliff-engines`` on a uniform stream over D distinct adapters for each D in ``--cliff`` and is plotted to
``OUT/cache_cliff.png`` (needs matplotlib). Results: ``OUT/results.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.batching import pad  # noqa: E402
from adaptforge.core import LoraDelta, LoraModule  # noqa: E402
from adaptforge.library import (
    Library,  # noqa: E402
    TaskEntry,
)
from adaptforge.pipelines.serve import build_service, start_in_thread  # noqa: E402
from adaptforge.provenance import read as made_by
from adaptforge.scorers import make_scorer  # noqa: E402
from adaptforge.serve import ServeConfig, ServeLimits  # noqa: E402
from adaptforge.serve.batcher import Job, MicroBatcher  # noqa: E402
from adaptforge.serve.schema import ClassifyRequest  # noqa: E402
from adaptforge.tasks import Example, load_task  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "src" / "adaptforge" / "data" / "tasks"
ENGINES = ("ours-http", "ours", "peft-swap", "peft-mixed", "merged")


# ---------------------------------------------------------------------------------------------- setup


def build_library(root: Path, backbone: Backbone, n: int, rank: int, seed: int) -> Library:
    """``n`` random rank-``rank`` adapters on the backbone's default targets, each for one shipped task."""
    lib = Library(root)
    have = {r.name for r in lib.list()}
    tasks = [load_task(TASKS / name) for name in sorted(p.name for p in TASKS.iterdir() if (p / "task.json").is_file())]
    shapes = backbone.target_shapes()
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        name = f"a{i:03d}"
        if name in have:
            continue
        task = tasks[i % len(tasks)]
        modules = {
            m: LoraModule(
                A=torch.randn(rank, fan_in, generator=gen) / fan_in**0.5,
                B=torch.randn(fan_out, rank, generator=gen) * 0.02,
                scale=2.0,
            )
            for m, (fan_out, fan_in) in shapes.items()
        }
        lib.add(
            LoraDelta(modules),
            name=name,
            base=backbone,
            task=TaskEntry(task.name, description=task.description),
            provenance=made_by("train", {"tasks": [{"name": task.name}]}, {"labels": {task.name: list(task.labels)}}),
        )
    return lib


class Workload:
    """The adapters with their tasks, a pool of texts, and request streams over them."""

    def __init__(self, lib: Library, backbone: Backbone, n_adapters: int) -> None:
        self.records = sorted(lib.list(base_fingerprint=backbone.fingerprint), key=lambda r: r.name)[:n_adapters]
        self.tasks = {t.name: t for t in (load_task(TASKS / r.task) for r in self.records)}
        pool = [e.text for t in self.tasks.values() for e in t.split("test")[:40]]
        self.texts = random.Random(0).sample(pool, min(len(pool), 200))

    def stream(self, kind: str, distinct: int, seed: int, zipf_s: float) -> Callable[[], tuple[str, str]]:
        """A draw of (adapter name, text): Zipf over a fixed random order of the adapters, or uniform."""
        rng = random.Random(seed)
        names = [r.name for r in self.records[:distinct]]
        random.Random(1).shuffle(names)
        weights = [1.0 / (k + 1) ** zipf_s for k in range(len(names))] if kind == "zipf" else [1.0] * len(names)
        cumulative = np.cumsum(weights) / sum(weights)

        def draw() -> tuple[str, str]:
            index = min(int(np.searchsorted(cumulative, rng.random())), len(names) - 1)
            return names[index], rng.choice(self.texts)

        return draw


# ---------------------------------------------------------------------------------------------- engines


class Engine:
    """``request(adapter, text) -> logits``, called from many client threads; ``close`` frees it."""

    name = ""

    def request(self, adapter: str, text: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Ours(Engine):
    """The serve service in-process: the planner on the client thread, then the batcher's queue."""

    name = "ours"

    def __init__(self, lib: Library, backbone: Backbone, config: ServeConfig) -> None:
        self.service = build_service(lib, config, ServeLimits(max_queue=4096), backbone=backbone)
        self.service.start()

    def request(self, adapter: str, text: str) -> torch.Tensor:
        work, _ = self.service.planner.classify(ClassifyRequest(texts=[text], adapter=adapter))
        return self.service.batcher.submit(work, 1).result()[0]

    def close(self) -> None:
        self.service.stop()


class OursHttp(Engine):
    """``adaptforge serve`` over loopback HTTP, one httpx client per client thread."""

    name = "ours-http"

    def __init__(self, lib: Library, backbone: Backbone, config: ServeConfig) -> None:
        service = build_service(lib, config, ServeLimits(max_queue=4096), backbone=backbone)
        self.server = start_in_thread(service)
        self.local = threading.local()

    def request(self, adapter: str, text: str) -> torch.Tensor:
        import httpx

        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(base_url=self.server.url, timeout=300)
        response = client.post("/v1/classify", json={"texts": [text], "adapter": adapter})
        response.raise_for_status()
        return torch.tensor(list(response.json()["results"][0]["logits"].values()))

    def close(self) -> None:
        self.server.stop()


class Baseline(Engine):
    """Shared by the PEFT and merged-model engines: tokenization, pooling, label embeddings cached per adapter,
    and the same micro-batcher as ours."""

    def __init__(self, lib: Library, backbone: Backbone, config: ServeConfig) -> None:
        self.lib = lib
        self.backbone = backbone
        self.scorer = make_scorer(backbone)
        self.max_loaded = config.max_loaded
        self.heads: dict[str, tuple[Any, Any]] = {}  # adapter -> (task, label ids)
        self.labels: dict[str, torch.Tensor] = {}  # adapter -> label embeddings (under the adapter)
        self.lock = threading.Lock()
        self.batcher = MicroBatcher(
            self.execute, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, max_queue=4096
        )
        self.batcher.start()

    def head(self, adapter: str) -> tuple[Any, Any]:
        with self.lock:
            if adapter not in self.heads:
                record = self.lib.get(adapter)
                task = load_task(TASKS / record.task)
                self.heads[adapter] = (task, self.scorer.encode_labels(task))
            return self.heads[adapter]

    def request(self, adapter: str, text: str) -> torch.Tensor:
        task, _ = self.head(adapter)
        ids = self.scorer.encode(task, [Example(text, task.labels[0])]).ids[0]
        return self.batcher.submit((adapter, ids), 1).result()

    def embed(
        self, model: torch.nn.Module, ids: Sequence[Sequence[int]], adapter_names: list[str] | None = None
    ) -> torch.Tensor:
        input_ids, mask = pad(ids, self.backbone.tokenizer.pad_token_id)
        extra = {} if adapter_names is None else {"adapter_names": adapter_names}  # PEFT's mixed-batch argument
        hidden = model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)

    def score(self, text_embeddings: torch.Tensor, adapter: str) -> torch.Tensor:
        return text_embeddings @ self.labels[adapter].T / self.scorer.temperature  # type: ignore[attr-defined]

    def execute(self, jobs: list[Job]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.batcher.stop()


class PeftEngine(Baseline):
    """A PEFT model over a private copy of the base; adapters loaded on demand, least recently used deleted."""

    def __init__(self, lib: Library, backbone: Backbone, config: ServeConfig) -> None:
        from peft import PeftModel

        super().__init__(lib, backbone, config)
        first = lib.get("a000")
        self.model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(first.path), adapter_name="a000")
        self.model.eval()
        self.loaded: OrderedDict[str, None] = OrderedDict(a000=None)

    def ensure(self, adapters: Sequence[str]) -> None:
        for adapter in adapters:
            if adapter in self.loaded:
                self.loaded.move_to_end(adapter)
                continue
            self.model.load_adapter(str(self.lib.get(adapter).path), adapter_name=adapter)
            self.loaded[adapter] = None
        while len(self.loaded) > max(self.max_loaded, len(set(adapters))):
            victim = next(a for a in self.loaded if a not in adapters)
            if victim == self.model.active_adapter:
                self.model.set_adapter(adapters[0])
            self.model.delete_adapter(victim)
            del self.loaded[victim]

    def label_embeddings(self, adapter: str, mixed: bool = False) -> None:
        if adapter not in self.labels:
            ids = self.head(adapter)[1].ids
            self.labels[adapter] = self.embed(self.model, ids, [adapter] * len(ids) if mixed else None)


class PeftSwap(PeftEngine):
    """(a) ``set_adapter`` and one forward per request."""

    name = "peft-swap"

    @torch.no_grad()
    def execute(self, jobs: list[Job]) -> None:
        for job in jobs:
            adapter, ids = job.payload
            self.ensure([adapter])
            self.model.set_adapter(adapter)
            self.label_embeddings(adapter)
            job.future.set_result(self.score(self.embed(self.model, [ids]), adapter)[0])


class PeftMixed(PeftEngine):
    """(b) one forward per batch, each row's adapter named in ``adapter_names``."""

    name = "peft-mixed"

    @torch.no_grad()
    def execute(self, jobs: list[Job]) -> None:
        adapters = [job.payload[0] for job in jobs]
        self.ensure(list(dict.fromkeys(adapters)))
        for adapter in dict.fromkeys(adapters):
            self.label_embeddings(adapter, mixed=True)
        embedded = self.embed(self.model, [job.payload[1] for job in jobs], adapters)
        for job, row in zip(jobs, embedded, strict=True):
            job.future.set_result(self.score(row[None], job.payload[0])[0])


class Merged(Baseline):
    """(c) one merged model per adapter (a copy of the base with dW added), made on a miss."""

    name = "merged"

    def __init__(self, lib: Library, backbone: Backbone, config: ServeConfig, keep: int) -> None:
        super().__init__(lib, backbone, config)
        self.keep = keep
        self.models: OrderedDict[str, torch.nn.Module] = OrderedDict()

    def model_of(self, adapter: str) -> torch.nn.Module:
        if adapter in self.models:
            self.models.move_to_end(adapter)
            return self.models[adapter]
        delta, _ = self.lib.load(adapter)
        model = copy.deepcopy(self.backbone.model)
        named = dict(model.named_modules())
        with torch.no_grad():
            for name in delta:
                named[name].weight.add_(delta.dense(name))
        self.models[adapter] = model
        while len(self.models) > self.keep:
            self.models.popitem(last=False)
        return model

    @torch.no_grad()
    def execute(self, jobs: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.payload[0], []).append(job)
        for adapter, members in groups.items():
            model = self.model_of(adapter)
            if adapter not in self.labels:
                self.labels[adapter] = self.embed(model, self.head(adapter)[1].ids)
            embedded = self.embed(model, [job.payload[1] for job in members])
            for job, row in zip(members, embedded, strict=True):
                job.future.set_result(self.score(row[None], adapter)[0])


def make_engine(name: str, lib: Library, backbone: Backbone, config: ServeConfig, merged_max: int) -> Engine:
    if name == "ours":
        return Ours(lib, backbone, config)
    if name == "ours-http":
        return OursHttp(lib, backbone, config)
    if name == "peft-swap":
        return PeftSwap(lib, backbone, config)
    if name == "peft-mixed":
        return PeftMixed(lib, backbone, config)
    if name == "merged":
        return Merged(lib, backbone, config, merged_max)
    raise SystemExit(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


# ---------------------------------------------------------------------------------------------- load


def run_load(engine: Engine, draw: Callable[[], tuple[str, str]], clients: int, seconds: float, warmup: float) -> dict:
    """Closed-loop clients for ``warmup + seconds``; only requests finished in the measured window count."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    draws = threading.Lock()

    def client() -> None:
        while True:
            with draws:
                adapter, text = draw()
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                engine.request(adapter, text)
            except Exception as err:  # noqa: BLE001 - counted and reported, the load goes on
                with lock:
                    errors.append(repr(err)[:200])
                continue
            t1 = time.perf_counter()
            if measure_from <= t0 and t1 <= stop_at:
                with lock:
                    latencies.append(t1 - t0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array(latencies)
    return {  # no request finished inside the window: no latency (null in the JSON, "-" in the table)
        "texts_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if latencies else None,
        "p99_ms": float(np.percentile(lat, 99) * 1000) if latencies else None,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def check_agreement(engines: dict[str, Engine], workload: Workload) -> float:
    """Largest logit difference between engines on a few (adapter, text) pairs: they compute the same thing."""
    pairs = [(r.name, workload.texts[i]) for i, r in enumerate(workload.records[:4])]
    worst = 0.0
    for adapter, text in pairs:
        outs = [e.request(adapter, text) for e in engines.values()]
        worst = max(worst, max(float((o - outs[0]).abs().max()) for o in outs))
    return worst


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(rows: list[dict], baselines: Sequence[str]) -> str:
    head = "| stream | clients | engine | texts/s | p50 ms | p99 ms | " + " | ".join(f"x {b}" for b in baselines) + " |"
    lines = [head, "|" + "---|" * (6 + len(baselines))]
    index = {(r["stream"], r["clients"], r["engine"]): r for r in rows}
    for r in rows:
        ratios = []
        for b in baselines:
            base = index.get((r["stream"], r["clients"], b))
            ok = base and base["texts_per_s"] > 0 and r["engine"].startswith("ours")
            ratios.append(f"{r['texts_per_s'] / base['texts_per_s']:.2f}" if ok else "")
        lines.append(
            f"| {r['stream']} | {r['clients']} | {r['engine']} | {r['texts_per_s']:.1f} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p99_ms'])} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(lines)


def plot_cliff(cliff: list[dict], max_loaded: int, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no cache-cliff plot")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for engine in dict.fromkeys(r["engine"] for r in cliff):
        points = [(r["distinct"], r["texts_per_s"]) for r in cliff if r["engine"] == engine]
        ax.plot(*zip(*points, strict=True), marker="o", label=engine)
    ax.axvline(max_loaded, color="gray", linestyle="--", label=f"--max-loaded {max_loaded}")
    ax.set_xlabel("distinct adapters in the stream (uniform)")
    ax.set_ylabel("throughput (texts/s)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_title("cache cliff")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--streams", default="zipf,uniform")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each cell")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per cell (best kept)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--max-loaded", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--merged-max", type=int, default=8, help="merged models kept in memory (90 MB each)")
    parser.add_argument("--cliff", default="8,16,32,64,100", help="distinct adapters for the cache cliff ('': skip)")
    parser.add_argument("--cliff-clients", type=int, default=16)
    parser.add_argument("--cliff-engines", default="ours")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/serve_bench"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = Backbone.load()
    lib = build_library(args.out / "library", backbone, args.adapters, args.rank, args.seed)
    workload = Workload(lib, backbone, args.adapters)
    config = ServeConfig(port=0, max_loaded=args.max_loaded, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    names = [e for e in args.engines.split(",") if e]
    engines = {name: make_engine(name, lib, backbone, config, args.merged_max) for name in names}
    try:
        print(f"engines agree within {check_agreement(engines, workload):.2e} (max |logit difference|)")
        rows = []
        for stream in args.streams.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                best: dict[str, dict] = {}
                for repeat in range(args.repeats):
                    order = names if repeat % 2 == 0 else names[::-1]  # interleaved, alternating order
                    for name in order:
                        draw = workload.stream(stream, len(workload.records), args.seed + repeat, args.zipf_s)
                        cell = run_load(engines[name], draw, clients, args.seconds, args.warmup)
                        if name not in best or cell["texts_per_s"] > best[name]["texts_per_s"]:
                            best[name] = cell
                        print(f"{stream:8} clients={clients:3} {name:11} {cell}", flush=True)
                rows += [{"stream": stream, "clients": clients, "engine": n, **best[n]} for n in names]
        cliff = []
        for distinct in (int(d) for d in args.cliff.split(",") if d):
            distinct = min(distinct, len(workload.records))
            for name in args.cliff_engines.split(","):
                if name not in engines:
                    continue
                draw = workload.stream("uniform", distinct, args.seed, args.zipf_s)
                cell = run_load(engines[name], draw, args.cliff_clients, args.seconds, args.warmup)
                cliff.append({"engine": name, "distinct": distinct, **cell})
                print(f"cliff distinct={distinct:3} {name:11} {cell}", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    baselines = [b for b in ("peft-swap", "peft-mixed", "merged") if b in names]
    table = markdown(rows, baselines)
    print(table)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"settings": settings, "torch_threads": torch.get_num_threads(), "rows": rows, "cliff": cliff}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    if cliff and plot_cliff(cliff, args.max_loaded, args.out / "cache_cliff.png"):
        print(f"cache cliff plot: {args.out / 'cache_cliff.png'}")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
