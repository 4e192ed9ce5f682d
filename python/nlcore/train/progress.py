"""A progress bar: tqdm when it is installed, else a plain printer (a line rewritten in place
on a terminal; otherwise a new line about every 5% of the run or 30 seconds)."""
from __future__ import annotations

import sys
import time
from typing import Dict


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.total, self.step, self.enabled = total, initial, enabled
        self._bar = None
        self._t0, self._s0 = time.perf_counter(), initial
        self._last_print, self._last_step = 0.0, initial
        self._tty = sys.stdout.isatty()
        self._postfix: Dict[str, str] = {}
        self._desc = desc
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                         dynamic_ncols=True, file=sys.stdout, smoothing=0.1)

    def update(self, step: int, **postfix: str) -> None:
        delta, self.step = step - self.step, step
        self._postfix = postfix
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(delta)
            return
        now = time.perf_counter()
        every = max(1, self.total // 20)
        due = (self._tty and now - self._last_print > 0.5) or step == self.total \
            or step - self._last_step >= every or now - self._last_print > 30
        if due:
            self._print_line(now)

    def _print_line(self, now: float) -> None:
        self._last_print, self._last_step = now, self.step
        done = self.step - self._s0
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - self.step) / rate if rate > 0 else 0.0
        pct = 100.0 * self.step / max(self.total, 1)
        extra = " ".join(f"{k} {v}" for k, v in self._postfix.items())
        line = (f"{self._desc} {self.step}/{self.total} ({pct:3.0f}%) {extra} "
                f"[{_fmt_time(now - self._t0)}<{_fmt_time(eta)}]")
        if self._tty:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def write(self, msg: str) -> None:
        """Print a message without breaking the bar."""
        if self._bar is not None:
            self._bar.write(msg)
        elif self._tty and self.enabled and self._last_print:
            sys.stdout.write("\r\033[K" + msg + "\n")
            self._print_line(time.perf_counter())
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._tty and self.enabled and self._last_print:
            sys.stdout.write("\n")
            sys.stdout.flush()
