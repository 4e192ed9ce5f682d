"""Training and evaluating Hope: the logic behind `nlcore train`, `nlcore eval` and
`nlcore generate` (cli.py is only the argument layer).

    data.py        the corpus (a text file, a folder, or the embedded CPython documentation),
                   its deterministic train/validation split, seeded random training windows
                   and the fixed validation windows
    checkpoint.py  DIR/checkpoint-STEP/ written to a temporary folder and renamed, the
                   DIR/latest pointer, finding and checking checkpoints
    trainer.py     the training loop (single process, or DDP / FSDP2 under torchrun)
    evaluate.py    bits per byte on validation windows, `eval` and `generate`
    progress.py    tqdm when installed, else a plain line printer
    plot.py        the loss curve (matplotlib PNG when installed, else a plain SVG)

cli.py imports these modules only when a subcommand runs, so `nlcore --help` never loads them.
"""


class TrainError(Exception):
    """A problem the user can act on (bad path, bad option, incompatible checkpoint, a run
    that diverged or was interrupted): the CLI prints the message and exits with `code`
    (2 by default), without a traceback."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
