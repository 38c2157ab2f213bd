"""A newcomer's walk (issue 35) through the real CLI on the real MiniLM: long steps report progress with rate and
ETA off a terminal, results that could not run say so, and what a user learns from the output is true."""

from __future__ import annotations

import json
import re

import pytest
from helpers import refused, run_cli, small_task

from adaptforge.library import BaseRef, Library, TaskEntry
from adaptforge.tasks import write_task

PROGRESS = re.compile(r"^(?P<what>[^:\n]+: [^:\n]+): (?P<done>\d+)/(?P<total>\d+)  [\d.]+/s  ETA \d+s", re.M)


@pytest.fixture(scope="module")
def walk_setup(trained_library, tmp_path_factory):
    """The shared trained library and movie_review, a task it lacks."""
    new_task = write_task(small_task("movie_review", n_train=24, n_test=16), tmp_path_factory.mktemp("new") / "mr")
    return trained_library, new_task


def progress_lines(stderr: str, what: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line of ``what`` on stderr."""
    return [(int(m["done"]), int(m["total"])) for m in PROGRESS.finditer(stderr) if m["what"] == what]


def test_long_steps_print_progress_with_rate_and_eta_off_a_terminal(trained_copy, walk_setup, tmp_path):
    """compose (the LoraHub search), generate (the generator's fit) and prune (its layers, its evaluations) print
    done/total, rate and ETA lines on a pipe; ``--progress-every 0`` prints one per step."""
    task = walk_setup[1]
    composed = run_cli(
        "--progress-every", 0, "compose", task, "-l", trained_copy.root, "--shots", 8, "--method", "lorahub",
        "--candidates", 3, "--param", "budget=5", "--out", "mr", "--limit", 16,
    )  # fmt: skip
    assert progress_lines(composed.stderr, "lorahub search: evaluations") == [(i, 5) for i in range(1, 6)]
    assert progress_lines(composed.stderr, "scoring movie_review: examples")[-1] == (16, 16)

    generated = run_cli(
        "--progress-every", 0, "generate", "-l", trained_copy.root, "--description", "Is this movie review positive?",
        "--labels", "negative,positive", "--out", "gen", "--param", "steps=30",
    )  # fmt: skip
    fit = progress_lines(generated.stderr, "generator fit: steps")
    assert fit[-1] == (30, 30) and len(fit) >= 30

    pruned = run_cli(
        "--progress-every", 0, "prune", "--method", "magnitude", "--sparsity", 0.5, "--domain", task,
        "--limit", 8, "--out", tmp_path / "pruned",
    )  # fmt: skip
    layers = progress_lines(pruned.stderr, "prune magnitude: layers")
    assert layers == [(i, 36) for i in range(1, 37)]  # MiniLM: 6 blocks x 6 linear layers

    # the default throttle (a line per 5 s) keeps a short step quiet: no line at all, not even a final one
    quiet = run_cli("compose", task, "-l", trained_copy.root, "--shots", 8, "--method", "lorahub", "--candidates", 2,
                    "--param", "budget=2", "--out", "mr2", "--no-eval")  # fmt: skip
    assert not PROGRESS.search(quiet.stderr)


def test_eval_on_another_model_keeps_the_zero_shot_row_and_fails_when_nothing_could_run(
    trained_copy, walk_setup, tiny_llama_dir
):
    """An adapter made on MiniLM is skipped on ``--model OTHER``; the zero-shot row asked for still runs there, and
    a request of which nothing could run exits non-zero instead of printing an empty table."""
    task = walk_setup[1]
    both = run_cli("eval", task, "-l", trained_copy.root, "-a", "sst2-a", "--zero-shot", "--model", tiny_llama_dir,
                   "--limit", 8, "--json")  # fmt: skip
    rows = json.loads(both.stdout)
    assert [(r["adapter"], r["n"]) for r in rows["results"]] == [(None, 8)]
    assert len(rows["skipped"]) == 1 and rows["skipped"][0].startswith("sst2-a: made on base")
    table = run_cli("eval", task, "-l", trained_copy.root, "-a", "sst2-a", "--zero-shot", "--limit", 8).stdout
    assert "movie_review (n=8)" in table  # the examples behind every cell of the column
    alone = run_cli(
        "eval", task, "-l", trained_copy.root, "-a", "sst2-a", "--model", tiny_llama_dir, "--limit", 8, ok=False
    )
    assert alone.exit_code == 2 and "Traceback" not in alone.output
    flat = " ".join(alone.output.split())
    assert "skipped: sst2-a" in flat and "nothing was evaluated" in flat and "--zero-shot" in flat


def test_a_csv_without_a_description_warns_and_says_how_to_give_one(tmp_path, caplog):
    """The warning goes through logging (the CLI prints WARNING records on stderr; pytest captures them here)."""
    rows = ["review,sentiment"] + [f"{w} film,{'pos' if w == 'good' else 'neg'}" for w in ("good", "bad") * 6]
    csv = tmp_path / "reviews.csv"
    csv.write_text("\n".join(rows) + "\n")
    missing = refused("eval", csv, "--limit", 2, contains=("reviews.csv", "column not found", "--text-col"))
    assert "--label-col" in " ".join(missing.split())
    args = ("eval", csv, "--text-col", "review", "--label-col", "sentiment", "--split", "train", "--limit", 4)
    caplog.set_level("WARNING", logger="adaptforge.tasks")
    run_cli(*args)
    warned = " ".join(caplog.text.split())
    assert "no description" in warned and "reviews.description.txt" in warned and "--description" in warned
    caplog.clear()
    run_cli(*args, "--description", "Is the review positive?")
    (tmp_path / "reviews.description.txt").write_text("Is the review positive?\n")
    run_cli(*args)
    assert "no description" not in caplog.text


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


def test_an_export_names_the_hub_id_its_card_scores_like_adaptforge_and_import_restores_the_record(
    trained_copy, walk_setup, minilm, tmp_path, caplog
):
    """The export's config names ``sentence-transformers/all-MiniLM-L6-v2``; the card's two recipes (plain PEFT and
    sentence-transformers' ``load_adapter``), run offline on the local copy, give adaptforge's logits; importing
    the export brings back task, labels, description, metrics and lineage, with no warning about the base."""
    import torch

    from adaptforge.backbone import resolve_model_path
    from adaptforge.evaluate import logits_of
    from adaptforge.scorers import make_scorer
    from adaptforge.tasks import Example, load_task

    sst2 = walk_setup[0][1]["sst2"]
    run_cli("eval", sst2, "-l", trained_copy.root, "-a", "sst2-a", "--limit", 8)
    run_cli("merge", "sst2-a", "agnews-a", "-l", trained_copy.root, "--method", "task_arithmetic", "--out", "both")
    run_cli("library", "export", "sst2-a", "-l", trained_copy.root, "--out", tmp_path / "exported")
    folder = tmp_path / "exported"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = (folder / "README.md").read_text()
    peft_recipe, st_recipe = python_blocks(card)
    local = resolve_model_path(None)
    namespace: dict = {}
    exec(peft_recipe.replace("sentence-transformers/all-MiniLM-L6-v2", local).replace("<this folder>", str(folder)),
         namespace)  # fmt: skip
    task = load_task(sst2)
    assert namespace["labels"] == list(task.labels)
    delta, _ = trained_copy.load("sst2-a")
    with minilm.applied(delta) as model:
        ours = logits_of(make_scorer(minilm), task, [Example("an example input", task.labels[0])], model)
    assert torch.allclose(namespace["logits"], ours, atol=1e-4)
    exec(st_recipe, namespace)
    assert torch.allclose(torch.as_tensor(namespace["logits"]), ours, atol=1e-4)

    caplog.set_level("WARNING")
    other = tmp_path / "other"
    run_cli("library", "import", folder, "-l", other, "--name", "again")
    assert "names base model" not in caplog.text  # the hub id is the embedded model's own name
    again = json.loads(run_cli("library", "show", "again", "-l", other, "--json").stdout)
    assert (again["task"], again["description"]) == ("sst2", task.description)
    assert again["params"]["labels"] == {"sst2": list(task.labels)}
    original = {(m.task, m.split, m.metric, m.value, m.n) for m in trained_copy.metrics("sst2-a")}
    restored = {(m["task"], m["split"], m["metric"], m["value"], m["n"]) for m in again["metrics"]}
    assert restored == original and ("sst2", "test", "accuracy") in {r[:3] for r in restored}
    assert again["recipe"]["origin"]["method"] == "train" and again["recipe"]["origin"]["name"] == "sst2-a"
    run_cli("library", "export", "both", "-l", trained_copy.root, "--out", tmp_path / "merged")
    run_cli("library", "import", tmp_path / "merged", "-l", other, "--name", "both")
    both = json.loads(run_cli("library", "show", "both", "-l", other, "--json").stdout)
    assert [p["name"] for p in both["recipe"]["origin"]["lineage"]] == ["sst2-a", "agnews-a"]
    assert "imported from both (merge, task_arithmetic), made from sst2-a, agnews-a" in " ".join(
        run_cli("library", "show", "both", "-l", other).stdout.split()
    )
    message = refused("library", "rm", "sst2-a", "-l", trained_copy.root, contains=("parent of 'both'", "pass --force"))
    assert "force=True" not in message


@pytest.mark.parametrize("verb", ["train", "eval", "merge", "compose", "generate", "serve", "library"])
def test_help_shows_examples_whose_flags_exist(verb):
    """Every verb a newcomer starts with shows examples under ``--help``, and every ``--flag`` an example uses is
    an option of the command it runs (so the examples cannot rot silently)."""
    from typer.testing import CliRunner

    from adaptforge.cli import app

    def help_of(*words: str) -> str:
        result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result.output

    text = help_of(verb)
    assert "Examples" in text
    commands = re.sub(r"\\\s*\n\s*", " ", text.split("Examples", 1)[1])  # join continued lines
    lines = [line.strip() for line in commands.splitlines() if line.strip().startswith("adaptforge ")]
    assert len(lines) >= 2
    for line in lines:
        words = line.split()
        command = words[1:3] if verb == "library" else words[1:2]
        options = help_of(*command)
        for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))):
            assert flag in options, f"{line}: {flag} is not an option of adaptforge {' '.join(command)}"


def test_train_refuses_a_stopped_runs_checkpoint_before_loading_the_model(minilm, no_model_load, tmp_path):
    from adaptforge.train.config import TrainConfig
    from adaptforge.train.trainer import train

    lib = Library(tmp_path / "lib")
    task = small_task("sst2", n_train=16, n_test=8)
    folder = write_task(task, tmp_path / "sst2")
    cfg = TrainConfig(max_train=16, batch_size=4, checkpoint_every=1, rank=2, targets=("query",))
    train(task, minilm, cfg, checkpoint_dir=lib.run_dir("s"), stop_after=2)  # a run stopped at step 2
    refused("train", folder, "-l", lib.root, "--name", "s", contains=("stopped at step 2", "--resume", "--overwrite"))
    refused("train", tmp_path / "none.csv", "-l", lib.root, "--name", "t", contains="no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("review,label\nfine,pos\n")
    refused("train", bad, "-l", lib.root, "--name", "t", contains=("column not found", "--text-col"))


def test_icm_without_snapshots_is_refused_before_loading_the_model(trained_copy, no_model_load):
    refused(
        "generate", "-l", trained_copy.root, "--method", "icm", "--out", "g", "--description", "Is it positive?",
        "--labels", "negative,positive", "--shots", 0,
        contains=("no task adapter has training snapshots", "--snapshots"),
    )  # fmt: skip


def test_train_says_it_loads_the_base_model(tmp_path):
    folder = write_task(small_task("sst2", n_train=8, n_test=8), tmp_path / "sst2")
    result = run_cli("train", folder, "-l", tmp_path / "lib", "--name", "s", "--max-train", 8, "--epochs", 1,
                     "--batch-size", 8, "--rank", 2, "--targets", "query")  # fmt: skip
    assert "loading base model embedded MiniLM" in result.stderr


@pytest.mark.slow
def test_ctrl_c_during_train_says_where_the_checkpoint_is_and_resume_finishes(tmp_path):
    """SIGINT to a real ``adaptforge train`` process after its first checkpoints: exit 130 with the checkpoint's
    folder and the resume command; ``--resume`` then finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = write_task(small_task("sst2", n_train=32, n_test=8), tmp_path / "sst2")
    lib = tmp_path / "lib"
    args = ["train", folder, "-l", lib, "--name", "s", "--batch-size", 2, "--epochs", 10, "--checkpoint-every", 1,
            "--rank", 2, "--targets", "query", "--max-train", 32]  # fmt: skip
    command = [sys.executable, "-m", "adaptforge.cli", *map(str, args)]
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not list((lib / "runs" / "s").rglob("state.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    flat = " ".join(stderr.split())
    assert proc.returncode == 130, stderr
    assert "interrupted: the last checkpoint (step" in flat and str(lib / "runs" / "s") in flat and "--resume" in flat
    resumed = run_cli(*args, "--resume")
    assert "added s" in resumed.stdout


def test_a_composed_adapter_below_zero_shot_is_flagged_and_the_generator_method_is_recorded(minilm, tmp_path):
    """The only candidate is a scrambling adapter (large random factors) stored as a task adapter: composing from it
    scores below zero-shot, and compose says so after its evaluation. A generated adapter records its generator's
    method (``span``) as its method, under the kind ``generate``."""
    from helpers import MINILM_ATTENTION, random_delta

    from adaptforge.scorers import describe, make_scorer

    lib = Library(tmp_path / "lib")
    task = small_task("sst2", n_train=16, n_test=48)
    folder = write_task(task, tmp_path / "sst2")
    other = small_task("subjectivity", n_train=8, n_test=8)
    for seed, name in enumerate(("scrambler", "scrambler-2")):
        entry = TaskEntry(other.name, other.description, describe(make_scorer(minilm), other))
        lib.add(
            random_delta(MINILM_ATTENTION, rank=8, scale=2.0, seed=seed, std=0.1), name=name, base=minilm, task=entry
        )
    composed = run_cli("compose", folder, "-l", lib.root, "--shots", 0, "--method", "retrieval", "--candidates", 1,
                       "--out", "c", "--limit", 48)  # fmt: skip
    flat = " ".join(composed.output.split())
    assert "warning: c scores" in flat and "below zero-shot" in flat and "library rm c" in flat

    generated = run_cli("generate", "-l", lib.root, "--description", task.description, "--labels",
                        ",".join(task.labels), "--out", "g", "--param", "steps=20", "--json")  # fmt: skip
    assert "learned from 2 library adapters" in " ".join(generated.output.split())
    record = lib.get("g")
    assert (record.kind, record.method) == ("generate", "span")


def test_the_report_names_a_model_folder_base_by_its_folder(minilm, tmp_path):
    from helpers import minilm_delta

    lib = Library(tmp_path / "lib")
    folder = str((tmp_path / "models" / "pruned-sst2").resolve())
    lib.add(minilm_delta(0), name="on-pruned", base=BaseRef(folder, minilm.fingerprint), task=TaskEntry("sst2"))
    run_cli("report", "-l", lib.root, "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "base pruned-sst2 ·" in page and f"base {folder} ·" not in page


def test_a_side_effect_limit_evaluation_never_hides_an_explicit_one_and_odd_n_cells_are_marked(
    trained_copy, trained_library, tmp_path
):
    """``eval`` on the whole test split, then ``merge --eval --limit 8`` (which scores the merge's own adapters on
    8 examples as a side effect, recorded later): the report's grid and the sweep's recorded accuracy still show
    the explicit evaluation, and the merge's cell, on 8 examples, is marked as not comparable with its column."""
    from adaptforge.pipelines.sweep import recorded_accuracy

    sst2 = trained_library[1]["sst2"]
    run_cli("eval", sst2, "-l", trained_copy.root, "-a", "sst2-a", "--zero-shot")  # the whole test split: 24 examples
    (explicit,) = [m for m in trained_copy.metrics("sst2-a") if m.metric == "accuracy"]
    assert explicit.n == 24
    run_cli("merge", "sst2-a", "agnews-a", "-l", trained_copy.root, "--method", "task_arithmetic", "--out", "m",
            "--eval", sst2, "--limit", 8)  # fmt: skip
    rows = [m for m in trained_copy.metrics("sst2-a") if m.metric == "accuracy"]
    assert [m.n for m in rows] == [24, 8]  # the side effect is recorded, and newer
    assert recorded_accuracy(trained_copy, "sst2-a", "test") == explicit.value

    run_cli("report", "-l", trained_copy.root, "--out", tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    heat = text[text.index('id="heatmap-test"') : text.index("</table>", text.index('id="heatmap-test"'))]

    def cell(adapter: str) -> str:
        ident = trained_copy.get(adapter).id
        (tag,) = re.findall(rf'<td[^>]*data-adapter-id="{ident}"[^>]*data-task="sst2"[^>]*>', heat)
        return tag

    own = cell("sst2-a")
    assert 'data-n="24"' in own and f'data-value="{explicit.value!r}"' in own and "n-differs" not in own
    merged = cell("m")
    assert 'data-n="8"' in merged and "n-differs" in merged and "NOT comparable" in merged
    assert "Examples per cell (n): sst2 24" in text and "&#8224; a cell scored on another number" in text


def test_merge_eval_gives_each_csv_task_its_own_columns(trained_copy, tmp_path):
    """Two CSV tasks with different column names in one ``merge --eval``: ``TASK:TEXT_COL:LABEL_COL`` per task;
    ``--text-col`` alone would fit only one of them, and a wrong column still names the file and the column."""
    reviews, news = tmp_path / "reviews.csv", tmp_path / "news.csv"
    reviews.write_text(
        "review,stars\n" + "".join(f"{w} film,{'pos' if w == 'good' else 'neg'}\n" for w in ["good", "bad"] * 6)
    )
    news.write_text("body,topic\n" + "".join(f"{w} today,{w}\n" for w in ["sports", "business"] * 6))
    for csv in (reviews, news):
        csv.with_suffix(".description.txt").write_text("Classify the text.\n")
    args = ("merge", "sst2-a", "agnews-a", "-l", trained_copy.root, "--method", "task_arithmetic", "--split", "train")
    merged = run_cli(*args, "--out", "m", "--eval", f"{reviews}:review:stars", "--eval", f"{news}:body:topic",
                     "--limit", 6, "--json")  # fmt: skip
    rows = json.loads(merged.stdout)["eval"]["tasks"]
    assert sorted((r["task"], r["n"]) for r in rows) == [("news", 6), ("reviews", 6)]
    refused(*args, "--out", "m2", "--eval", f"{reviews}:review:stars", "--eval", news, "--text-col", "review",
            contains=("news.csv", "column not found", "--text-col"))  # fmt: skip
    assert not trained_copy.exists("m2")
