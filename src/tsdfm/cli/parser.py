"""The ``tsdfm`` command line: every command, flag and help text, in one argparse tree.

One function adds one command's flags, in the order ``tsdfm --help`` lists them. What each
command does is :mod:`tsdfm.cli.commands`; how a run starts and ends (exit codes, torchrun
checks) is :mod:`tsdfm.cli`. Importing this module is cheap (no torch), so ``tsdfm --help``
and a bad flag answer at once.
"""

from __future__ import annotations

import argparse

from tsdfm import __version__
from tsdfm.config import MIDPOINT_KINDS, STUDENT_KINDS

# The first line of ``tsdfm --help``: what the CLI promises about bad input.
DESCRIPTION = (
    "Command-line interface: ``tsdfm <command>``. Input errors exit with code 2 and one message."
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tsdfm", description=DESCRIPTION)
    ap.add_argument("--version", action="version", version=f"tsdfm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_generate(sub)
    _add_evaluate(sub)
    _add_evaluators(sub)
    _add_pipeline(sub)
    from tsdfm.serving import command as serve_command  # tsdfm serve (docs/serving.md)

    serve_command.add_parser(sub)
    return ap


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); built-in defaults if omitted")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. teacher.train.steps=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_group(sub, name: str, summary: str, dest: str):
    """A command with subcommands of its own (``tsdfm train teacher``); one is required."""
    return sub.add_parser(name, help=summary).add_subparsers(dest=dest, required=True)


def _add_data(sub) -> None:
    data = _add_group(sub, "data", "corpus preparation", dest="action")
    prep = data.add_parser("prepare", help="fetch/split/tokenize/pack a corpus")
    _add_config(prep)
    prep.add_argument("--out", help="output directory (default runs/<config name>/data)")
    prep.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="processes that tokenise text (default 1); the data does not depend on it",
    )


def _add_train(sub) -> None:
    train = _add_group(sub, "train", "train a stage", dest="stage")
    teacher = train.add_parser("teacher", help="train the DFM teacher")
    _add_config(teacher)
    teacher.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    teacher.add_argument("--out", help="output dir (default runs/<name>/teacher)")
    teacher.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint"
    )
    causal = train.add_parser(
        "causal", help="train a causal LM: energy compass, evaluator or AR baseline"
    )
    causal.add_argument(
        "--role",
        required=True,
        choices=["compass", "evaluator-small", "evaluator-large", "ar"],
        help="which config section / role (compass, evaluator_small, evaluator_large, ar_baseline)",
    )
    _add_config(causal)
    causal.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    causal.add_argument("--out", help="output dir (default runs/<name>/<role>)")
    causal.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    causal.add_argument(
        "--teacher",
        help="teacher run dir for the compass size check (default runs/<name>/teacher if present)",
    )
    _add_student(train)


def _add_student(train) -> None:
    student = train.add_parser("student", help="distil a few-step student from a teacher")
    _add_config(student)
    student.add_argument(
        "--teacher", help="teacher run dir or its model/ dir (default runs/<name>/teacher)"
    )
    student.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    student.add_argument("--out", help="output dir (default runs/<name>/student-<method>)")
    student.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint"
    )
    student.add_argument(
        "--shaping",
        choices=["none", "compass", "self", "oracle"],
        help="trajectory shaping: none (blind), compass (causal LM at --compass), self (the "
        "teacher scores), oracle (the true chain, markov only); default: student.shaping of the "
        "config (blind when its candidates == 1)",
    )
    student.add_argument("--compass", help="causal LM run dir or model dir for --shaping compass")
    student.add_argument("--candidates", type=int, help="K candidate jumps per midpoint")
    student.add_argument("--select", choices=["argmin", "softmax"], help="how to keep one")
    student.add_argument("--tau", type=float, help="temperature of --select softmax")
    student.add_argument(
        "--anchor",
        choices=["teacher", "oracle"],
        help="what the dt = 1/N rows imitate: the teacher network, or (markov, either source) "
        "the chain's exact denoiser, the near-exact-teacher check (default: student.anchor)",
    )
    student.add_argument(
        "--midpoint",
        choices=MIDPOINT_KINDS,
        help="how shortcut midpoints are drawn: a jump with the network's prediction, with the "
        "frozen teacher's posterior, or (markov) with the chain's exact per-position or exact "
        "joint law, the diagnostic ceiling of navigation (default: student.midpoint)",
    )
    student.add_argument(
        "--kind",
        choices=STUDENT_KINDS,
        help="product (one step commits positions independently), mixture (a per-sample "
        "latent makes one step a mixture of products, trained on the composed step's joint "
        "law) or chain (a chain of latent codes along the positions: a correlation per pair "
        "of neighbours); docs/mixture.md; default: student.kind",
    )


def _add_sample(sub) -> None:
    smp = sub.add_parser("sample", help="draw samples from a model directory")
    smp.add_argument(
        "--model", required=True, help="model directory (e.g. runs/tiny/teacher/model)"
    )
    smp.add_argument("--steps", type=int, default=1024)
    # --num-samples: torchrun's own parser rejects a bare --num as ambiguous (--numa-binding).
    smp.add_argument("--num", "--num-samples", dest="num", type=int, default=8)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--batch-size", type=int, default=64)
    smp.add_argument("--top-k", type=int, default=None)
    smp.add_argument("--top-p", type=float, default=None)
    smp.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="divide the denoiser's logits by T before each jump (< 1 sharpens; default 1)",
    )
    smp.add_argument("--no-cache", action="store_true", help="disable forward caching")
    smp.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto (default): the GPU when CUDA is available, else the CPU",
    )
    smp.add_argument("--out", help="samples.jsonl to write (default: next to the model)")
    smp.add_argument("--show", type=int, default=8, help="how many samples to print")


def _add_generate(sub) -> None:
    gp = sub.add_parser("generate", help="generate text, optionally from a prompt or template")
    gp.add_argument("--model", required=True, help="model dir or run dir (e.g. runs/tiny/teacher)")
    gp.add_argument("--prompt", help="prefix text, kept fixed; the rest is generated")
    gp.add_argument("--suffix", help="text fixed at the end of the sequence (DFM models only)")
    gp.add_argument(
        "--infill", help='template, one [MASK] per generated token: "The [MASK] sat on the mat"'
    )
    gp.add_argument("--steps", type=int, default=8)
    gp.add_argument("--num", type=int, default=4)
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default L)")
    gp.add_argument("--top-k", type=int, default=None)
    gp.add_argument("--top-p", type=float, default=None)
    gp.add_argument("--no-cache", action="store_true", help="disable forward caching")
    gp.add_argument(
        "--show-steps", action="store_true", help="print the first sample as it crystallises"
    )
    gp.add_argument("--max-frames", type=int, default=32, help="frames shown by --show-steps")
    gp.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU if there is one), cpu, cuda, cuda:N",
    )


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="evaluate samples files: gen-PPL, entropy, speed")
    ev.add_argument("--samples", nargs="+", required=True, help="samples.jsonl files")
    ev.add_argument(
        "--data", help="prepared data dir: tokenizer check, real-text row, truth (markov)"
    )
    ev.add_argument(
        "--evaluators",
        nargs="+",
        metavar="SPEC",
        help="NAME=DIR (tsdfm causal LM or Hugging Face dir, or DIR/FILE.gguf), smollm2-135m[=DIR], "
        "truth; default: truth for markov data, else the run's evaluators",
    )
    ev.add_argument(
        "--out",
        help="output dir for results.json, report.md, plots/ "
        "(default: eval/ beside the first samples file)",
    )
    ev.add_argument("--name", help="config name recorded in results.json")
    ev.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference rows (held-out text, and word salad on text corpora)",
    )
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument(
        "--device",
        default="auto",
        help="torch device for the evaluator models: auto (default: the GPU if there is one), "
        "cpu, cuda, cuda:N",
    )


def _add_evaluators(sub) -> None:
    evs = _add_group(sub, "evaluators", "pretrained evaluator models", dest="action")
    fetch = evs.add_parser("fetch", help="download an evaluator (smollm2: SmolLM2-135M GGUF)")
    fetch.add_argument("model", choices=["smollm2"])


def _add_pipeline(sub) -> None:
    pipe = sub.add_parser("pipeline", help="run every stage in order (the main job)")
    _add_config(pipe)
    pipe.add_argument("--run-dir", help="run directory (default runs/<config name>)")
