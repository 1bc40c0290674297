// Loaded once by templates/webmail/base.html, so that fragments swapped in by htmx need no script of their own.
// An attachment still at the sender's is fetched in the background while the page shows
// "Fetching attachment…" (templates/webmail/partials/attachment_fetch.html, polled by htmx).
// When the bytes are here the fragment carries a link marked data-auto-download: following it
// starts the download (the answer is a Content-Disposition: attachment, so the page stays).
(function () {
  "use strict";

  function links(root) {
    if (!root || !root.querySelectorAll) return [];
    const found = Array.from(root.querySelectorAll("[data-auto-download]"));
    if (root.matches && root.matches("[data-auto-download]")) found.unshift(root);
    return found;
  }

  function follow(root) {
    links(root).forEach(function (link) {
      if (link.dataset.followed) return;
      link.dataset.followed = "1";
      const item = link.closest(".attachment");
      const where = item && item.querySelector(".attachment-where");
      if (where) where.remove();
      window.location.assign(link.href);
    });
  }

  document.addEventListener("htmx:load", function (event) {
    follow(event.detail.elt);
  });
})();
