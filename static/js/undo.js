// The Undo notice after a send or a change (templates/webmail/partials/undo_notice.html):
// counts the send down, then says "Sent" or goes away when its window ends; "z" presses Undo.
(function () {
  "use strict";

  function notice() {
    return document.querySelector(".undo-notice[data-undo-until]");
  }

  function typing(target) {
    return target instanceof Element && Boolean(target.closest("input, textarea, select, [contenteditable]"));
  }

  function settle(el) {
    const form = el.querySelector("form");
    if (form) form.remove();
    if (el.dataset.undoKind !== "send") {
      el.remove();
      return;
    }
    const text = el.querySelector(".undo-text");
    const link = document.createElement("a");
    link.href = el.dataset.sentUrl || "/mail/sent/";
    link.textContent = "View it in Sent";
    text.replaceChildren("Sent. ", link);
    el.dataset.testid = "sent-notice";
    window.setTimeout(function () {
      el.remove();
    }, 8000);
  }

  function tick() {
    const el = notice();
    if (!el) return;
    const until = Date.parse(el.dataset.undoUntil);
    if (isNaN(until)) return;
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    const countdown = el.querySelector(".undo-countdown");
    if (countdown) {
      const text = left + " s";
      if (countdown.textContent !== text) countdown.textContent = text;
    }
    if (left <= 0) {
      el.removeAttribute("data-undo-until");
      settle(el);
    }
  }

  function init() {
    if (!notice()) return;
    tick();
    const timer = window.setInterval(function () {
      tick();
      if (!notice()) window.clearInterval(timer);
    }, 250);
    document.addEventListener("keydown", function (event) {
      if (event.key !== "z" || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      const el = notice();
      const button = el && el.querySelector("[data-undo-button]");
      if (!button) return;
      event.preventDefault();
      button.click();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
