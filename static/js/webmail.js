// Webmail behaviour: keyboard shortcuts, live updates, title count (see templates/webmail/base.html).
// Loaded with `defer` from a static file: the Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  const POLL_MS = 10000;
  const body = document.body;
  const ROW = '[data-testid="message-row"], [data-testid="sent-row"]';
  let selected = -1;

  // --- unread count in the title and sidebar -------------------------------------------

  function setUnread(count) {
    // The server caps counts and sends "999+" past the cap.
    const text = String(count).trim();
    const n = Math.max(0, parseInt(text, 10) || 0);
    const shown = n > 0 && text.endsWith("+") ? n + "+" : String(n);
    body.dataset.unread = shown;
    const bare = document.title.replace(/^\(\d+\+?\)\s+/, "");
    document.title = n > 0 ? "(" + shown + ") " + bare : bare;
    const link = document.querySelector('.sidebar a[data-folder="inbox"]');
    if (!link) return;
    let badge = link.querySelector('[data-unread-count="inbox"]');
    if (n === 0) {
      if (badge) badge.remove();
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "count";
      badge.dataset.unreadCount = "inbox";
      link.append(" ", badge);
    }
    badge.replaceChildren();
    const open = document.createElement("span");
    open.className = "visually-hidden";
    open.textContent = "(";
    const close = document.createElement("span");
    close.className = "visually-hidden";
    close.textContent = " unread)";
    badge.append(open, shown, close);
  }

  // --- rows and selection ------------------------------------------------------------

  function rows() {
    return Array.from(document.querySelectorAll(ROW));
  }

  function select(index, focus) {
    const all = rows();
    if (all.length === 0) return;
    selected = Math.max(0, Math.min(all.length - 1, index));
    all.forEach(function (row, i) {
      row.classList.toggle("selected", i === selected);
    });
    const row = all[selected];
    row.scrollIntoView({ block: "nearest" });
    if (focus) {
      const link = row.querySelector("a.open");
      if (link) link.focus({ preventScroll: true });
    }
  }

  function selectedRow() {
    const all = rows();
    if (selected < 0 || selected >= all.length) return null;
    return all[selected];
  }

  function openRow(row) {
    const href = row && row.dataset.href;
    if (href) window.location.assign(href);
  }

  function csrfToken() {
    const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
    if (input) return input.value;
    try {
      return JSON.parse(body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function postForm(url, fields) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = url;
    fields.csrfmiddlewaretoken = csrfToken();
    Object.keys(fields).forEach(function (name) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = fields[name];
      form.append(input);
    });
    body.append(form);
    form.submit();
  }

  function postAction(url, action) {
    postForm(url, { action: action, next: location.pathname + location.search });
  }

  // A button the page marks for a key (the message view's Reply, Archive...), if any.
  function pageButton(key) {
    return document.querySelector('[data-shortcut="' + (window.CSS && CSS.escape ? CSS.escape(key) : key) + '"]');
  }

  const composeKey = window.crypto && crypto.randomUUID ? crypto.randomUUID() : "";

  function composeFor(kind, row) {
    const id = row && row.dataset.entryId;
    if (!id) return;
    // A POST: replying makes a draft. The page's key makes a repeated key press open the same draft.
    if (kind === "forward") postForm("/compose/forward/" + id + "/", { key: composeKey });
    else postForm("/compose/reply/" + id + "/", { key: composeKey, all: kind === "all" ? "1" : "" });
  }

  // --- keyboard shortcuts ----------------------------------------------------------------

  function typing(target) {
    if (!target || !(target instanceof Element)) return false;
    if (target.isContentEditable) return true;
    return Boolean(target.closest("input, textarea, select, [contenteditable]"));
  }

  function onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const help = document.getElementById("shortcuts-help");
    if (help && help.open) return; // the dialog handles Escape itself
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const key = event.key;
    const row = selectedRow();
    const onControl = event.target instanceof Element && event.target.closest("a, button");
    switch (key) {
      case "j":
        select(selected + 1, true);
        break;
      case "k":
        select(selected < 0 ? 0 : selected - 1, true);
        break;
      case "o":
        openRow(row);
        break;
      case "Enter":
        if (onControl || !row) return; // links and buttons do their own thing
        openRow(row);
        break;
      case "x": {
        const box = row && row.querySelector('input[type="checkbox"]');
        if (box) box.click();
        break;
      }
      case "r":
      case "a":
      case "f": {
        const button = pageButton(key);
        if (button) button.click();
        else composeFor({ r: "reply", a: "all", f: "forward" }[key], row);
        break;
      }
      case "e":
      case "#":
      case "!": {
        const button = pageButton(key);
        if (button) button.click();
        else if (row && row.dataset.actionUrl) postAction(row.dataset.actionUrl, { e: "archive", "#": "delete", "!": "report_spam" }[key]);
        break;
      }
      case "/": {
        const search = document.querySelector("[data-search-input], #search-q, input[type=\"search\"][name=\"q\"]");
        if (!search) return;
        search.focus();
        search.select();
        break;
      }
      case "c": {
        window.location.assign(body.dataset.composeUrl || "/compose/");
        break;
      }
      case "?":
        if (help && typeof help.showModal === "function") help.showModal();
        break;
      case "Escape": {
        body.classList.remove("sidebar-open");
        const toggleButton = document.querySelector("[data-sidebar-toggle]");
        if (toggleButton) toggleButton.setAttribute("aria-expanded", "false");
        return;
      }
      default:
        return;
    }
    event.preventDefault();
  }

  // --- live inbox: new mail in, rows that left out ---------------------------------------

  let announcer = null;

  function announce(text) {
    if (!announcer) {
      announcer = document.createElement("div");
      announcer.className = "visually-hidden";
      announcer.setAttribute("role", "status");
      announcer.setAttribute("aria-live", "polite");
      body.append(announcer);
    }
    announcer.textContent = text;
  }

  function idsIn(header) {
    return (header || "").split(",").filter(function (id) {
      return /^\d+$/.test(id);
    });
  }

  // Rows the server says left the folder (a spam verdict hid them, moved or deleted elsewhere).
  function removeRows(ids) {
    let removed = 0;
    ids.forEach(function (id) {
      const row = document.querySelector('[data-entry-id="' + id + '"]');
      if (!row) return;
      const index = rows().indexOf(row);
      if (selected >= 0 && index >= 0 && index < selected) selected -= 1;
      row.remove();
      removed += 1;
    });
    if (selected >= rows().length) selected = rows().length - 1;
    return removed;
  }

  // Rows whose sender withdrew them stay, marked as a reload would show them.
  function markWithdrawn(ids) {
    ids.forEach(function (id) {
      const row = document.querySelector('[data-entry-id="' + id + '"]');
      if (!row || row.dataset.state === "withdrawn") return;
      row.dataset.state = "withdrawn";
      // Nothing left to read: not unread any more (the poll's X-Unread-Count says the same).
      row.classList.remove("unread");
      row.querySelectorAll("a.open .visually-hidden").forEach(function (hint) {
        if (hint.textContent === "Unread: ") hint.remove();
      });
      const subject = row.querySelector("td.subject");
      if (!subject) return;
      subject.querySelectorAll(".state-chip.at-sender").forEach(function (chip) {
        chip.remove();
      });
      const chip = document.createElement("span");
      chip.className = "state-chip withdrawn";
      chip.textContent = "Withdrawn";
      subject.prepend(chip);
    });
  }

  function startPolling(table) {
    const tbody = table.querySelector("tbody");
    let busy = false;

    async function poll() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        // The rows shown (at most a page and what arrived since): the server says which have left.
        const shown = Array.from(tbody.querySelectorAll("[data-entry-id]"))
          .slice(0, 200)
          .map(function (row) {
            return row.dataset.entryId;
          });
        const url =
          table.dataset.pollUrl +
          "?after=" +
          encodeURIComponent(table.dataset.pollAfter || "0~0") +
          "&shown=" +
          shown.join(",");
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (!response.ok || response.redirected) return; // signed out, or the server is busy: try later
        const unread = response.headers.get("X-Unread-Count");
        if (unread !== null) setUnread(unread);
        const removed = removeRows(idsIn(response.headers.get("X-Gone")));
        markWithdrawn(idsIn(response.headers.get("X-Withdrawn")));
        const template = document.createElement("template");
        template.innerHTML = await response.text();
        const fresh = Array.from(template.content.querySelectorAll(ROW)).filter(function (row) {
          return !document.querySelector('[data-entry-id="' + row.dataset.entryId + '"]');
        });
        // A new message of a conversation already listed: its row moves up, as the newest.
        fresh.forEach(function (row) {
          if (!row.dataset.conversation) return;
          tbody.querySelectorAll("[data-conversation]").forEach(function (old) {
            if (old.dataset.conversation !== row.dataset.conversation) return;
            const index = rows().indexOf(old);
            if (selected >= 0 && index >= 0 && index < selected) selected -= 1;
            old.remove();
          });
        });
        const said = [];
        if (fresh.length > 0) {
          fresh.forEach(function (row) {
            row.classList.add("new");
          });
          tbody.prepend.apply(tbody, fresh);
          table.dataset.pollAfter = fresh[0].dataset.cursor;
          if (selected >= 0) selected += fresh.length;
          const empty = document.querySelector('[data-testid="empty-folder"]');
          if (empty) empty.remove();
          said.push(fresh.length === 1 ? "1 new message" : fresh.length + " new messages");
        }
        if (removed > 0) {
          said.push(removed === 1 ? "1 message left this folder" : removed + " messages left this folder");
          if (rows().length === 0 && !document.querySelector('[data-testid="empty-folder"]')) {
            const empty = document.createElement("p");
            empty.className = "empty";
            empty.dataset.testid = "empty-folder";
            empty.textContent = "No mail here. New messages appear without reloading.";
            table.after(empty);
          }
        }
        if (said.length > 0) announce(said.join("; "));
      } catch (e) {
        // Offline for a moment: the next tick tries again.
      } finally {
        busy = false;
      }
    }

    window.setInterval(poll, POLL_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
  }

  // --- wiring ----------------------------------------------------------------------------

  function init() {
    setUnread(body.dataset.unread);
    document.addEventListener("keydown", onKey);

    document.querySelectorAll("[data-help-open]").forEach(function (button) {
      button.addEventListener("click", function () {
        const help = document.getElementById("shortcuts-help");
        if (help && typeof help.showModal === "function") help.showModal();
      });
    });

    const toggle = document.querySelector("[data-sidebar-toggle]");
    if (toggle) {
      const topbar = document.querySelector(".topbar");
      const setOpen = function (open) {
        if (open && topbar) document.documentElement.style.setProperty("--topbar-height", topbar.offsetHeight + "px");
        body.classList.toggle("sidebar-open", open);
        toggle.setAttribute("aria-expanded", open ? "true" : "false");
      };
      toggle.addEventListener("click", function () {
        const open = !body.classList.contains("sidebar-open");
        setOpen(open);
        if (open) {
          const first = document.querySelector(".sidebar a");
          if (first) first.focus();
        }
      });
      // A tap on the page beside the open sidebar closes it.
      const main = document.getElementById("main");
      if (main) {
        main.addEventListener("click", function () {
          if (body.classList.contains("sidebar-open")) setOpen(false);
        });
      }
    }

    document.querySelectorAll("[data-select-all]").forEach(function (all) {
      all.addEventListener("change", function () {
        const form = all.form;
        document.querySelectorAll('input[type="checkbox"][name="ids"]').forEach(function (box) {
          if (!form || box.form === form) box.checked = all.checked;
        });
        syncSelection();
      });
    });
    // A list's bulk actions show (at phone width) only while something is selected.
    document.documentElement.classList.add("js");
    document.addEventListener("change", syncSelection);
    document.addEventListener("click", function () { setTimeout(syncSelection, 0); });
    syncSelection();

    // A click anywhere on a row (not on its controls) opens the message.
    document.addEventListener("click", function (event) {
      const target = event.target;
      if (!(target instanceof Element) || target.closest("a, button, input, label, select")) return;
      const row = target.closest(ROW);
      if (row) openRow(row);
    });

    const live = document.querySelector("table[data-poll-url]");
    if (live) startPolling(live);
  }

  function syncSelection() {
    document.querySelectorAll("[data-bulk-bar]").forEach(function (bar) {
      const form = bar.closest("form");
      const chosen = Array.prototype.filter.call(
        document.querySelectorAll('input[type="checkbox"][name="ids"]'),
        function (box) { return box.checked && (!form || box.form === form); }
      ).length;
      bar.toggleAttribute("data-selected", chosen > 0);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
