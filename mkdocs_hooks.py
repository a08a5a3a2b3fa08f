"""MkDocs hooks for the docs site (mkdocs.yml `hooks:`): the repository's README.md is the
home page and CHANGELOG.md a page, both read from the repository root so they stay the one
copy; their links into docs/ (`docs/training.md`) and the docs pages' links out to them
(`../CHANGELOG.md`) are rewritten to the site's pages, so `mkdocs build --strict` checks
them like any other link.

`ProseLists`, a Griffe extension (mkdocs.yml: mkdocstrings `extensions:`), lets the
docstrings' lists read as lists: they are written as prose with a list right under its
lead-in line ("Vocabulary:" then "  * ..."), which Python-Markdown would run into one
paragraph without a blank line between the two.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# repository file -> the site page it becomes
ROOT_PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
LIST_ITEM = re.compile(r"\s*[*-] ")


def _root(config: MkDocsConfig) -> pathlib.Path:
    return pathlib.Path(config.config_file_path).parent


def on_files(files: Files, /, *, config: MkDocsConfig) -> Files:
    """Adds README.md and CHANGELOG.md as pages, their `docs/` links made site-relative."""
    docs = pathlib.Path(config.docs_dir).name
    for name, page in ROOT_PAGES.items():
        text = (_root(config) / name).read_text(encoding="utf-8")
        text = re.sub(rf"\]\({re.escape(docs)}/", "](", text)
        files.append(File.generated(config, page, content=text))
    return files


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig,
                     files: Files) -> str:
    """Points a docs page's links to ../README.md or ../CHANGELOG.md at their site pages."""
    up = "../" * page.file.src_uri.count("/")
    for name, target in ROOT_PAGES.items():
        markdown = markdown.replace(f"]({up}../{name}", f"]({up}{target}")
    return markdown


def loosen_lists(text: str) -> str:
    """`text` with a blank line before each list that directly follows a line of prose."""
    out: list[str] = []
    in_list = False
    for line in text.split("\n"):
        if LIST_ITEM.match(line):
            if not in_list and out and out[-1].strip():
                out.append("")
            in_list = True
        elif not line.strip():
            in_list = False
        out.append(line)
    return "\n".join(out)


class ProseLists(griffe.Extension):
    """Runs `loosen_lists` over every docstring as Griffe reads it (the site only)."""

    def on_instance(self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object,
                    agent: griffe.Visitor | griffe.Inspector, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = loosen_lists(obj.docstring.value)
