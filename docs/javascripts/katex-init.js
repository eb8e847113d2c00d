/*
 * Typeset the math that pymdownx.arithmatex (generic mode) leaves in the page.
 *
 * Arithmatex wraps inline math as <span class="arithmatex">\( ... \)</span> and display
 * math as <div class="arithmatex">\[ ... \]</div>. We hand only those elements to KaTeX's
 * auto-render extension, so a "$" inside code blocks or prose is never touched.
 * KaTeX and auto-render are shipped in docs/assets/katex (no CDN needed).
 */
(function () {
  "use strict";

  var OPTIONS = {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
      { left: "$", right: "$", display: false }
    ],
    throwOnError: false,
    strict: "ignore"
  };

  function typesetMath() {
    if (typeof renderMathInElement !== "function") {
      return;
    }
    // arithmatex output in Markdown pages, and the Markdown cells of rendered notebooks
    // (mkdocs-jupyter leaves their $...$ and $$...$$ as text)
    var nodes = document.querySelectorAll(".arithmatex, .jp-RenderedMarkdown, .jp-MarkdownOutput");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.getAttribute("data-katex-rendered") === "1") {
        continue;
      }
      renderMathInElement(node, OPTIONS);
      node.setAttribute("data-katex-rendered", "1");
    }
  }

  // mkdocs-material exposes the observable `document$`, which emits on the first load and
  // again after every instant-navigation page swap. Fall back to DOMContentLoaded without it.
  if (typeof document$ !== "undefined" && document$ && typeof document$.subscribe === "function") {
    document$.subscribe(typesetMath);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", typesetMath);
  } else {
    typesetMath();
  }
})();
