"""MkDocs hooks (mkdocs.yml ``hooks:``): pages generated from the code at build time, and the
committed result figures the results page shows.

* A page holding the line ``<!-- generated: cli -->`` gets ``maml-rl --help`` and every
  sub-command's ``--help``, as the command line prints them;
* ``<!-- generated: config-keys -->`` gets every config key, group by group, with its default
  and the first sentence of the ``doc`` declared with it (``maml_rl.config.key_docs()``, from
  the field metadata of ``maml_rl/settings.py``), and the shipped presets.
* PNG files under ``results/`` are added to the site at the same paths, so pages link them as
  ``results/...`` (relative to the docs folder's root).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
FIGURES = "results"


def _help_texts() -> str:
    from maml_rl.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["## `maml-rl --help`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in subparsers.choices.items():
        parts += [f"## `maml-rl {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _config_keys() -> str:
    import dataclasses

    from maml_rl import config as config_module

    groups = getattr(config_module, "GROUPS", ())
    group_of = {f.name: g.__name__ for g in groups for f in dataclasses.fields(g)}
    parts: list[str] = []
    current = None
    for key, default, doc in config_module.key_docs():
        group = group_of.get(key, "")
        if group != current:
            current = group
            cls = next((g for g in groups if g.__name__ == group), None)
            summary = " ".join((cls.__doc__ or "").split()).split(". ")[0] if cls else ""
            title = f"{group}: {summary}" if summary else group or "keys"
            parts += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        parts.append(f"| `{key}` | `{_cell(default)}` | {_cell(doc)} |")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        from maml_rl.cli import main

        main(["presets"])
    parts += ["", "## Presets (`maml-rl presets`)", "", "```text", out.getvalue().rstrip(), "```"]
    return "\n".join(parts).lstrip() + "\n"


GENERATORS = {"cli": _help_texts, "config-keys": _config_keys}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for name, generate in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown


def on_files(files: Files, config: Any) -> Files:
    hooks = files.get_file_from_path("hooks.py")
    if hooks is not None:
        files.remove(hooks)
    for png in sorted((ROOT / FIGURES).rglob("*.png")):
        uri = png.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
