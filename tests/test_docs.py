"""The docs site builds strictly, and its generated references cannot drift from the code: the CLI page
lists every option each command's --help shows, the API page every public name."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import autotune
from autotune.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return folder


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


@pytest.mark.parametrize("command", sorted(main.commands))
def test_the_cli_page_lists_every_option_of_each_command(site, command):
    page = _text(site / "cli" / "index.html")
    context = click.Context(main.commands[command], info_name=command)
    options = [
        name
        for param in main.commands[command].get_params(context)
        if isinstance(param, click.Option) and not param.hidden
        for name in param.opts + param.secondary_opts
        if name.startswith("--")
    ]
    assert options
    missing = [name for name in options if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", page)]
    assert missing == []


def test_the_api_page_documents_every_public_name(site):
    page = _text(site / "api" / "index.html")
    missing = [name for name in autotune.__all__ + autotune.training.__all__ if name not in page]
    assert missing == []


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert max(map(len, lines)) <= 200
