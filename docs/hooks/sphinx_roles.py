"""mkdocs hook: render the Sphinx roles of the docstrings on the API pages.

The docstrings use Sphinx roles (``:func:`scan```, ``:math:`\\eta```, ``.. math::`` blocks),
which mkdocstrings leaves as text: ``:func:`` before a code span, and LaTeX in code spans and
code blocks. After each page is rendered, this hook drops the cross-reference roles (keeping
their code span) and turns the math roles into the ``arithmatex`` elements that
``docs/javascripts/katex-init.js`` typesets, like the math of the Markdown pages.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|mod|class|meth|data|attr|obj|exc):(?=<code>)")
INLINE_MATH = re.compile(r":math:<code>(.*?)</code>", re.S)
DISPLAY_MATH = re.compile(r"<p>\.\. math::</p>\s*<pre><code>(.*?)</code></pre>", re.S)


def on_page_content(html: str, page, config, files) -> str:
    html = DISPLAY_MATH.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1).strip()}\\]</div>',
                            html)
    html = INLINE_MATH.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    return ROLE.sub("", html)
