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

  // Sizes as the server writes them (pushmail_site/sizes.py): binary units, one decimal below 10.
  function humanSize(size) {
    var value = size;
    var units = ["bytes", "KiB", "MiB", "GiB"];
    for (var i = 0; i < units.length; i++) {
      if (value < 1024 || units[i] === "GiB") {
        if (units[i] === "bytes") return value === 1 ? "1 byte" : Math.floor(value) + " bytes";
        return (value >= 10 ? value.toFixed(0) : value.toFixed(1)) + " " + units[i];
      }
      value /= 1024;
    }
    return String(size);
  }

  // The chosen files against the limits, in the server's words (attachments/services.py); "" when they fit.
  function sizeProblem(input) {
    var files = Array.prototype.slice.call(input.files || []);
    var maxFile = Number(input.getAttribute("data-max-file")) || Infinity;
    var maxTotal = Number(input.getAttribute("data-max-total")) || Infinity;
    var attached = Number(input.getAttribute("data-attached")) || 0;
    var problems = files
      .filter(function (f) { return f.size > maxFile; })
      .map(function (f) {
        return f.name + " is larger than the " + humanSize(maxFile) + " limit for one attachment (" + humanSize(f.size) + ").";
      });
    var total = files.reduce(function (sum, f) { return sum + f.size; }, attached);
    if (!problems.length && total > maxTotal) {
      problems.push("The attachments add up to " + humanSize(total) + ", over the " + humanSize(maxTotal) + " limit for one message.");
    }
    return problems.join(" ");
  }

  function showFiles(input) {
    var help = document.getElementById("files-help");
    if (!help) return "";
    if (!help.hasAttribute("data-original")) help.setAttribute("data-original", help.textContent);
    var names = Array.prototype.slice.call(input.files || []).map(function (f) { return f.name; });
    var problem = sizeProblem(input);
    help.classList.toggle("files-error", Boolean(problem));
    if (problem) {
      // Said at once, before any upload: nothing is sent while a file is over a limit.
      help.setAttribute("role", "alert");
      help.setAttribute("data-testid", "files-error");
      help.textContent = problem + " Choose smaller files.";
      input.setAttribute("aria-invalid", "true");
    } else {
      help.removeAttribute("role");
      help.removeAttribute("data-testid");
      input.removeAttribute("aria-invalid");
      help.textContent = names.length
        ? "Will be attached when you press Send or Attach: " + names.join(", ")
        : help.getAttribute("data-original");
    }
    return problem;
  }

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (input && input.id === "compose-files") showFiles(input);
  });

  // Send and Attach upload the chosen files: not while one is over a limit. Send asks before
  // sending a message without a subject.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || form.id !== "compose-form") return;
    var submitter = event.submitter;
    var action = (submitter && submitter.getAttribute("formaction")) || form.getAttribute("action") || "";
    var uploads = /\/(send|attach)\/$/.test(action);
    var files = document.getElementById("compose-files");
    if (uploads && files && showFiles(files)) {
      event.preventDefault();
      files.focus();
      return;
    }
    var sending = /\/send\/$/.test(action);
    var subject = document.getElementById("compose-subject");
    if (sending && subject && !subject.value.trim()) {
      if (!window.confirm("Send this message without a subject?")) {
        event.preventDefault();
        subject.focus();
      }
    }
  });

  // The sticky bar's "Add files" opens the file chooser of the Attachments box, which may be
  // scrolled out of view; without this script the box's own field does the same.
  function initAttachButton() {
    document.querySelectorAll("[data-attach-button]").forEach(function (button) {
      var input = document.getElementById(button.getAttribute("aria-controls") || "");
      if (!input) return;
      button.hidden = false;
      button.addEventListener("click", function () { input.click(); });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", initAttachButton);
  else initAttachButton();
})();
