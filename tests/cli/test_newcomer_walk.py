"""A newcomer's walk (issue 35) through the real CLI on the real MiniLM: long steps report progress with rate and
ETA off a terminal, results that could not run say so, and what a user learns from the output is true."""

from __future__ import annotations

import re

import pytest
from conftest import library_copy, run_cli, small_task

from adaptforge.library import Library
from adaptforge.tasks import write_task

PROGRESS = re.compile(r"^(?P<what>[^:\n]+: [^:\n]+): (?P<done>\d+)/(?P<total>\d+)  [\d.]+/s  ETA \d+s", re.M)


@pytest.fixture(scope="module")
def setup(trained_library, tmp_path_factory):
    """The shared trained library and movie_review, a task it lacks."""
    new_task = write_task(small_task("movie_review", n_train=24, n_test=16), tmp_path_factory.mktemp("new") / "mr")
    return trained_library, new_task


@pytest.fixture
def lib(setup, tmp_path) -> Library:
    return library_copy(setup[0], tmp_path / "lib")


def progress_lines(stderr: str, what: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line of ``what`` on stderr."""
    return [(int(m["done"]), int(m["total"])) for m in PROGRESS.finditer(stderr) if m["what"] == what]


def test_long_steps_print_progress_with_rate_and_eta_off_a_terminal(lib, setup, tmp_path):
    """compose (the LoraHub search), generate (the generator's fit) and prune (its layers, its evaluations) print
    done/total, rate and ETA lines on a pipe; ``--progress-every 0`` prints one per step."""
    task = setup[1]
    composed = run_cli(
        "--progress-every", 0, "compose", task, "-l", lib.root, "--shots", 8, "--method", "lorahub",
        "--candidates", 3, "--param", "budget=5", "--out", "mr", "--limit", 16,
    )  # fmt: skip
    assert progress_lines(composed.stderr, "lorahub search: evaluations") == [(i, 5) for i in range(1, 6)]
    assert progress_lines(composed.stderr, "scoring movie_review: examples")[-1] == (16, 16)

    generated = run_cli(
        "--progress-every", 0, "generate", "-l", lib.root, "--description", "Is this movie review positive?",
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
    quiet = run_cli("compose", task, "-l", lib.root, "--shots", 8, "--method", "lorahub", "--candidates", 2,
                    "--param", "budget=2", "--out", "mr2", "--no-eval")  # fmt: skip
    assert not PROGRESS.search(quiet.stderr)
