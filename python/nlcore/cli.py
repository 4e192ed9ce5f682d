"""The `nlcore` command: train, evaluate and sample Hope byte-level language models, and run
the op benchmarks.

  nlcore train --out DIR [--preset tiny] [--data PATH] [--steps N] [--resume] ...
  nlcore eval --checkpoint DIR [--data PATH]
  nlcore eval --task {niah,mqar,continual} [--models hope,transformer] [--steps N] ...
  nlcore generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] [--window N]
  nlcore bench [--quick] [--out DIR] [--ops ...]

Several processes or machines: launch `nlcore train` with torchrun, e.g.
`torchrun --nproc_per_node 8 -m nlcore.cli train --device cuda --dist fsdp ...`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

COMMANDS = ("train", "eval", "generate", "bench")


def _find_bench_root() -> Optional[Path]:
    """bench/ lives in the source tree, not in the wheel: look from the working directory up."""
    for d in [Path.cwd(), *Path.cwd().parents]:
        if (d / "bench" / "run.py").is_file() and (d / "bench" / "common.py").is_file():
            return d
    return None


def _bench(argv: List[str]) -> int:
    root = _find_bench_root()
    if root is None:
        print("nlcore bench: the benchmarks live in the source tree (bench/); run this from a "
              "checkout of nlcore", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from bench.run import main as bench_main

    return bench_main(argv)


def _key_value(text: str):
    """--set KEY=VALUE: VALUE as JSON when it parses (numbers, true/false, [8, 32]), else a
    string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    py = {"True": True, "False": False, "None": None}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = py.get(value, value)
    return key.strip(), parsed


def _number_list(kind, what: str):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got "
                                             f"{text!r}") from None
    return parse


_int_list = _number_list(int, "integers")
_float_list = _number_list(float, "numbers")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nlcore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{train,eval,generate,bench}")

    t = sub.add_parser("train", help="train a Hope (or Transformer) byte-level language model",
                       description="Byte-level language modeling with Hope (vocabulary: the "
                       "256 byte values). Without --data: the English documentation embedded "
                       "in CPython (pydoc_data.topics); the last 5% of the corpus is the "
                       "validation split. Writes DIR/checkpoint-STEP/, DIR/latest, "
                       "DIR/log.jsonl and the loss curve DIR/loss.png (or .svg).")
    t.add_argument("--out", required=True, metavar="DIR", help="the run folder")
    t.add_argument("--model", choices=["hope", "transformer"], help="hope (default) or "
                   "transformer: the same-size Transformer baseline (on --resume: the "
                   "checkpoint's)")
    t.add_argument("--preset", help="model size: tiny (default), small, 125m, 350m, 760m")
    t.add_argument("--data", metavar="PATH", help="a text file or a folder of text files "
                   "(default: the embedded corpus)")
    t.add_argument("--steps", type=int, default=600, help="train until this step "
                   "(default 600)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from DIR's latest "
                   "complete checkpoint (from scratch when there is none)")
    g.add_argument("--overwrite", action="store_true", help="discard DIR's checkpoints and "
                   "log and start over")
    t.add_argument("--optimizer", choices=["m3", "adamw"], help="m3 (default: M3 for the "
                   "matrices, AdamW for embeddings/norms/head) or adamw")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    t.add_argument("--seq-len", type=int, help="bytes per training window (default 32)")
    t.add_argument("--batch-size", type=int, help="windows per step, over all processes "
                   "(default 32)")
    t.add_argument("--lr", type=float, help="learning rate (default 3e-3 for m3, 1e-3 for "
                   "adamw); linear warmup, then cosine decay to 10%% at --steps")
    t.add_argument("--adamw-lr", type=float, help="m3: the AdamW part's learning rate "
                   "(default 1e-3)")
    t.add_argument("--weight-decay", type=float, help="decoupled weight decay (default 0)")
    t.add_argument("--warmup", type=int, help="warmup steps (default steps/10, at most 100)")
    t.add_argument("--grad-clip", type=float, help="clip the gradient norm (default 1; 0: off)")
    t.add_argument("--seed", type=int, help="model initialization and data order (default 0)")
    t.add_argument("--set", dest="overrides", action="append", type=_key_value, default=None,
                   metavar="KEY=VALUE", help="override a HopeConfig (or TransformerConfig) "
                   "field, e.g. --set main_memory=mlp --set cms_chunk_sizes=[8,32] (repeatable)")
    t.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast or fp32 "
                   "(default: bf16 on cuda, fp32 on cpu)")
    t.add_argument("--dist", choices=["ddp", "fsdp"], default="ddp", help="under torchrun: "
                   "DistributedDataParallel (default) or FSDP2")
    t.add_argument("--eval-every", type=int, help="validate every N steps (default steps/10)")
    t.add_argument("--eval-windows", type=int, default=256, help="validation windows used "
                   "during training (default 256; evenly spaced)")
    t.add_argument("--eval-batch-size", type=int, default=32)
    t.add_argument("--save-every", type=int, help="checkpoint every N steps (default: "
                   "--eval-every); always at the end")
    t.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    t.add_argument("--no-plot", dest="plot", action="store_false", help="no loss curve")

    e = sub.add_parser("eval", help="bits per byte of a checkpoint, or the paper's tasks",
                       description="--task bpb (default): bits per byte (mean cross-entropy / "
                       "ln 2) of --checkpoint on consecutive windows of --seq-len bytes of a "
                       "split; prints a table and writes JSON. --task niah | mqar | continual: "
                       "needle in a haystack, multi-query associative recall, continual "
                       "learning: trains each of --models (default hope,transformer: the same "
                       "preset, data, optimizer and steps) once per learning rate of --lrs, "
                       "keeps the rate best on held-out data, scores the test data; prints a "
                       "table, writes OUT/TASK.json and a heat map OUT/TASK.png (or .svg).")
    e.add_argument("--task", choices=["bpb", "niah", "mqar", "continual"], default="bpb",
                   help="bpb (default), niah, mqar or continual")
    e.add_argument("--checkpoint", metavar="DIR", help="a run folder (its latest "
                   "checkpoint), a checkpoint-STEP folder or a saved model folder; needed by "
                   "bpb; for the other tasks it replaces --models (niah/mqar: scored as "
                   "loaded unless --steps is given; continual: the stream starts from it)")
    e.add_argument("--data", metavar="PATH", help="text file or folder (default: the "
                   "embedded corpus); niah: the filler text; continual: the stream's text")
    e.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="bpb: which part of the corpus (default val: its last 5%%)")
    e.add_argument("--seq-len", type=int, help="bpb: window length (default: the training "
                   "one); continual: training and test windows (default 64)")
    e.add_argument("--batch-size", type=int, help="bpb: windows per forward (default 16); "
                   "tasks: sequences per training step (default 16)")
    e.add_argument("--max-windows", type=int, help="bpb: at most N windows, evenly spaced; "
                   "continual: per task and split (default 32)")
    e.add_argument("--device")
    e.add_argument("--json", metavar="PATH", help="where to write the record (default "
                   "CHECKPOINT/eval.json for bpb, OUT/TASK.json for the tasks)")
    g = e.add_argument_group("niah / mqar / continual")
    g.add_argument("--models", help="comma-separated models to compare (default "
                   "hope,transformer)")
    g.add_argument("--preset", default="tiny", help="model size, the same for every model "
                   "(default tiny)")
    g.add_argument("--steps", type=int, help="training steps per learning rate (continual: "
                   "per task); defaults: niah 150, mqar 150, continual 50; 0: no training")
    g.add_argument("--lrs", type=_float_list, metavar="LR,LR", help="the learning-rate sweep "
                   "(default 1e-3,3e-3)")
    g.add_argument("--optimizer", choices=["adamw", "m3"], default="adamw",
                   help="adamw (default) or m3 (AdamW part at lr/3)")
    g.add_argument("--seed", type=int, default=0, help="initial weights and data (default 0)")
    g.add_argument("--out", metavar="DIR", help="output folder (default ./eval-TASK)")
    g.add_argument("--eval-examples", type=int, metavar="N", help="niah/mqar: validation "
                   "and test sequences per grid cell (default 16)")
    g.add_argument("--lengths", type=_int_list, metavar="L,L", help="niah/mqar: sequence "
                   "lengths in bytes (default 64,128)")
    g.add_argument("--depths", type=_float_list, metavar="D,D", help="niah: needle depths "
                   "in [0, 1] (default 0,0.25,0.5,0.75,1)")
    g.add_argument("--pairs", type=_int_list, metavar="P,P", help="mqar: numbers of "
                   "key-value pairs (default 2,4,8)")
    g.add_argument("--loss-on", choices=["answer", "all"], default="answer",
                   help="niah/mqar: train on the answer bytes (default) or on every byte")
    g.add_argument("--n-tasks", type=int, help="continual: tasks in the stream (default 3)")
    g.add_argument("--stream", choices=["permuted", "topics"], default="permuted",
                   help="continual: permuted (default: disjoint parts of the corpus, each "
                   "after the first with its letters permuted) or topics (the corpus cut "
                   "into groups of documentation topics)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="no heat map")

    s = sub.add_parser("generate", help="sample text from a checkpoint")
    s.add_argument("--checkpoint", required=True, metavar="DIR")
    s.add_argument("--prompt", required=True, metavar="TEXT")
    s.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="bytes to add")
    s.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    s.add_argument("--top-k", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--window", type=int, metavar="N", help="predict each byte from the last "
                   "N bytes (default: the training --seq-len, as the model was trained); 0: "
                   "the whole text through the recurrent cache")
    s.add_argument("--device")

    sub.add_parser("bench", help="the op benchmarks (bench/run.py; see `nlcore bench --help`)",
                   add_help=False)
    return p


def _overrides(pairs) -> Optional[Dict[str, Any]]:
    return None if pairs is None else dict(pairs)


def _eval(args: argparse.Namespace) -> None:
    from .train import TrainError
    if args.task == "bpb":
        if args.checkpoint is None:
            raise TrainError("--checkpoint DIR is needed by --task bpb (the default task); "
                             "--task niah, mqar or continual train their own models")
        from .train.evaluate import run_eval
        run_eval(args.checkpoint, args.data, args.split, args.seq_len,
                 16 if args.batch_size is None else args.batch_size, args.max_windows,
                 args.device, args.json)
        return
    from .evals.runner import EvalArgs, run_task
    run_task(EvalArgs(task=args.task, models=args.models, preset=args.preset,
                      steps=args.steps, lrs=args.lrs, seed=args.seed, out=args.out,
                      device=args.device, batch_size=args.batch_size,
                      optimizer=args.optimizer, checkpoint=args.checkpoint, data=args.data,
                      json=args.json, eval_examples=args.eval_examples, lengths=args.lengths,
                      depths=args.depths, pairs=args.pairs, loss_on=args.loss_on,
                      n_tasks=args.n_tasks, stream=args.stream, seq_len=args.seq_len,
                      max_windows=args.max_windows, progress=args.progress, plot=args.plot))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":          # its own parser: pass everything through
        return _bench(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                  # argparse already printed usage and the error
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    from .train import TrainError
    try:
        if args.command == "train":
            from .train.trainer import TrainArgs, train
            kw = vars(args).copy()
            kw.pop("command")
            kw["overrides"] = _overrides(kw["overrides"])
            train(TrainArgs(**kw))
        elif args.command == "eval":
            _eval(args)
        else:
            from .train.evaluate import run_generate
            run_generate(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature,
                         args.top_k, args.seed, args.device, args.window)
    except TrainError as e:
        print(f"nlcore {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"nlcore {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
