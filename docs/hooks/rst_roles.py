"""Griffe extension: show the docstrings' Sphinx roles as code in the API reference.

The library's docstrings cross-reference with ``:func:`name```, ``:class:`~pkg.Name``` and the
like; Markdown has no such roles, so each becomes a code span of the name (the short name
where the target starts with ``~``, as Sphinx shows it).
"""

import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
