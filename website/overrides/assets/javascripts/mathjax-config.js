// MathJax 3 on the course site (loaded after it by website/overrides/main.html), typesetting only where maths is
// written. A notebook's page (nbconvert keeps the Markdown cells' $...$ and $$...$$ as they are): its Markdown,
// not its code (pre) or outputs, except LaTeX and Markdown outputs. A page of docs/: the spans and blocks that
// pymdownx.arithmatex writes, \(...\) and \[...\], and nothing else, so a dollar sign in prose stays one.
const notebookPage = document.querySelector(".jupyter-wrapper") !== null;
window.MathJax = notebookPage ? {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {ignoreHtmlClass: "tex2jax_ignore|jp-OutputArea", processHtmlClass: "jp-RenderedLatex|jp-RenderedMarkdown"},
} : {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
};
