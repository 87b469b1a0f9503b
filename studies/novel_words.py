"""How many words of each samples file never occur in the training text (invented words).

Model-free companion to gen-PPL (``studylib.words`` says why and defines a word).
The training split is decoded once to build the known-word set; the held-out test text and its
word salad are the reference rows (the salad keeps every word, so it has the data's rate).
Usage::

    python studies/novel_words.py --data runs/bench/data \\
        --samples docs/results/bench-long/samples/teacher-long_{1024,8}.jsonl \\
        --out docs/results/bench-longer/novel_words.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studylib.words import NovelWords, decode_for_words, novel_words, vocabulary
from tqdm import tqdm

from tsdfm.artifacts import publish_text
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.harness import load_sample_file
from tsdfm.evaluation.references import reference_sample, word_salad
from tsdfm.sample_files import samples_stem


def train_vocabulary(data, chunk: int = 512) -> tuple[set[str], int]:
    """Known words of the whole training split, and how many blocks that was."""
    train = data.split("train")
    known: set[str] = set()
    for start in tqdm(range(0, len(train), chunk), desc="train vocabulary", unit="chunk"):
        known |= vocabulary(decode_for_words(data.tokenizer, train[start : start + chunk]))
    return known, len(train)


def _row(name: str, sf, known: set[str], tokenizer) -> str:
    r: NovelWords = novel_words(decode_for_words(tokenizer, sf.ids), known)
    n = len(sf.ids)
    top = ", ".join(f"{w} ({c})" for w, c in r.top)
    return f"| {name} | {n} | {r.words:,} | {r.novel:,} | {100 * r.rate:.1f}% | {top} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared text data dir (train split, tokenizer)")
    ap.add_argument("--samples", nargs="+", required=True, help="samples.jsonl files")
    ap.add_argument("--num-ref", type=int, default=256, help="held-out sequences (reference rows)")
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    try:
        data = load_prepared(args.data)
        if data.tokenizer.kind != "bpe":
            raise TsdfmError(f"{args.data} is not a text corpus: words need a BPE tokenizer")
        files = [load_sample_file(p, data.tokenizer, Path(args.data)) for p in args.samples]
        known, n_train = train_vocabulary(data)
        ref = reference_sample(data, args.num_ref, files[0].ids.shape[1])
        rows = [
            "| row | sequences | words | novel | novel rate | most frequent novel words |",
            "|---|---|---|---|---|---|",
            _row("held-out text (test split)", ref, known, data.tokenizer),
            _row(
                "word salad (the same, words shuffled)",
                word_salad(ref, data.tokenizer),
                known,
                data.tokenizer,
            ),
        ]
        rows += [_row(samples_stem(f.path), f, known, data.tokenizer) for f in files]
    except TsdfmError as e:
        print(f"error: {e}")
        return 2
    head = (
        f"Novel words: share of a row's words absent from the {n_train:,} training blocks of "
        f"`{args.data}` ({len(known):,} distinct words); the first and last piece of each "
        "sequence are not counted (`studies/novel_words.py`; definition in "
        "`studylib.words`).\n\n"
    )
    publish_text(args.out, head + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
