"""Make the plain-text corpora of ``benchmarks/prune_llm.py``: open-domain (WikiText-2), legal (US Supreme Court
opinions) and medical (MedQuAD answers from NIH sites), each split into a calibration part and an evaluation
part that share no source document and no paragraph.

Sources are read from local git clones at pinned commits (see ``benchmarks/data/prune_llm/README.md``):

    python scripts/make_prune_corpora.py --examples CLONE_OF_pytorch/examples \\
        --scotus CLONE_OF_jeremybmerrill/scotuslm --medquad CLONE_OF_abachaa/MedQuAD
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "prune_llm"
COMMITS = {
    "examples": "77f55b912142e11fcfdf5b530231fb9c52f181e8",
    "scotus": "2f99facc9ce2b04bb2e74ffe57f0deae0ee7875e",
    "medquad": "577bd37b96c02d1833b2c9eed2de9f96964e96cb",
}
CALIB_CHARS = 1100  # about 250 SmolLM2 tokens: one calibration window of 256
EVAL_CHARS = 2000  # longer than one 256-token window, so evaluation windows slide
CALIB_DOCS = 96
EVAL_BUDGET = 45_000  # characters of evaluation text per corpus (about 10k tokens)
MEDICAL = ("1_CancerGov_QA", "5_NIDDK_QA", "6_NINDS_QA", "8_NHLBI_QA_XML", "9_CDC_QA", "7_SeniorHealth_QA")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def chunks(paragraphs: list[str], limit: int) -> list[str]:
    """Consecutive paragraphs packed into documents of at most ``limit`` characters (a longer paragraph is cut at
    sentence ends); pieces under 200 characters are dropped."""
    pieces: list[str] = []
    for p in paragraphs:
        while len(p) > limit:
            cut = p.rfind(". ", 0, limit)
            cut = cut + 1 if cut > limit // 2 else limit
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    docs, cur = [], ""
    for piece in pieces:
        if cur and len(cur) + 1 + len(piece) > limit:
            docs.append(cur)
            cur = ""
        cur = f"{cur}\n{piece}" if cur else piece
    if cur:
        docs.append(cur)
    return [d for d in docs if len(d) >= 200]


def detok(s: str) -> str:
    """Undo WikiText's tokenisation (spaces around punctuation, ``@-@`` for in-word hyphens)."""
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r" ([.,;:!?%)\]}])", r"\1", s)
    s = re.sub(r"([(\[{$]) ", r"\1", s)
    s = s.replace(" n't", "n't").replace(" 's", "'s").replace(" '", "'")
    return re.sub(r'" (.*?) "', r'"\1"', s)


def wikitext(repo: Path, split: str) -> list[list[str]]:
    """Articles of a WikiText-2 split as lists of paragraphs; sentences holding ``<unk>`` (WikiText-2's
    out-of-vocabulary marker) are dropped, splitting a paragraph where they were."""
    text = git(repo, "show", f"{COMMITS['examples']}:word_language_model/data/wikitext-2/{split}.txt")
    articles: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"= [^=].* =", line):
            articles.append([])
            continue
        if not line or line.startswith("=") or not articles:
            continue
        run: list[str] = []
        for sentence in [*re.split(r"(?<= \.) ", line), "<unk>"]:
            if "<unk>" in sentence:
                if run:
                    articles[-1].append(detok(" ".join(run)))
                run = []
            else:
                run.append(sentence)
    return [a for a in articles if a]


def scotus(repo: Path, term: str) -> list[list[str]]:
    """Cleaned opinions of one Supreme Court term (``09``, ``10``, ``11``), one list of paragraphs per opinion,
    the slip opinion's notice removed and words split across lines joined."""
    commit = COMMITS["scotus"]
    names = [n for n in git(repo, "ls-tree", "-r", "--name-only", commit, f"opinions/{term}txt").splitlines()]
    out = []
    for name in sorted(n for n in names if n.endswith(".txt") and not n.endswith(".raw.txt")):
        if name.endswith("syllabus.txt"):
            continue
        text = git(repo, "show", f"{commit}:{name}").replace("\u00ad ", "").replace("\u00ad", "")
        text = re.sub(r"^NOTICE: This opinion is subject to formal revision.*?goes to press\.\s*", "", text, flags=re.S)
        sentences = re.split(r"(?<=[.?!”])\s+(?=[A-Z“])", re.sub(r"\s+", " ", text).strip())
        out.append([" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)])
    return out


def medquad(repo: Path) -> list[list[str]]:
    """MedQuAD documents (one NIH page each) as lists of their distinct answer paragraphs."""
    commit = COMMITS["medquad"]
    docs = []
    for folder in MEDICAL:
        for name in sorted(git(repo, "ls-tree", "--name-only", commit, f"{folder}/").splitlines()):
            xml = git(repo, "show", f"{commit}:{name}")
            paragraphs: list[str] = []
            for answer in re.findall(r"<Answer>(.*?)</Answer>", xml, flags=re.S):
                for p in html.unescape(answer).split("\n"):
                    p = re.sub(r"\s+", " ", p).strip()
                    if len(p) > 40 and p not in paragraphs:
                        paragraphs.append(p)
            if paragraphs:
                docs.append(paragraphs)
    return docs


def split_docs(calib_sources: list[list[str]], eval_sources: list[list[str]]) -> tuple[list[str], list[str]]:
    """Calibration and evaluation documents; an evaluation paragraph also found in calibration is dropped."""
    calib = [d for src in calib_sources for d in chunks(src, CALIB_CHARS)]
    calib = calib[:: max(1, len(calib) // CALIB_DOCS)][:CALIB_DOCS]
    seen = {p for d in calib for p in d.split("\n")}
    pool = [d for src in eval_sources for d in chunks([p for p in src if p not in seen], EVAL_CHARS)]
    mean = sum(map(len, pool)) / len(pool)
    evals = pool[:: max(1, int(len(pool) * mean / EVAL_BUDGET))]  # evenly spaced over the sources
    while sum(map(len, evals)) > EVAL_BUDGET:
        evals.pop()
    return calib, evals


def write(name: str, texts: list[str]) -> None:
    path = OUT / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    print(path.name, len(texts), "texts", sum(map(len, texts)), "chars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=Path, required=True, help="clone of pytorch/examples")
    parser.add_argument("--scotus", type=Path, required=True, help="clone of jeremybmerrill/scotuslm")
    parser.add_argument("--medquad", type=Path, required=True, help="clone of abachaa/MedQuAD")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # open-domain: calibration from WikiText-2 valid articles, evaluation from test articles
    general = split_docs(wikitext(args.examples, "valid"), wikitext(args.examples, "test"))
    # legal: calibration from the 2009 term's opinions, evaluation from the 2010 term's
    legal = split_docs(scotus(args.scotus, "09"), scotus(args.scotus, "10"))
    # medical: alternate documents (NIH pages) between calibration and evaluation
    pages = medquad(args.medquad)
    medical = split_docs(pages[0::2], pages[1::2])
    for name, (calib, evals) in (("general", general), ("legal", legal), ("medical", medical)):
        overlap = {p for d in calib for p in d.split("\n")} & {p for d in evals for p in d.split("\n")}
        assert not overlap, f"{name}: {len(overlap)} paragraphs in both parts"
        write(f"{name}_calib", calib)
        write(f"{name}_eval", evals)


if __name__ == "__main__":
    main()
