"""What `sluice` prints: error lines, sizes and counts, findings, JSON, tables, the coloured diff
and the one progress display every upload uses (`plugin push`, `model upload`, `ingest`).

Colour and redrawn bars only on a terminal, and no colour when NO_COLOR is set (rich reads it);
what goes to a pipe or a log is plain lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, TaskProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

Json = Annotated[bool, typer.Option("--json", help="print the raw response as JSON")]


def stdout() -> Console:
    """A console on the current sys.stdout (made per call: tests and pagers swap the stream)."""
    return Console(highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `sluice: message` on stderr; the exit to raise with `code`."""
    print(f"sluice: {message}", file=sys.stderr)
    return typer.Exit(code)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def print_json(value: Any) -> None:
    stdout().print_json(data=value, default=str, indent=2)


def show(body: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """The body as JSON with --json, else as `render` prints it."""
    if as_json:
        print_json(body)
    else:
        render(body)


# --- findings (scanner, archive checks, validation) ------------------------------------------

def _field(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)


def format_finding(item: Any) -> str:
    """`file:line [RULE] message` and an indented `hint: ...` (a Finding or its dict)."""
    file, line = _field(item, "file") or "-", _field(item, "line") or 0
    severity = _field(item, "severity", "error")
    text = f"{file}:{line} [{_field(item, 'rule_id')}] {_field(item, 'message')}"
    if severity != "error":
        text += f" ({severity})"
    hint = _field(item, "hint")
    return text + (f"\n    hint: {hint}" if hint else "")


def print_findings(findings: Iterable[Any], stream: TextIO | None = None) -> None:
    for item in findings:
        print(format_finding(item), file=stream or sys.stdout)


# --- tables and the diff ------------------------------------------------------------------------

def print_table(rows: Iterable[Sequence[str]], *, header: Sequence[str] | None = None,
                min_widths: Sequence[int] = ()) -> None:
    """Columns two spaces apart, as wide as their widest cell (never cut or wrapped: ids get
    copied), trailing blanks trimmed; a bold header on a terminal."""
    rows = [list(row) for row in rows]
    columns = len(header) if header else max((len(r) for r in rows), default=0)
    table = Table(box=None, show_header=header is not None, header_style="bold", pad_edge=False, show_edge=False)
    for i in range(columns):
        table.add_column(header[i] if header else "", no_wrap=True, min_width=(list(min_widths) + [0] * columns)[i])
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # as they are: no markup, no emoji codes
    out = stdout()
    wide = Console(width=1_000_000, force_terminal=out.is_terminal, no_color=out.no_color,
                   color_system="auto" if out.is_terminal else None, highlight=False)
    with wide.capture() as captured:
        wide.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


DIFF_STYLES = (("+++", "bold"), ("---", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))


def print_diff(text: str) -> None:
    """A unified diff, coloured on a terminal (headers bold, hunks cyan, + green, - red)."""
    out = stdout()
    if not out.is_terminal or out.no_color:
        sys.stdout.write(text)
        return
    styled = Text()
    for line in text.splitlines(keepends=True):
        styled.append(line, style=next((style for prefix, style in DIFF_STYLES if line.startswith(prefix)), ""))
    out.print(styled, end="")


# --- progress -------------------------------------------------------------------------------------

class Progress:
    """Bytes sent of `total` (and, given `files`, files done of that many), the rate and failures.

    On a terminal: a rich bar redrawn in place. Otherwise plain lines that keep logs clean: with
    `files`, `LABEL: 40% (...)` each time another tenth is done; for one upload, one line at the
    end. Disabled: nothing."""

    def __init__(self, total: int, *, files: int | None = None, label: str = "uploading",
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.files, self.label = total, files, label
        self.stream = stream or sys.stderr
        self.done = self.failed = self.sent = 0
        self.started = time.monotonic()
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = enabled and bool(isatty and isatty())
        self._tenth = 0
        self._bar: RichProgress | None = None
        if self.tty:
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"), console=Console(file=self.stream, highlight=False),
                refresh_per_second=10,
            )
            self._task = self._bar.add_task(label, total=1.0, detail=self.detail())
            self._bar.start()

    def add_bytes(self, n: int) -> None:
        """`n` more bytes sent (negative: a failed attempt's bytes, to be sent again)."""
        self.sent += n
        self._update()

    def resize(self, delta: int) -> None:
        """A file's size changed between listing and upload."""
        self.total += delta

    def file_done(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self._update()

    def fraction(self) -> float:
        if self.total > 0:
            return min(self.sent / self.total, 1.0)
        if self.files is None:
            return 1.0
        return self.done / self.files if self.files else 1.0

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-6)

    def detail(self) -> str:
        failed = f"  {self.failed} failed" if self.failed else ""
        files = f"{self.done}/{self.files} files  " if self.files is not None else ""
        return f"{files}{size(self.sent)} / {size(self.total)}  {size(self.rate())}/s{failed}"

    def _update(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.fraction(), detail=self.detail())
        elif self.enabled and self.files is not None:
            # 100% only once every file is through (bytes can all be sent while confirms are pending)
            tenth = 10 if self.done == self.files else min(int(self.fraction() * 10), 9)
            if tenth > self._tenth:
                self._tenth = tenth
                failed = f", {self.failed} failed" if self.failed else ""
                self.stream.write(f"{self.label}: {tenth * 10}% ({self.done}/{self.files} files, {size(self.sent)} of "
                                  f"{size(self.total)}, {size(self.rate())}/s{failed})\n")
                self.stream.flush()

    def close(self, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.fraction(), detail=self.detail() + ("" if ok else "  failed"))
            self._bar.stop()
            self._bar = None
        elif self.enabled and self.files is None:
            verb = "uploaded" if ok else "upload failed after"
            seconds = time.monotonic() - self.started
            self.stream.write(f"{verb} {size(self.sent)} of {size(self.total)} in {seconds:.1f} s\n")
            self.stream.flush()


__all__ = ["Json", "Progress", "count", "fail", "format_finding", "print_diff", "print_findings", "print_json",
           "print_table", "show", "size", "stdout"]
