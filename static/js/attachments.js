// Loaded once by templates/webmail/base.html, so that bodies swapped in by htmx need no script of their own.
// "Show preview" for an attachment still at the sender's: the preview is only
// requested (and so the file only fetched) when the reader asks for it.
(function () {
  "use strict";

  function showPreview(button) {
    const url = button.dataset.previewUrl;
    const name = button.dataset.previewName || "attachment";
    let preview;
    if (button.dataset.previewKind === "image") {
      preview = document.createElement("img");
      preview.alt = "Preview of " + name;
    } else {
      // No sandbox attribute: Chromium will not show a PDF in a sandboxed frame; the
      // response carries its own sandboxing Content-Security-Policy.
      preview = document.createElement("iframe");
      preview.className = "pdf-preview";
      preview.title = "Preview of " + name;
    }
    preview.dataset.testid = "attachment-preview";
    preview.src = url;
    button.replaceWith(preview);
    const item = preview.closest(".attachment");
    const where = item && item.querySelector(".attachment-where");
    if (where) where.remove();
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest(".attachment-preview-load");
    if (button) showPreview(button);
  });
})();
