// Encrypted mail in the browser, with OpenPGP.js (static/vendor/openpgp), under the site's strict CSP.
//
// Compose (templates/webmail/compose/draft.html): when the sender and every recipient have a key
// (asked of this instance: webmail:compose-keys), encryption is offered and on by default. While it is
// on, the draft is not autosaved (that would send the plaintext here), and Send encrypts in this
// browser: one PGP/MIME structure with the protected headers (Subject inside, "protected-headers=v1")
// and the text, encrypted to every recipient's key and the sender's and signed with the sender's;
// each file is encrypted and signed the same way, on its own. The server receives only ciphertext.
//
// Reading (templates/webmail/partials/encrypted_body.html): the ciphertext comes from this instance;
// it is opened here with the reader's key, and the signature checked against the sender's published key.
//
// The key is unlocked with its passphrase once per page load and kept only in this page's memory
// (never in sessionStorage or localStorage): a new page asks again.
(function () {
  "use strict";

  let unlocked = null; // the reader's or sender's decrypted private key, for this page only

  function $(root, selector) {
    return root.querySelector(selector);
  }

  function show(el, text) {
    if (!el) return;
    el.textContent = text || "";
    el.hidden = !text;
  }

  async function unlockKey(secretUrl, passphrase) {
    if (unlocked) return unlocked;
    const answer = await fetch(secretUrl, { credentials: "same-origin" });
    if (!answer.ok) throw new Error("You have no key here: create one in Settings → Encryption.");
    const locked = await openpgp.readPrivateKey({ armoredKey: await answer.text() });
    try {
      unlocked = await openpgp.decryptKey({ privateKey: locked, passphrase: passphrase });
    } catch (e) {
      throw new Error("Wrong passphrase: your key could not be unlocked.");
    }
    return unlocked;
  }

  async function lookupKeys(url, addresses) {
    const answer = await fetch(url + "?addresses=" + encodeURIComponent(addresses.join(",")), {
      credentials: "same-origin",
    });
    if (!answer.ok) throw new Error("Recipients' keys could not be looked up.");
    return answer.json();
  }

  // --- MIME: the protected-headers structure (draft-autocrypt-lamps-protected-headers) --------------

  function b64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary).replace(/.{1,76}/g, "$&\r\n");
  }

  function unb64(text) {
    const binary = atob(text.replace(/\s+/g, ""));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // RFC 2047 encoded-word for a header value that is not plain ASCII.
  function headerValue(text) {
    const clean = text.replace(/[\r\n]+/g, " ");
    if (/^[\x20-\x7e]*$/.test(clean)) return clean;
    return "=?UTF-8?B?" + b64(new TextEncoder().encode(clean)).replace(/\s+/g, "") + "?=";
  }

  function decodeHeader(value) {
    return value.replace(/=\?UTF-8\?B\?([^?]*)\?=/gi, function (_, data) {
      return new TextDecoder().decode(unb64(data));
    });
  }

  function quoted(name) {
    return '"' + headerValue(name).replace(/["\\]/g, "\\$&") + '"';
  }

  async function sha256(bytes) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Attachments are referenced, not inlined: each travels as its own encrypted file (encrypted-N.pgp),
  // named here by position, with its real name, type and the SHA-256 of its plaintext.
  function innerMime({ subject, from, to, cc, text, files }) {
    const boundary = "pm-" + crypto.getRandomValues(new Uint32Array(4)).join("-");
    const lines = [
      'Content-Type: multipart/mixed; boundary="' + boundary + '"; protected-headers="v1"',
      "Subject: " + headerValue(subject),
      "From: " + from,
    ];
    if (to.length) lines.push("To: " + to.join(", "));
    if (cc.length) lines.push("Cc: " + cc.join(", "));
    lines.push("MIME-Version: 1.0", "", "--" + boundary);
    lines.push('Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: base64", "");
    lines.push(b64(new TextEncoder().encode(text)));
    files.forEach(function (file, i) {
      lines.push("--" + boundary);
      lines.push(
        'Content-Type: message/external-body; access-type="x-pushmail-attachment"; position="' +
          (i + 1) +
          '"; sha256="' +
          file.sha256 +
          '"',
        "",
        "Content-Type: " + (file.type || "application/octet-stream"),
        "Content-Disposition: attachment; filename=" + quoted(file.name),
        "",
      );
    });
    lines.push("--" + boundary + "--", "");
    return lines.join("\r\n");
  }

  function parseHeaders(block) {
    const headers = {};
    block
      .replace(/\r\n[ \t]+/g, " ")
      .split(/\r?\n/)
      .forEach(function (line) {
        const at = line.indexOf(":");
        if (at > 0) headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
      });
    return headers;
  }

  function param(value, name) {
    const match = new RegExp(";\\s*" + name + '="?([^";]*)"?', "i").exec(value || "");
    return match ? match[1] : "";
  }

  function splitPart(part) {
    const at = part.search(/\r?\n\r?\n/);
    if (at < 0) return { headers: parseHeaders(part), body: "" };
    const gap = part.slice(at).match(/^\r?\n\r?\n/)[0].length;
    return { headers: parseHeaders(part.slice(0, at)), body: part.slice(at + gap) };
  }

  function readInnerMime(mime) {
    const top = splitPart(mime);
    const type = top.headers["content-type"] || "text/plain";
    const result = { subject: decodeHeader(top.headers.subject || ""), text: "", html: null, files: [] };
    if (!/^multipart\//i.test(type)) {
      result.text = top.body;
      return result;
    }
    const boundary = param(type, "boundary");
    const parts = top.body.split("--" + boundary);
    parts.slice(1).forEach(function (raw) {
      if (raw.startsWith("--")) return;
      const part = splitPart(raw.replace(/^\r?\n/, ""));
      const ctype = part.headers["content-type"] || "text/plain";
      const body =
        /base64/i.test(part.headers["content-transfer-encoding"] || "") && !/^message\//i.test(ctype)
          ? new TextDecoder().decode(unb64(part.body))
          : part.body.replace(/\r?\n$/, "");
      if (/^message\/external-body/i.test(ctype)) {
        const inner = splitPart(part.body).headers;
        result.files.push({
          position: parseInt(param(ctype, "position"), 10),
          sha256: param(ctype, "sha256"),
          type: (inner["content-type"] || "application/octet-stream").split(";")[0],
          name: decodeHeader(param(inner["content-disposition"], "filename")) || "attachment",
        });
      } else if (/^text\/html/i.test(ctype)) {
        result.html = body;
      } else if (/^text\/plain/i.test(ctype) && !result.text) {
        result.text = body;
      }
    });
    return result;
  }

  // --- Compose --------------------------------------------------------------------------------------

  function setUpCompose(form, panel) {
    const toggle = $(panel, "[data-testid=encrypt-toggle]");
    const status = $(panel, "[data-testid=encryption-status]");
    const passphraseRow = $(panel, "[data-encrypt-passphrase]");
    const problem = $(panel, "[data-testid=encryption-problem]");
    const fields = ["to", "cc", "bcc"].map((name) => form.querySelector("[name=" + name + "]"));
    let state = { ready: false, pending: true, keys: [] };
    let asked = 0;

    function addresses() {
      return fields
        .map((f) => (f ? f.value : ""))
        .join(",")
        .split(/[,;]/)
        .map((a) => a.trim())
        .filter(Boolean);
    }

    function on() {
      return state.ready && toggle.checked;
    }

    function render() {
      panel.dataset.encryption = state.pending ? "pending" : on() ? "on" : state.ready ? "off" : "unavailable";
      toggle.disabled = !state.ready;
      passphraseRow.hidden = !on() || Boolean(unlocked);
      form.classList.toggle("encrypted-compose", on());
      const markdown = form.querySelector("[name=markdown]");
      if (markdown) markdown.disabled = on();
      const attach = form.querySelector("button[formaction*='attach']");
      if (attach) attach.disabled = on();
      if (state.pending) {
        show(status, "Looking up the recipients' keys…");
      } else if (on()) {
        show(status, "🔒 Encrypted: only you and the recipients can read this message and its attachments. The subject is hidden too. Drafts are not saved while encryption is on.");
      } else if (state.ready) {
        show(status, "Not encrypted: the server and the recipients' servers can read this message.");
      } else {
        show(status, "Not encrypted: " + (state.reason || "not every recipient has a key") + ".");
      }
    }

    async function refresh() {
      const list = addresses();
      const mine = ++asked;
      state = { ...state, pending: true };
      render();
      let answer;
      try {
        answer = await lookupKeys(panel.dataset.keysUrl, list);
      } catch (e) {
        if (mine === asked) state = { ready: false, pending: false, keys: [], reason: e.message };
        render();
        return;
      }
      if (mine !== asked) return;
      const missing = answer.keys.filter((k) => k.status !== "found").map((k) => k.address);
      if (answer.sender.status !== "found") {
        state = { ready: false, pending: false, keys: [], reason: "you have no key (Settings → Encryption)" };
      } else if (!list.length) {
        // Held: what is typed before the recipients are known may yet be encrypted.
        state = { ready: false, pending: false, hold: true, keys: [], reason: "no recipients yet" };
      } else if (missing.length) {
        state = { ready: false, pending: false, keys: [], reason: "no key found for " + missing.join(", ") };
      } else if (form.querySelector("[data-testid=draft-attachment]")) {
        state = { ready: false, pending: false, keys: [], reason: "files attached before are stored unencrypted" };
      } else {
        state = { ready: true, pending: false, keys: answer.keys.concat([answer.sender]) };
      }
      render();
    }

    let timer = null;
    fields.forEach(function (field) {
      if (!field) return;
      field.addEventListener("input", function () {
        clearTimeout(timer);
        state = { ...state, pending: true };
        render();
        timer = setTimeout(refresh, 400);
      });
      field.addEventListener("change", refresh);
    });
    toggle.addEventListener("change", render);

    // Autosave would send the plaintext here: none while encryption is on or not yet decided.
    form.addEventListener("htmx:beforeRequest", function (event) {
      if (event.detail && event.detail.elt === form && (state.pending || state.hold || on())) {
        event.preventDefault();
      }
    });

    form.addEventListener("submit", function (event) {
      const submitter = event.submitter;
      if (submitter && submitter.getAttribute("formaction")) {
        if (on() || state.pending) {
          // Saving or attaching would store the plaintext: refused while encryption is on.
          if (!/delete/.test(submitter.getAttribute("formaction"))) {
            event.preventDefault();
            show(problem, "Encryption is on: the draft is not saved and files are attached when you press Send.");
          }
        }
        return;
      }
      if (!on()) {
        if (state.pending) {
          event.preventDefault();
          show(problem, "Still looking up the recipients' keys; press Send again in a moment.");
        }
        return;
      }
      event.preventDefault();
      show(problem, "");
      const button = form.querySelector("[data-testid=send]");
      button.disabled = true;
      sendEncrypted(form, panel, state.keys).then(
        function (where) {
          window.location.assign(where);
        },
        function (error) {
          button.disabled = false;
          render();
          show(problem, error.message || String(error));
        },
      );
    });

    render();
    refresh();
  }

  async function sendEncrypted(form, panel, keys) {
    const passphrase = $(panel, "[data-testid=encrypt-passphrase]").value;
    const privateKey = await unlockKey(panel.dataset.secretUrl, passphrase);
    const encryptionKeys = await Promise.all(keys.map((k) => openpgp.readKey({ armoredKey: k.key })));
    const config = { aeadProtect: false }; // packets GnuPG 2.2 reads (SEIPD v1)
    const chosen = Array.from(form.querySelector("[name=files]").files || []);
    const files = [];
    const blobs = [];
    for (const file of chosen) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      files.push({ name: file.name, type: file.type, sha256: await sha256(bytes) });
      const encrypted = await openpgp.encrypt({
        message: await openpgp.createMessage({ binary: bytes, format: "binary" }),
        encryptionKeys: encryptionKeys,
        signingKeys: privateKey,
        format: "binary",
        config: config,
      });
      blobs.push(new Blob([encrypted], { type: "application/octet-stream" }));
    }
    const split = (name) =>
      (form.querySelector("[name=" + name + "]").value || "")
        .split(/[,;]/)
        .map((a) => a.trim())
        .filter(Boolean);
    const mime = innerMime({
      subject: form.querySelector("[name=subject]").value,
      from: panel.dataset.sender,
      to: split("to"),
      cc: split("cc"),
      text: form.querySelector("[name=text]").value,
      files: files,
    });
    const armored = await openpgp.encrypt({
      message: await openpgp.createMessage({ text: mime }),
      encryptionKeys: encryptionKeys,
      signingKeys: privateKey,
      format: "armored",
      config: config,
    });
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    ["to", "cc", "bcc"].forEach((name) => data.append(name, form.querySelector("[name=" + name + "]").value));
    data.append("message", armored);
    if (panel.dataset.draft) data.append("draft", panel.dataset.draft);
    blobs.forEach((blob, i) => data.append("files", blob, "encrypted-" + (i + 1) + ".pgp"));
    const answer = await fetch(panel.dataset.sendUrl, { method: "POST", body: data, credentials: "same-origin" });
    const result = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      throw new Error("Not sent: " + ((result.problems || []).join(" ") || "the server answered " + answer.status));
    }
    return result.sent;
  }

  // --- Reading --------------------------------------------------------------------------------------

  async function fetchFile(url) {
    for (let i = 0; i < 120; i++) {
      const answer = await fetch(url, { credentials: "same-origin" });
      if (answer.status === 200) return new Uint8Array(await answer.arrayBuffer());
      if (answer.status !== 202) throw new Error("the file could not be had (" + answer.status + ")");
      await new Promise((resolve) => setTimeout(resolve, 1000)); // still on its way from the sender's
    }
    throw new Error("the file did not arrive from the sender's server");
  }

  async function signatureNote(signatures, sender, known) {
    if (!signatures.length) return { ok: false, text: "⚠ Not signed: it may not be from " + sender + "." };
    if (!known) {
      return { ok: false, text: "⚠ The signature could not be checked: " + sender + " has no published key." };
    }
    try {
      await signatures[0].verified;
      return { ok: true, text: "✔ Signed by " + sender + ", verified." };
    } catch (e) {
      return { ok: false, text: "⚠ The signature does not verify: this message may not be from " + sender + "." };
    }
  }

  async function openMessage(box) {
    const passphrase = $(box, "[data-testid=encrypted-passphrase]").value;
    const key = await unlockKey(box.dataset.secretUrl, passphrase);
    const sender = box.dataset.sender;
    let senderKey = null;
    try {
      const answer = await lookupKeys(box.dataset.keysUrl, [sender]);
      const found = answer.keys.find((k) => k.status === "found");
      if (found) senderKey = await openpgp.readKey({ armoredKey: found.key });
    } catch (e) {
      senderKey = null;
    }
    const message = await openpgp.readMessage({ armoredMessage: $(box, "[data-ciphertext]").textContent });
    let opened;
    try {
      opened = await openpgp.decrypt({
        message: message,
        decryptionKeys: key,
        verificationKeys: senderKey ? [senderKey] : [],
      });
    } catch (e) {
      throw new Error("This message could not be decrypted with your key: " + (e.message || e));
    }
    const note = await signatureNote(opened.signatures, sender, Boolean(senderKey));
    const inner = readInnerMime(opened.data);
    const signature = $(box, "[data-testid=signature-status]");
    show(signature, note.text);
    signature.dataset.verified = note.ok ? "yes" : "no";
    show($(box, "[data-testid=decrypted-subject]"), inner.subject || "(no subject)");
    const text = $(box, "[data-testid=decrypted-text]");
    text.textContent = inner.text; // shown as text: never parsed as HTML
    text.hidden = false;
    if (inner.html !== null) show($(box, "[data-testid=decrypted-html-note]"), "It also has a formatted version, shown here as plain text for safety.");
    const list = $(box, "[data-testid=decrypted-attachments]");
    list.replaceChildren();
    const urls = Array.from(box.querySelectorAll("[data-encrypted-file]")).map((el) => el.dataset.url);
    inner.files.forEach(function (file) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Download " + file.name;
      button.dataset.testid = "decrypted-attachment";
      button.setAttribute("data-testid", "decrypted-attachment");
      const state = document.createElement("span");
      item.append(button, " ", state);
      list.append(item);
      button.addEventListener("click", function () {
        state.textContent = "Opening…";
        openFile(urls[file.position - 1], file, key, senderKey).then(
          function (result) {
            state.textContent = result.note;
            const link = document.createElement("a");
            link.href = URL.createObjectURL(new Blob([result.bytes], { type: "application/octet-stream" }));
            link.download = file.name;
            link.setAttribute("data-testid", "decrypted-attachment-link");
            link.textContent = "Save " + file.name;
            item.append(" ", link);
            link.click();
          },
          function (error) {
            state.textContent = "⚠ " + (error.message || error);
          },
        );
      });
    });
    list.hidden = !inner.files.length;
    $(box, "[data-testid=encrypted-unlock]").hidden = true;
    box.dataset.opened = "yes";
  }

  async function openFile(url, file, key, senderKey) {
    if (!url) throw new Error("this file is missing from the message");
    const ciphertext = await fetchFile(url);
    const opened = await openpgp.decrypt({
      message: await openpgp.readMessage({ binaryMessage: ciphertext }),
      decryptionKeys: key,
      verificationKeys: senderKey ? [senderKey] : [],
      format: "binary",
    });
    if ((await sha256(opened.data)) !== file.sha256) {
      throw new Error("this file is not the one the signed message names");
    }
    return { bytes: opened.data, note: "decrypted" };
  }

  function setUpReading(box) {
    if (box.dataset.ready) return;
    box.dataset.ready = "yes";
    const form = $(box, "[data-testid=encrypted-unlock]");
    const problem = $(box, "[data-testid=encrypted-problem]");
    const run = function () {
      show(problem, "");
      openMessage(box).catch(function (error) {
        show(problem, error.message || String(error));
      });
    };
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      run();
    });
    if (unlocked) run(); // unlocked already on this page (another message of the thread)
  }

  function setUp() {
    if (typeof openpgp === "undefined") {
      document.querySelectorAll("[data-testid=encryption-status], [data-testid=encrypted-problem]").forEach((el) =>
        show(el, "OpenPGP could not be loaded in this browser: encrypted mail cannot be used here."),
      );
      return;
    }
    const form = document.getElementById("compose-form");
    const panel = document.querySelector("[data-encryption-panel]");
    if (form && panel && !panel.dataset.ready) {
      panel.dataset.ready = "yes";
      setUpCompose(form, panel);
    }
    document.querySelectorAll("[data-testid=encrypted-message]").forEach(setUpReading);
  }

  document.addEventListener("DOMContentLoaded", setUp);
  document.addEventListener("htmx:afterSwap", setUp); // a body swapped in once fetched
})();
