// Compose page behaviour (templates/webmail/compose/). No inline script: CSP allows only this origin's files.
(function () {
  "use strict";

  // "Sending in N s…": count down to the server's send time.
  function tick() {
    document.querySelectorAll(".undo-countdown[data-send-at]").forEach(function (el) {
      var sendAt = Date.parse(el.getAttribute("data-send-at"));
      if (isNaN(sendAt)) return;
      var left = Math.max(0, Math.ceil((sendAt - Date.now()) / 1000));
      var text = left > 0 ? left + " s" : "a moment";
      if (el.textContent !== text) el.textContent = text;
    });
  }
  setInterval(tick, 250);

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var form = target && target.closest ? target.closest("#compose-form") : null;
    if (!form) return;
    // Ctrl/Cmd+Enter sends; a plain Enter in a one-line field must not send half a message.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      var send = form.querySelector("[data-testid=send]");
      if (send) send.click();
      return;
    }
    if (event.key === "Enter" && target.tagName === "INPUT" && target.type === "text") {
      event.preventDefault();
    }
  });

  // Say which chosen files will go with the message.
  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input || input.id !== "compose-files") return;
    var help = document.getElementById("files-help");
    if (!help) return;
    if (!help.hasAttribute("data-original")) help.setAttribute("data-original", help.textContent);
    var files = Array.prototype.slice.call(input.files || []);
    var names = files.map(function (f) { return f.name; });
    // Say so before the upload: the server stops reading an upload at the first byte over a limit.
    var maxFile = Number(input.getAttribute("data-max-file")) || Infinity;
    var maxTotal = Number(input.getAttribute("data-max-total")) || Infinity;
    var tooBig = files.filter(function (f) { return f.size > maxFile; }).map(function (f) { return f.name; });
    var total = files.reduce(function (sum, f) { return sum + f.size; }, 0);
    if (tooBig.length) {
      help.textContent = "Too large to attach (over the limit per file): " + tooBig.join(", ");
    } else if (total > maxTotal) {
      help.textContent = "Too large to attach together (over the limit per message): " + names.join(", ");
    } else {
      help.textContent = names.length
        ? "Will be attached when you press Send or Attach: " + names.join(", ")
        : help.getAttribute("data-original");
    }
  });
})();
