"""MkDocs hooks: files of the repository that the site shows without a copy in docs/.

The scale chart is written by ``python -m tasker bench --plot bench/scale.svg``; the
performance page shows it as ``assets/scale.svg``, read from bench/ at build time, so
a new benchmark run updates the site with nothing to copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"assets/scale.svg": ROOT / "bench" / "scale.svg"}


def on_files(files: Files, config: Any) -> Files:
    for uri, source in SHARED.items():
        if not source.is_file():
            raise FileNotFoundError(f"{source} (shown on the site as {uri}) is missing")
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
