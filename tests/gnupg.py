"""GnuPG as a user runs it, in a throw-away home directory: for tests that check keys against the real program."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GnuPG:
    """A throw-away GnuPG home: the real program, as a user runs it."""

    def __init__(self, home: Path) -> None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The agent keeps no passphrase: a test's "wrong passphrase" is refused whatever came before it.
        (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
        self.home = home

    def run(self, *args: str, data: bytes | None = None, passphrase: str | None = None) -> bytes:
        command = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--pinentry-mode", "loopback"]
        if passphrase is not None:
            command += ["--passphrase", passphrase]
        done = subprocess.run(command + list(args), input=data, capture_output=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done.stdout

    def make_key(self, uid: str, *, passphrase: str, algorithm: str = "ed25519") -> str:
        self.run(
            "--quick-gen-key",
            uid,
            algorithm,
            "sign,cert" if algorithm != "rsa2048" else "default",
            "0",
            passphrase=passphrase,
        )
        fingerprint = self.fingerprints(uid)[0]
        if algorithm == "ed25519":
            self.run("--quick-add-key", fingerprint, "cv25519", "encr", "0", passphrase=passphrase)
        return fingerprint

    def close(self) -> None:
        """Stop the gpg-agent this home started."""
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)  # noqa: S607

    def fingerprints(self, who: str, *, secret: bool = False) -> list[str]:
        try:
            listing = self.run("--with-colons", "--list-secret-keys" if secret else "--list-keys", who).decode()
        except subprocess.CalledProcessError:
            return []  # gpg answers "no such key" with an error
        lines = listing.splitlines()
        return [
            lines[i + 1].split(":")[9]
            for i, line in enumerate(lines)
            if line.startswith(("pub:", "sec:")) and i + 1 < len(lines)
        ]

    def export_secret(self, who: str, *, passphrase: str) -> str:
        return self.run("--armor", "--export-secret-keys", who, passphrase=passphrase).decode()

    def revocation_certificate(self, fingerprint: str) -> str:
        return (self.home / "openpgp-revocs.d" / f"{fingerprint}.rev").read_text()
