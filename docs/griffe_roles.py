"""Griffe extensions: the docstrings' Sphinx roles as links of the API reference, and
``submit``'s signature as its callers see it.

tasker's docstrings are written for ``help()`` and Sphinx alike (``:class:`~tasker.Config```).
mkdocstrings renders Markdown, where such a role would show as it is written. This turns
a role whose target is a public ``tasker`` name into a cross-reference (which the strict
build then checks), and any other role (a private module's name, a relative one) into
plain code. A reST ``::`` before a literal block becomes ``:``.

``TaskManager.submit`` makes its options keyword-only with a hidden ``_keywords``
parameter rather than a bare ``*`` (see its docstring); :class:`KeywordsOnly` shows the
signature that ``inspect.signature`` reports: no ``_keywords``, the options after ``*``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|exc|data|mod|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")
LITERAL = re.compile(r"::$", re.M)


def _link(match: re.Match[str]) -> str:
    target = match["target"].rstrip("()")
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if target.startswith("tasker.") and not any(part.startswith("_") for part in target.split(".")):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = LITERAL.sub(":", ROLE.sub(_link, obj.docstring.value))


class KeywordsOnly(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        if "_keywords" not in func.parameters:
            return
        names = [param.name for param in func.parameters]
        del func.parameters["_keywords"]
        for name in names[names.index("_keywords") + 1 :]:
            func.parameters[name].kind = griffe.ParameterKind.keyword_only
