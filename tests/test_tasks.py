"""Task loading, validation, splitting and sampling, on real files written to tmp_path."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from adaptforge.core import AdaptforgeError
from adaptforge.tasks import (
    MAX_INFERRED_LABELS,
    Example,
    Task,
    TaskFormatError,
    load_task,
    load_tasks,
    write_task,
)

SHARED_TASKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tasks"
LABELS = ["pos", "neg", "neutral"]


def shared_task(name: str) -> Path:
    folder = SHARED_TASKS / name
    if not (folder / "task.json").is_file():
        pytest.skip(f"shared task data not found at {folder}")
    return folder


def make_folder(root: Path, meta: object = None, splits: dict[str, list[object]] | None = None) -> Path:
    """A task folder from Python values; records that are strings are written verbatim (for malformed lines)."""
    root.mkdir(parents=True, exist_ok=True)
    if meta is None:
        meta = {"name": "toy", "description": "Classify the toy text.", "labels": LABELS}
    (root / "task.json").write_text(meta if isinstance(meta, str) else json.dumps(meta), encoding="utf-8")
    if splits is None:
        splits = {
            "train": [{"text": f"t{i}", "label": LABELS[i % 3]} for i in range(9)],
            "test": [{"text": f"s{i}", "label": LABELS[i % 3]} for i in range(3)],
        }
    for split, records in splits.items():
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        (root / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


def toy_task(counts: dict[str, int] | None = None) -> Task:
    counts = counts or {"pos": 60, "neg": 30, "neutral": 10}
    train = [Example(f"{label} {i}", label) for label, n in counts.items() for i in range(n)]
    return Task("toy", "Classify the toy text.", tuple(LABELS), {"train": train, "test": train[:5]})


def raises(match_all: list[str], fn, *args, **kwargs) -> TaskFormatError:
    """Run ``fn`` expecting a TaskFormatError whose message contains every string in ``match_all``."""
    with pytest.raises(TaskFormatError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for part in match_all:
        assert part in message, f"{part!r} not in error message: {message}"
    return info.value


# --------------------------------------------------------------------------------------------- real data


def test_loads_real_shared_task_folder():
    folder = shared_task("cb")
    meta = json.loads((folder / "task.json").read_text())
    task = load_task(folder)
    assert task.name == "cb" == meta["name"]
    assert task.description == meta["description"]
    assert task.labels == tuple(meta["labels"])
    assert task.source == meta["source"] and task.license == meta["license"] and task.version is None
    assert task.path == folder
    assert list(task.splits) == ["train", "dev", "test"]
    for split, size in meta["sizes"].items():
        assert len(task.split(split)) == size
    assert all(isinstance(e, Example) and e.label in task.labels for e in task.split("train"))
    ids = task.label_ids("test")
    assert ids == [task.labels.index(e.label) for e in task.split("test")]
    assert set(ids) == set(range(len(task.labels)))


def test_load_tasks_reads_several_real_tasks_and_rejects_duplicates(tmp_path):
    folders = [shared_task("cb"), shared_task("rte")]
    assert [t.name for t in load_tasks(folders)] == ["cb", "rte"]
    copy = write_task(load_task(folders[0]), tmp_path / "cb_copy")
    raises(["'cb'", "unique"], load_tasks, [folders[0], copy])
    raises(["list of paths"], load_tasks, str(folders[0]))


def test_task_json_path_loads_its_folder(tmp_path):
    folder = make_folder(tmp_path / "toy")
    assert load_task(folder / "task.json") == load_task(folder)


# --------------------------------------------------------------------------------------------- task folder errors


def test_error_is_an_adaptforge_error():
    assert issubclass(TaskFormatError, AdaptforgeError)


def test_invalid_json_in_task_json_names_file_and_line(tmp_path):
    folder = make_folder(tmp_path / "toy", meta='{\n  "name": "toy",\n  "labels": [oops]\n}')
    raises(["task.json", "line 3", "invalid JSON"], load_task, folder)


@pytest.mark.parametrize("bad_line", ['{"text": "x", "label": ', "not json at all"])
def test_invalid_json_line_names_file_and_line(tmp_path, bad_line):
    records = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, bad_line]
    folder = make_folder(tmp_path / "toy", splits={"train": records})
    raises(["train.jsonl", "line 3", "invalid JSON"], load_task, folder)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    folder = make_folder(tmp_path / "toy", splits={"train": [{"text": "a", "label": "pos"}, '["a", "pos"]']})
    raises(["train.jsonl", "line 2", "expected a JSON object"], load_task, folder)


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_record_field(tmp_path, missing):
    record = {"text": "a", "label": "pos"}
    del record[missing]
    folder = make_folder(tmp_path / "toy", splits={"train": [{"text": "x", "label": "neg"}], "test": [record]})
    raises(["test.jsonl", "line 1", f"field {missing!r}", "missing"], load_task, folder)


@pytest.mark.parametrize("missing", ["name", "description", "labels"])
def test_missing_task_json_field(tmp_path, missing):
    meta = {"name": "toy", "description": "d", "labels": LABELS}
    del meta[missing]
    folder = make_folder(tmp_path / "toy", meta=meta)
    raises(["task.json", f"field {missing!r}", "missing"], load_task, folder)


def test_missing_task_json_field_can_be_supplied_by_argument(tmp_path):
    folder = make_folder(tmp_path / "toy", meta={"name": "toy", "labels": LABELS})
    assert load_task(folder, description="given").description == "given"


def test_label_not_in_labels_names_label_and_allowed(tmp_path):
    records = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "Positive"}]
    folder = make_folder(tmp_path / "toy", splits={"train": records})
    raises(["train.jsonl", "line 3", "field 'label'", "'Positive'", "['pos', 'neg', 'neutral']"], load_task, folder)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_split_file(tmp_path, content):
    folder = make_folder(tmp_path / "toy")
    (folder / "dev.jsonl").write_text(content)
    raises(["dev.jsonl", "empty"], load_task, folder)


def test_duplicate_labels(tmp_path):
    folder = make_folder(tmp_path / "toy", meta={"name": "toy", "description": "d", "labels": ["a", "b", "a"]})
    raises(["task.json", "field 'labels'", "unique", "'a'"], load_task, folder)


@pytest.mark.parametrize("labels", ["pos,neg", ["pos", 1], [["pos"], ["neg"]], {"pos": 0}])
def test_labels_not_a_list_of_strings(tmp_path, labels):
    folder = make_folder(tmp_path / "toy", meta={"name": "toy", "description": "d", "labels": labels})
    raises(["task.json", "field 'labels'", "list of strings"], load_task, folder)


def test_single_label_is_rejected(tmp_path):
    folder = make_folder(
        tmp_path / "toy",
        meta={"name": "toy", "description": "d", "labels": ["pos"]},
        splits={"train": [{"text": "a", "label": "pos"}]},
    )
    raises(["task.json", "field 'labels'", "at least 2"], load_task, folder)


@pytest.mark.parametrize("text", [3, None, ["a", "b"], {"t": 1}])
def test_non_string_text(tmp_path, text):
    records = [{"text": "ok", "label": "pos"}, {"text": text, "label": "neg"}]
    folder = make_folder(tmp_path / "toy", splits={"train": records})
    raises(["train.jsonl", "line 2", "field 'text'", "expected a string"], load_task, folder)


def test_non_string_label(tmp_path):
    folder = make_folder(tmp_path / "toy", splits={"train": [{"text": "a", "label": 1}]})
    raises(["train.jsonl", "line 1", "field 'label'", "expected a string"], load_task, folder)


def test_non_string_task_json_field(tmp_path):
    folder = make_folder(tmp_path / "toy", meta={"name": "toy", "description": ["d"], "labels": LABELS})
    raises(["task.json", "field 'description'", "expected a string"], load_task, folder)


def test_folder_needs_train_or_test(tmp_path):
    folder = make_folder(tmp_path / "toy", splits={"dev": [{"text": "a", "label": "pos"}]})
    raises([str(folder), "train.jsonl or test.jsonl", "dev.jsonl"], load_task, folder)


def test_absent_splits_stay_absent(tmp_path):
    folder = make_folder(tmp_path / "toy", splits={"test": [{"text": "a", "label": "pos"}]})
    task = load_task(folder)
    assert list(task.splits) == ["test"]
    raises(["'toy'", "no split 'train'", "available: test"], task.split, "train")


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    folder = make_folder(tmp_path / "toy", splits={"train": [{"text": "a", "label": "pos"}, "", "{bad"]})
    raises(["train.jsonl", "line 3"], load_task, folder)


def test_custom_record_fields(tmp_path):
    records = [{"sentence": "a", "y": "pos"}, {"sentence": "b", "y": "neg"}]
    folder = make_folder(tmp_path / "toy", splits={"train": records})
    task = load_task(folder, text_col="sentence", label_col="y")
    assert task.split("train") == (Example("a", "pos"), Example("b", "neg"))
    raises(["train.jsonl", "line 1", "field 'text'"], load_task, folder)


def test_not_a_task_folder_and_unknown_formats(tmp_path):
    raises([str(tmp_path), "no task.json"], load_task, tmp_path)
    raises(["no such file"], load_task, tmp_path / "missing")
    (tmp_path / "data.txt").write_text("x")
    raises(["data.txt", "unsupported"], load_task, tmp_path / "data.txt")


def test_extra_task_json_keys_are_allowed_and_kept(tmp_path):
    meta = {
        "name": "toy",
        "description": "d",
        "labels": LABELS,
        "source": "here",
        "license": "MIT",
        "version": "2",
        "sizes": {"train": 9},
        "anything": [1, 2],
    }
    task = load_task(make_folder(tmp_path / "toy", meta=meta))
    assert (task.source, task.license, task.version) == ("here", "MIT", "2")


def test_labels_argument_overrides_order_and_is_checked(tmp_path):
    folder = make_folder(tmp_path / "toy")
    assert load_task(folder, labels=["neutral", "neg", "pos"]).labels == ("neutral", "neg", "pos")
    raises(["train.jsonl", "field 'label'", "'neutral'"], load_task, folder, labels=["pos", "neg"])
    raises(["labels=", "unique"], load_task, folder, labels=["pos", "pos"])


# ------------------------------------------------------------------------------------- Super-NaturalInstructions


def sni_payload(n: int = 40, labels: tuple[str, ...] = ("POS", "NEG")) -> dict[str, object]:
    return {
        "Contributors": ["someone"],
        "Source": ["sst2"],
        "Definition": ["Classify the sentence as POS or NEG.", "Answer with one word."],
        "Positive Examples": [{"input": "great", "output": "POS", "explanation": "it is positive"}],
        "Instances": [
            {"id": f"x-{i}", "input": f"sentence {i}", "output": [labels[i % len(labels)]]} for i in range(n)
        ],
    }


def write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return path


def test_sni_load_and_round_trip(tmp_path):
    path = write_json(tmp_path / "task363_sst2_polarity.json", sni_payload(40))
    task = load_task(path)
    assert task.name == "task363_sst2_polarity"
    assert task.description == "Classify the sentence as POS or NEG.\nAnswer with one word."
    assert task.labels == ("NEG", "POS")  # sorted distinct outputs
    assert task.source == "sst2"
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 32, "dev": 4, "test": 4}
    for split in ("dev", "test"):
        assert Counter(e.label for e in task.split(split)) == {"POS": 2, "NEG": 2}
    all_examples = [e for examples in task.splits.values() for e in examples]
    assert sorted(e.text for e in all_examples) == sorted(f"sentence {i}" for i in range(40))
    assert all(e.label == ("POS" if int(e.text.split()[1]) % 2 == 0 else "NEG") for e in all_examples)
    assert load_task(path) == task  # deterministic
    assert load_task(path, seed=1) != task  # the seed moves the split
    back = load_task(write_task(task, tmp_path / "out"))
    assert back == task


def test_sni_overrides(tmp_path):
    path = write_json(tmp_path / "t.json", {**sni_payload(20), "Definition": "One string."})
    task = load_task(path, name="renamed", description="mine", labels=["POS", "NEG"])
    assert (task.name, task.description, task.labels) == ("renamed", "mine", ("POS", "NEG"))
    assert load_task(path).description == "One string."


def test_sni_too_many_outputs_is_generative(tmp_path):
    labels = tuple(f"answer {i}" for i in range(MAX_INFERRED_LABELS + 1))
    path = write_json(tmp_path / "gen.json", sni_payload(120, labels))
    raises(["gen.json", "output", "generative", str(MAX_INFERRED_LABELS + 1)], load_task, path)
    assert len(load_task(path, labels=labels).labels) == MAX_INFERRED_LABELS + 1


def test_sni_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "Definition": ["x"],\n "Instances": [\n  {"input": "a" "output": ["b"]}\n ]\n}')
    raises(["bad.json", "line 4", "invalid JSON"], load_task, path)

    payload = sni_payload(10)
    payload["Instances"][3] = {"input": "a"}
    raises(["bad.json", "Instances[3].output", "missing"], load_task, write_json(path, payload))

    payload = sni_payload(10)
    payload["Instances"][5]["input"] = 7
    raises(["bad.json", "Instances[5].input", "expected a string"], load_task, write_json(path, payload))

    payload = sni_payload(10)
    payload["Instances"][2]["output"] = []
    raises(["bad.json", "Instances[2].output", "non-empty list"], load_task, write_json(path, payload))

    payload = sni_payload(10)
    payload["Instances"][4]["output"] = ["MAYBE"]
    raises(
        ["bad.json", "Instances[4].output", "'MAYBE'", "['POS', 'NEG']"],
        load_task,
        write_json(path, payload),
        labels=["POS", "NEG"],
    )

    payload = sni_payload(10)
    del payload["Definition"]
    raises(["bad.json", "field 'Definition'"], load_task, write_json(path, payload))

    raises(["bad.json", "field 'Instances'"], load_task, write_json(path, {"Definition": ["x"]}))
    raises(
        ["bad.json", "field 'Instances'", "non-empty"],
        load_task,
        write_json(path, {"Definition": ["x"], "Instances": []}),
    )


# --------------------------------------------------------------------------------------------- CSV


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_load_split_and_round_trip(tmp_path):
    rows = [[f"review, number {i}\nsecond line", "good" if i % 4 else "bad"] for i in range(50)]
    path = write_csv(tmp_path / "reviews.csv", ["sentence", "sentiment"], rows)
    task = load_task(path, text_col="sentence", label_col="sentiment", description="Is the review good?")
    assert (task.name, task.description, task.labels) == ("reviews", "Is the review good?", ("bad", "good"))
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 40, "dev": 5, "test": 5}
    assert {e.text for v in task.splits.values() for e in v} == {r[0] for r in rows}
    assert all(e.label in {"good", "bad"} for e in task.split("test"))
    assert load_task(path, text_col="sentence", label_col="sentiment", description="Is the review good?") == task
    assert load_task(path, text_col="sentence", label_col="sentiment").description == ""
    assert load_task(write_task(task, tmp_path / "out")) == task


def test_csv_split_column(tmp_path):
    rows = [["a", "x", "train"], ["b", "y", "train"], ["c", "x", "validation"], ["d", "y", "test"]]
    task = load_task(write_csv(tmp_path / "s.csv", ["text", "label", "split"], rows))
    assert task.split("train") == (Example("a", "x"), Example("b", "y"))
    assert task.split("dev") == (Example("c", "x"),)
    assert task.split("test") == (Example("d", "y"),)

    rows[2][2] = "holdout"
    raises(
        ["s.csv", "line 4", "field 'split'", "'holdout'"],
        load_task,
        write_csv(tmp_path / "s.csv", ["text", "label", "split"], rows),
    )
    only_dev = [["a", "x", "dev"], ["b", "y", "dev"]]
    raises(["s.csv", "train or test"], load_task, write_csv(tmp_path / "s.csv", ["text", "label", "split"], only_dev))


def test_csv_errors(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["sentence", "label"], [["a", "x"], ["b", "y"], ["c", "x"]])
    raises(["c.csv", "line 1", "'text'", "['sentence', 'label']"], load_task, path)
    raises(["c.csv", "'target'", "['sentence', 'label']"], load_task, path, text_col="sentence", label_col="target")

    path = write_csv(tmp_path / "c.csv", ["text", "label"], [["a", "x"], ["b", "y"], ["c", ""], ["d", "x"]])
    raises(["c.csv", "line 4", "field 'label'", "empty"], load_task, path)

    path = write_csv(tmp_path / "c.csv", ["text", "label"], [["a", "x"], ["b", "y", "extra"]])
    raises(["c.csv", "line 3", "3 fields", "expected 2"], load_task, path)

    path = write_csv(tmp_path / "c.csv", ["text", "label"], [["a", "x"], ["b", "y"], ["c", "z"]])
    raises(["c.csv", "line 4", "field 'label'", "'z'", "['x', 'y']"], load_task, path, labels=["x", "y"])

    (tmp_path / "empty.csv").write_text("")
    raises(["empty.csv", "empty"], load_task, tmp_path / "empty.csv")
    path = write_csv(tmp_path / "c.csv", ["text", "label"], [])
    raises(["c.csv", "no data rows"], load_task, path)
    path = write_csv(tmp_path / "c.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    raises(["c.csv", "at least 3"], load_task, path)


# --------------------------------------------------------------------------------------------- Task behaviour


def test_sample_is_deterministic_stratified_and_ordered():
    task = toy_task()
    a = task.sample("train", 20, seed=3)
    assert a == task.sample("train", 20, seed=3)
    assert a != task.sample("train", 20, seed=4)
    assert len(a) == len(set(a)) == 20
    assert Counter(e.label for e in a) == {"pos": 12, "neg": 6, "neutral": 2}
    order = {e: i for i, e in enumerate(task.split("train"))}
    assert [order[e] for e in a] == sorted(order[e] for e in a)  # a subset in the split's order


def test_sample_keeps_rare_labels_when_possible():
    task = toy_task({"pos": 97, "neg": 2, "neutral": 1})
    s = task.sample("train", 5, seed=0)
    assert Counter(e.label for e in s) == {"pos": 3, "neg": 1, "neutral": 1}
    assert len(task.sample("train", 2, seed=0)) == 2  # fewer slots than labels: still exactly n


def test_sample_all_and_bad_sizes():
    task = toy_task()
    assert task.sample("train", None) == task.split("train")
    assert task.sample("train", 10_000) == task.split("train")
    assert task.sample("train", 0) == ()
    raises(["sample size", "-1"], task.sample, "train", -1)
    raises(["no split 'dev'"], task.sample, "dev", 3)


def test_with_splits_replaces_and_drops():
    task = toy_task()
    small = task.with_splits(train=task.sample("train", 10), dev=task.split("test"))
    assert len(small.split("train")) == 10 and small.split("dev") == task.split("test")
    assert small.split("test") == task.split("test") and task.splits.keys() == {"train", "test"}
    assert list(small.splits) == ["train", "dev", "test"]
    assert "test" not in small.with_splits(test=None).splits
    raises(["unknown split", "holdout"], task.with_splits, holdout=task.split("test"))
    raises(["'toy'", "'train'", "'maybe'"], task.with_splits, train=[Example("x", "maybe")])


def test_task_is_immutable_and_validated():
    task = toy_task()
    with pytest.raises(TypeError):
        task.splits["dev"] = ()  # type: ignore[index]
    assert isinstance(task.split("train"), tuple) and isinstance(task.labels, tuple)
    raises(["unique"], Task, "t", "d", ("a", "a"), {})
    raises(["at least 2"], Task, "t", "d", ("a",), {})
    raises(["Example.text"], Example, 1, "a")
    assert "splits(train=100, test=5)" in repr(task)
    assert hash(task) == hash(toy_task())


def test_write_task_round_trip_and_stale_files(tmp_path):
    task = Task(
        "round",
        "Ünïcödé description",
        ("b", "a"),
        {"train": (Example('line\nbreak "quoted"', "a"), Example("ünï", "b")), "test": (Example("x", "b"),)},
        source="src",
        license="lic",
        version="1.2",
    )
    folder = tmp_path / "nested" / "round"
    (folder).mkdir(parents=True)
    (folder / "dev.jsonl").write_text('{"text": "stale", "label": "a"}\n')
    assert write_task(task, folder) == folder
    back = load_task(folder)
    assert back == task and back.path == folder and back.fingerprint() == task.fingerprint()
    assert not (folder / "dev.jsonl").exists()
    meta = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    assert meta["sizes"] == {"train": 2, "test": 1} and meta["version"] == "1.2"
    raises(["empty split", "train"], write_task, task.with_splits(train=()), tmp_path / "x")


def test_write_task_round_trip_of_real_task(tmp_path):
    task = load_task(shared_task("tweet_stance_climate"))
    back = load_task(write_task(task, tmp_path / "copy"))
    assert back == task and back.fingerprint() == task.fingerprint()


def test_a_csv_takes_its_description_from_a_side_file(tmp_path):
    rows = [[f"text {i}", "pos" if i % 2 else "neg"] for i in range(20)]
    path = write_csv(tmp_path / "reviews.csv", ["text", "label"], rows)
    assert load_task(path).description == ""
    (tmp_path / "reviews.description.txt").write_text("Is the review positive or negative?\n", encoding="utf-8")
    assert load_task(path).description == "Is the review positive or negative?"
    assert load_task(path, description="given").description == "given"  # an explicit description wins
