"""Tables for reports: Markdown text through rich's table model, so the layout is rich's, not f-strings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "right") -> str:
    """A GitHub-flavoured Markdown table; the first column is left-aligned, the others ``align``ed."""
    table = Table(box=box.MARKDOWN, show_edge=True, pad_edge=True)
    # overflow "fold" (never reached at this console width): "ignore" drops the column's justification
    for index, name in enumerate(header):
        table.add_column(_cell(name), justify="left" if index == 0 else align, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    console = Console(width=10_000, color_system=None, force_terminal=False, record=True, file=_Null())
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines() if line.strip())


def _cell(value: object) -> Text:
    """The value's text as it is: a plain str would be read by rich as markup ("[...]") and emoji (":name:"),
    and a "|" would end the Markdown cell."""
    return Text(str(value).replace("|", r"\|"))


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
