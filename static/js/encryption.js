// Settings → Encryption (templates/webmail/settings/encryption.html): the key pair is made and locked here,
// in the browser, with OpenPGP.js (static/vendor/openpgp); the server receives only the locked key.
// Revoking unlocks the key here with the passphrase and sends only the signed revocation.
(function () {
  "use strict";

  function say(text) {
    const box = document.querySelector("[data-testid=encryption-browser-problem]");
    box.textContent = text;
    box.hidden = !text;
  }

  function busy(form, label) {
    const button = form.querySelector("button[type=submit]");
    button.disabled = Boolean(label);
    if (label) {
      button.dataset.label = button.dataset.label || button.textContent;
      button.textContent = label;
    } else if (button.dataset.label) {
      button.textContent = button.dataset.label;
    }
  }

  async function createKey(form) {
    const passphrase = form.querySelector("#key-passphrase").value;
    if (passphrase.length < 8) throw new Error("The passphrase needs at least 8 characters.");
    if (passphrase !== form.querySelector("#key-passphrase-again").value) {
      throw new Error("The two passphrases differ.");
    }
    const userID = { email: form.dataset.address };
    if (form.dataset.name) userID.name = form.dataset.name;
    // v4 keys, Ed25519 for signing and Curve25519 (ECDH) for encryption, the secret parts locked
    // with the passphrase in the format GnuPG 2.2 reads (iterated S2K, AES-256 CFB; no AEAD).
    const { privateKey } = await openpgp.generateKey({
      type: "ecc",
      curve: "curve25519Legacy",
      userIDs: [userID],
      passphrase: passphrase,
      format: "armored",
      config: { v6Keys: false, aeadProtect: false },
    });
    const check = await openpgp.readPrivateKey({ armoredKey: privateKey });
    if (check.isDecrypted()) throw new Error("The key was not locked; nothing was sent.");
    form.querySelector("textarea[name=secret_key]").value = privateKey;
  }

  async function revocation(form) {
    const passphrase = form.querySelector("#revoke-passphrase").value;
    const answer = await fetch(form.dataset.secretUrl, { credentials: "same-origin" });
    if (!answer.ok) throw new Error("Your key could not be loaded; try again.");
    const locked = await openpgp.readPrivateKey({ armoredKey: await answer.text() });
    let unlocked;
    try {
      unlocked = await openpgp.decryptKey({ privateKey: locked, passphrase: passphrase });
    } catch (e) {
      throw new Error("Wrong passphrase: the key could not be unlocked.");
    }
    const { publicKey } = await openpgp.revokeKey({
      key: unlocked,
      reasonForRevocation: { flag: openpgp.enums.reasonForRevocation.keyRetired },
      format: "armored",
    });
    form.querySelector("textarea[name=revocation]").value = publicKey;
  }

  function handle(form, work, label) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.ready === "yes") return;
      event.preventDefault();
      say("");
      if (typeof openpgp === "undefined") {
        say("OpenPGP could not be loaded in this browser, so nothing was sent.");
        return;
      }
      busy(form, label);
      work(form).then(
        function () {
          form.dataset.ready = "yes";
          form.submit();
        },
        function (error) {
          busy(form, "");
          say(error.message || String(error));
        },
      );
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const create = document.getElementById("create-key-form");
    if (create) handle(create, createKey, "Creating your key…");
    const revoke = document.getElementById("revoke-form");
    if (revoke) handle(revoke, revocation, "Revoking…");
  });
})();
