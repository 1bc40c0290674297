"""Just enough OpenPGP (RFC 4880, v4 keys) to check, trim and publish a key the server never unlocks.

The server does not encrypt, decrypt or sign anything with these keys: the browser does (OpenPGP.js).
It only has to read a key's packets to refuse what it must not store (an unlocked secret key, a key
for another address, a v5/v6 key GnuPG 2.2 cannot read), derive the fingerprint, verify the
self-signatures that bind the user ID and a revocation, and write the public key out again.

Why this and not a library: PGPy is unmaintained, and GnuPG as a subprocess would make every instance
depend on a program and a keyring directory for what is a few hundred lines of packet reading over
``cryptography`` (which the project already uses for Ed25519 and RSA). The signature checks here cover
the algorithms GnuPG 2.2 and OpenPGP.js make by default: EdDSA (Ed25519) and RSA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers


class KeyProblem(ValueError):
    """The uploaded key cannot be stored or published; the message says why, for the user."""


# Packet tags (RFC 4880 §4.3).
SIGNATURE = 2
SECRET_KEY = 5
PUBLIC_KEY = 6
SECRET_SUBKEY = 7
USER_ID = 13
PUBLIC_SUBKEY = 14
USER_ATTRIBUTE = 17
TRUST = 12

# Public-key algorithms (RFC 4880 §9.1, RFC 6637, the EdDSA draft GnuPG 2.2 uses).
RSA = (1, 2, 3)
ELGAMAL = 16
DSA = 17
ECDH = 18
ECDSA = 19
EDDSA = 22
ALGORITHM_NAMES = {1: "RSA", 2: "RSA", 3: "RSA", 16: "ElGamal", 17: "DSA", 18: "ECDH", 19: "ECDSA", 22: "EdDSA"}
ENCRYPTING = {1, 2, 16, 18}
ED25519_OID = bytes.fromhex("2b06010401da470f01")
CURVE_NAMES = {
    ED25519_OID: "Ed25519",
    bytes.fromhex("2b060104019755010501"): "Curve25519",
    bytes.fromhex("2a8648ce3d030107"): "NIST P-256",
    bytes.fromhex("2b81040022"): "NIST P-384",
    bytes.fromhex("2b81040023"): "NIST P-521",
}

# Signature types (RFC 4880 §5.2.1).
CERTIFICATIONS = {0x10, 0x11, 0x12, 0x13}
KEY_REVOCATION = 0x20
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    2: hashes.SHA1,
    8: hashes.SHA256,
    9: hashes.SHA384,
    10: hashes.SHA512,
    11: hashes.SHA224,
}

# A key with a few user IDs and subkeys is a few KiB; nothing a person holds is near this.
MAX_KEY_BYTES = 64 * 1024


@dataclass
class Packet:
    tag: int
    body: bytes

    def encode(self) -> bytes:
        """This packet with a new-format header (RFC 4880 §4.2.2)."""
        n = len(self.body)
        if n < 192:
            length = bytes([n])
        elif n < 8384:
            n -= 192
            length = bytes([(n >> 8) + 192, n & 0xFF])
        else:
            length = b"\xff" + n.to_bytes(4, "big")
        return bytes([0xC0 | self.tag]) + length + self.body


def read_packets(data: bytes) -> list[Packet]:
    """Split binary OpenPGP data into packets; refuse partial lengths (no key uses them) and truncation."""
    packets = []
    i = 0
    while i < len(data):
        head = data[i]
        if not head & 0x80:
            raise KeyProblem(f"not OpenPGP data: byte {i} is not a packet header")
        i += 1
        if head & 0x40:
            tag = head & 0x3F
            if i >= len(data):
                raise KeyProblem("the key data is cut short")
            first = data[i]
            if first < 192:
                length, i = first, i + 1
            elif first < 224:
                if i + 1 >= len(data):
                    raise KeyProblem("the key data is cut short")
                length, i = ((first - 192) << 8) + data[i + 1] + 192, i + 2
            elif first == 255:
                length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
            else:
                raise KeyProblem("the key data uses partial packet lengths, which no key may")
        else:
            tag = (head >> 2) & 0x0F
            kind = head & 0x03
            if kind == 3:
                raise KeyProblem("the key data has a packet of indeterminate length")
            size = (1, 2, 4)[kind]
            length, i = int.from_bytes(data[i : i + size], "big"), i + size
        if i + length > len(data):
            raise KeyProblem("the key data is cut short")
        packets.append(Packet(tag, data[i : i + length]))
        i += length
    return packets


def write_packets(packets: list[Packet]) -> bytes:
    return b"".join(p.encode() for p in packets)


# --- ASCII armor (RFC 4880 §6) -------------------------------------------------------------------

_ARMOR = re.compile(r"-----BEGIN PGP (?P<kind>[A-Z ]+?)-----\r?\n(?P<rest>.*?)-----END PGP (?P=kind)-----", re.DOTALL)
PUBLIC_BLOCK = "PUBLIC KEY BLOCK"
PRIVATE_BLOCK = "PRIVATE KEY BLOCK"


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: str) -> tuple[str, bytes]:
    """The kind (``PUBLIC KEY BLOCK``, ``PRIVATE KEY BLOCK``, ...) and bytes of the first armored block."""
    match = _ARMOR.search(text)
    if match is None:
        raise KeyProblem("no armored OpenPGP key found: paste the whole block, from -----BEGIN PGP to its END line")
    lines = [line.strip() for line in match.group("rest").splitlines()]
    # Armor headers ("Version: ...", "Comment: ...") end at the first blank line.
    if "" in lines and any(":" in line for line in lines[: lines.index("")]):
        lines = lines[lines.index("") + 1 :]
    lines = [line for line in lines if line]
    checksum = None
    if lines and lines[-1].startswith("=") and len(lines[-1]) == 5:
        checksum = lines.pop()[1:]
    try:
        data = base64.b64decode("".join(lines), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyProblem("the armored key is damaged: its base64 does not decode") from exc
    if checksum is not None:
        try:
            expected = int.from_bytes(base64.b64decode(checksum, validate=True), "big")
        except (binascii.Error, ValueError) as exc:
            raise KeyProblem("the armored key is damaged: its checksum line does not decode") from exc
        if crc24(data) != expected:
            raise KeyProblem("the armored key is damaged: its checksum does not match (was it cut or edited?)")
    return match.group("kind"), data


def armor(data: bytes, kind: str = PUBLIC_BLOCK) -> str:
    encoded = base64.b64encode(data).decode()
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    checksum = base64.b64encode(crc24(data).to_bytes(3, "big")).decode()
    return "\n".join([f"-----BEGIN PGP {kind}-----", "", *lines, f"={checksum}", f"-----END PGP {kind}-----", ""])


# --- Key packets -----------------------------------------------------------------------------------


def _mpi(body: bytes, i: int) -> tuple[int, int]:
    """One multiprecision integer at ``i``: its value and the offset after it."""
    if i + 2 > len(body):
        raise KeyProblem("a key or signature packet is cut short")
    bits = int.from_bytes(body[i : i + 2], "big")
    end = i + 2 + (bits + 7) // 8
    if end > len(body):
        raise KeyProblem("a key or signature packet is cut short")
    return int.from_bytes(body[i + 2 : end], "big"), end


def _oid(body: bytes, i: int) -> tuple[bytes, int]:
    if i >= len(body):
        raise KeyProblem("a key packet is cut short")
    size = body[i]
    if size in (0, 0xFF) or i + 1 + size > len(body):
        raise KeyProblem("a key packet has a malformed curve identifier")
    return body[i + 1 : i + 1 + size], i + 1 + size


@dataclass
class KeyMaterial:
    """A v4 key packet's public part (RFC 4880 §5.5.2)."""

    algorithm: int
    created: datetime
    public_body: bytes  # the public key packet's body: what the fingerprint hashes
    curve: bytes = b""
    numbers: tuple[int, ...] = ()
    secret_usage: int | None = None  # the S2K usage octet of a secret key packet (0: not locked)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(self.hashed_prefix(), usedforsecurity=False).hexdigest().upper()

    @property
    def key_id(self) -> bytes:
        return bytes.fromhex(self.fingerprint[-16:])

    def hashed_prefix(self) -> bytes:
        """How a signature over this key begins its hashed data (RFC 4880 §5.2.4)."""
        return b"\x99" + len(self.public_body).to_bytes(2, "big") + self.public_body

    @property
    def algorithm_name(self) -> str:
        name = ALGORITHM_NAMES.get(self.algorithm, f"algorithm {self.algorithm}")
        if self.curve:
            name = CURVE_NAMES.get(self.curve, "an unknown curve")
        elif self.algorithm in RSA and self.numbers:
            name = f"RSA {self.numbers[0].bit_length()}"
        return name


def parse_key_packet(packet: Packet) -> KeyMaterial:
    body = packet.body
    if not body:
        raise KeyProblem("a key packet is empty")
    if body[0] != 4:
        raise KeyProblem(
            f"this is a version {body[0]} key; only version 4 keys are accepted, "
            "the kind GnuPG 2.2 and other current OpenPGP programs read"
        )
    if len(body) < 6:
        raise KeyProblem("a key packet is cut short")
    created = datetime.fromtimestamp(int.from_bytes(body[1:5], "big"), tz=UTC)
    algorithm = body[5]
    i = 6
    curve = b""
    numbers: list[int] = []
    if algorithm in RSA:
        for _ in range(2):
            value, i = _mpi(body, i)
            numbers.append(value)
    elif algorithm == ELGAMAL:
        for _ in range(3):
            value, i = _mpi(body, i)
            numbers.append(value)
    elif algorithm == DSA:
        for _ in range(4):
            value, i = _mpi(body, i)
            numbers.append(value)
    elif algorithm in (ECDSA, EDDSA, ECDH):
        curve, i = _oid(body, i)
        point, i = _mpi(body, i)
        numbers.append(point)
        if algorithm == ECDH:
            if i >= len(body) or i + 1 + body[i] > len(body):
                raise KeyProblem("an encryption key packet is cut short")
            i += 1 + body[i]
    else:
        raise KeyProblem(
            f"the key uses public-key algorithm {algorithm}, which GnuPG 2.2 cannot read; "
            "use a Curve25519 (ECC) or RSA key"
        )
    material = KeyMaterial(
        algorithm=algorithm, created=created, public_body=body[:i], curve=curve, numbers=tuple(numbers)
    )
    if packet.tag in (SECRET_KEY, SECRET_SUBKEY):
        if i >= len(body):
            raise KeyProblem("a secret key packet is cut short")
        material.secret_usage = body[i]
    return material


# --- Signatures ----------------------------------------------------------------------------------


@dataclass
class Signature:
    kind: int
    algorithm: int
    hash_algorithm: int
    hashed: bytes  # version through the hashed subpackets: what the signature covers, with the trailer
    issuers: set[bytes]  # issuer key ids (8 bytes) and fingerprints (20 bytes) from the subpackets
    left16: bytes
    numbers: tuple[int, ...]
    key_flags: int | None = None


def _subpackets(data: bytes) -> list[tuple[int, bytes]]:
    found = []
    i = 0
    while i < len(data):
        first = data[i]
        if first < 192:
            length, i = first, i + 1
        elif first < 255:
            if i + 1 >= len(data):
                raise KeyProblem("a signature subpacket is cut short")
            length, i = ((first - 192) << 8) + data[i + 1] + 192, i + 2
        else:
            length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
        if length == 0 or i + length > len(data):
            raise KeyProblem("a signature subpacket is cut short")
        found.append((data[i] & 0x7F, data[i + 1 : i + length]))
        i += length
    return found


def parse_signature(packet: Packet) -> Signature | None:
    """A v4 signature, or None for another version (kept as is, not relied on)."""
    body = packet.body
    if len(body) < 6 or body[0] != 4:
        return None
    hashed_len = int.from_bytes(body[4:6], "big")
    end_hashed = 6 + hashed_len
    if end_hashed + 2 > len(body):
        raise KeyProblem("a signature packet is cut short")
    unhashed_len = int.from_bytes(body[end_hashed : end_hashed + 2], "big")
    end_unhashed = end_hashed + 2 + unhashed_len
    if end_unhashed + 2 > len(body):
        raise KeyProblem("a signature packet is cut short")
    issuers: set[bytes] = set()
    flags = None
    for position, (kind, value) in enumerate(
        _subpackets(body[6:end_hashed]) + _subpackets(body[end_hashed + 2 : end_unhashed])
    ):
        if kind == 16 and len(value) == 8:
            issuers.add(value)
        elif kind == 33 and len(value) == 21 and value[0] == 4:
            issuers.add(value[1:])
        elif kind == 27 and value and position < len(_subpackets(body[6:end_hashed])):
            flags = value[0]
    numbers = []
    i = end_unhashed + 2
    while i < len(body):
        number, i = _mpi(body, i)
        numbers.append(number)
    return Signature(
        kind=body[1],
        algorithm=body[2],
        hash_algorithm=body[3],
        hashed=body[:end_hashed],
        issuers=issuers,
        left16=body[end_unhashed : end_unhashed + 2],
        numbers=tuple(numbers),
        key_flags=flags,
    )


def _digest(signature: Signature, prefix: bytes) -> bytes:
    algorithm = HASHES.get(signature.hash_algorithm)
    if algorithm is None:
        raise KeyProblem(f"a signature uses hash algorithm {signature.hash_algorithm}, which is not accepted")
    digest = hashes.Hash(algorithm())
    digest.update(prefix + signature.hashed + b"\x04\xff" + len(signature.hashed).to_bytes(4, "big"))
    return digest.finalize()


def verifies(signature: Signature, key: KeyMaterial, prefix: bytes) -> bool:
    """Whether ``signature`` by ``key`` covers ``prefix`` (the key, and the user ID when certified)."""
    if signature.algorithm != key.algorithm:
        return False
    digest = _digest(signature, prefix)
    if digest[:2] != signature.left16:
        return False
    hash_algorithm = HASHES[signature.hash_algorithm]()
    try:
        if key.algorithm == EDDSA and key.curve == ED25519_OID and len(signature.numbers) == 2:
            point = key.numbers[0].to_bytes(33, "big")
            if point[0] != 0x40:
                return False
            r, s = (n.to_bytes(32, "big") for n in signature.numbers)
            Ed25519PublicKey.from_public_bytes(point[1:]).verify(r + s, digest)
            return True
        if key.algorithm in RSA and len(signature.numbers) == 1:
            n, e = key.numbers
            public = RSAPublicNumbers(e, n).public_key()
            raw = signature.numbers[0].to_bytes((n.bit_length() + 7) // 8, "big")
            public.verify(raw, digest, padding.PKCS1v15(), utils.Prehashed(hash_algorithm))
            return True
    except (InvalidSignature, ValueError, OverflowError):
        return False
    return False


def user_id_prefix(user_id: bytes) -> bytes:
    return b"\xb4" + len(user_id).to_bytes(4, "big") + user_id


# --- Whole keys ----------------------------------------------------------------------------------

_EMAIL_IN_ANGLES = re.compile(r"<([^<>\s]+@[^<>\s]+)>\s*$")


def email_of(user_id: str) -> str:
    """The address a user ID names: the part in angle brackets, or the whole ID when it is an address."""
    match = _EMAIL_IN_ANGLES.search(user_id)
    if match:
        return match.group(1).lower()
    stripped = user_id.strip()
    return stripped.lower() if "@" in stripped and " " not in stripped else ""


@dataclass
class Component:
    """A user ID or subkey, with the signatures that follow it."""

    packet: Packet
    signatures: list[Packet] = field(default_factory=list)


@dataclass
class TransferableKey:
    """A key as exported (RFC 4880 §11.1, §11.2): primary key, its signatures, user IDs, subkeys."""

    primary: Packet
    direct: list[Packet]
    user_ids: list[Component]
    subkeys: list[Component]
    attributes: list[Component]

    @property
    def material(self) -> KeyMaterial:
        return parse_key_packet(self.primary)

    @property
    def is_secret(self) -> bool:
        return self.primary.tag == SECRET_KEY


def split_key(packets: list[Packet]) -> TransferableKey:
    """The first key in ``packets``; trust packets (GnuPG's keyring bookkeeping) are dropped."""
    packets = [p for p in packets if p.tag != TRUST]
    if not packets or packets[0].tag not in (PUBLIC_KEY, SECRET_KEY):
        raise KeyProblem("the data does not start with a key")
    key = TransferableKey(primary=packets[0], direct=[], user_ids=[], subkeys=[], attributes=[])
    current: Component | None = None
    for packet in packets[1:]:
        if packet.tag in (PUBLIC_KEY, SECRET_KEY):
            raise KeyProblem("the data holds more than one key: upload one key at a time")
        if packet.tag == SIGNATURE:
            (current.signatures if current else key.direct).append(packet)
        elif packet.tag == USER_ID:
            current = Component(packet)
            key.user_ids.append(current)
        elif packet.tag == USER_ATTRIBUTE:
            current = Component(packet)
            key.attributes.append(current)
        elif packet.tag in (PUBLIC_SUBKEY, SECRET_SUBKEY):
            if (packet.tag == SECRET_SUBKEY) != key.is_secret:
                raise KeyProblem("the key mixes public and secret packets")
            current = Component(packet)
            key.subkeys.append(current)
        else:
            raise KeyProblem(f"the key holds an unexpected packet (type {packet.tag})")
    return key


def public_packet(packet: Packet) -> Packet:
    """A key packet with its secret part removed: secret key and subkey become public ones."""
    if packet.tag not in (SECRET_KEY, SECRET_SUBKEY):
        return packet
    material = parse_key_packet(packet)
    return Packet(PUBLIC_KEY if packet.tag == SECRET_KEY else PUBLIC_SUBKEY, material.public_body)


@dataclass(frozen=True)
class CheckedKey:
    """A locked secret key fit to store, and the public key to publish for ``address``."""

    fingerprint: str
    algorithm: str
    created: datetime
    user_id: str
    secret: bytes  # the whole locked key, as uploaded (without trust packets)
    public: bytes  # primary, its signatures, the user IDs for the address, subkeys


def _revocations(key: TransferableKey, material: KeyMaterial) -> list[Packet]:
    found = []
    for packet in key.direct:
        signature = parse_signature(packet)
        if signature and signature.kind == KEY_REVOCATION and verifies(signature, material, material.hashed_prefix()):
            found.append(packet)
    return found


def _bound_user_ids(key: TransferableKey, material: KeyMaterial, address: str) -> list[Component]:
    """The key's user IDs for ``address`` that its primary key certified; KeyProblem when there is none."""
    address = address.lower()
    bound = []
    names = []
    for component in key.user_ids:
        text = component.packet.body.decode("utf-8", errors="replace")
        names.append(text)
        if email_of(text) != address:
            continue
        prefix = material.hashed_prefix() + user_id_prefix(component.packet.body)
        for packet in component.signatures:
            signature = parse_signature(packet)
            if signature and signature.kind in CERTIFICATIONS and verifies(signature, material, prefix):
                bound.append(component)
                break
    if not bound:
        if any(email_of(name) == address for name in names):
            raise KeyProblem(
                f"the user ID for {address} is not signed by the key itself (or uses an algorithm "
                "other than Ed25519 or RSA); export the key again from the program that made it"
            )
        listed = ", ".join(repr(n) for n in names) or "none"
        raise KeyProblem(f"the key has no user ID for {address} (it has {listed}); add one, then upload it again")
    return bound


@dataclass(frozen=True)
class PublicKeyFacts:
    fingerprint: str
    revoked: bool
    can_encrypt: bool


def check_public_key(data: bytes, *, address: str) -> PublicKeyFacts:
    """Check a correspondent's published key for ``address``: v4, readable, a certified user ID for it."""
    if len(data) > MAX_KEY_BYTES:
        raise KeyProblem(f"the key is {len(data)} bytes; at most {MAX_KEY_BYTES} are accepted")
    key = split_key(read_packets(data))
    if key.is_secret:
        raise KeyProblem("a published key must not hold a secret key")
    material = key.material
    _bound_user_ids(key, material, address)
    for component in key.subkeys:
        parse_key_packet(component.packet)
    encrypts = material.algorithm in RSA or any(parse_key_packet(c.packet).algorithm in ENCRYPTING for c in key.subkeys)
    return PublicKeyFacts(
        fingerprint=material.fingerprint, revoked=bool(_revocations(key, material)), can_encrypt=encrypts
    )


def split_keys(data: bytes) -> list[bytes]:
    """Concatenated keys (a WKD answer) as one binary key each."""
    keys: list[list[Packet]] = []
    for packet in read_packets(data):
        if packet.tag in (PUBLIC_KEY, SECRET_KEY):
            keys.append([])
        if not keys:
            raise KeyProblem("the data does not start with a key")
        keys[-1].append(packet)
    return [write_packets(packets) for packets in keys]


def check_secret_key(data: bytes, *, address: str) -> CheckedKey:
    """Check an uploaded secret key for ``address``; raise KeyProblem naming the first problem.

    The key must be a v4 secret key whose every secret part is locked with a passphrase, with a user ID
    for ``address`` that its primary key certified, an encryption subkey GnuPG 2.2 can use, and no
    revocation.
    """
    if len(data) > MAX_KEY_BYTES:
        raise KeyProblem(f"the key is {len(data)} bytes; at most {MAX_KEY_BYTES} are accepted")
    key = split_key(read_packets(data))
    if not key.is_secret:
        raise KeyProblem(
            "this is a public key; upload your secret key, locked with a passphrase "
            "(gpg --export-secret-keys --armor ADDRESS)"
        )
    material = key.material
    for packet in [key.primary, *(c.packet for c in key.subkeys)]:
        part = parse_key_packet(packet)
        if part.secret_usage == 0:
            raise KeyProblem(
                "the secret key is not locked with a passphrase; the server stores only locked keys. "
                "Set a passphrase first (gpg --edit-key ADDRESS passwd)"
            )
        if part.secret_usage == 253:
            raise KeyProblem("the secret key is locked with AEAD, which GnuPG 2.2 cannot read; lock it with CFB")
        if part.secret_usage not in (254, 255):
            raise KeyProblem("the secret key is locked with an obsolete method; set its passphrase again")
    if _revocations(key, material):
        raise KeyProblem("this key is revoked; create or import a key that is not")
    bound = _bound_user_ids(key, material, address)
    if not any(parse_key_packet(c.packet).algorithm in ENCRYPTING for c in key.subkeys) and (
        material.algorithm not in RSA
    ):
        raise KeyProblem("the key has no encryption subkey, so nobody could encrypt to it")
    public = [public_packet(key.primary), *key.direct]
    for component in bound:
        public += [component.packet, *component.signatures]
    for component in key.subkeys:
        public += [public_packet(component.packet), *component.signatures]
    secret = [key.primary, *key.direct]
    for component in [*key.user_ids, *key.attributes, *key.subkeys]:
        secret += [component.packet, *component.signatures]
    return CheckedKey(
        fingerprint=material.fingerprint,
        algorithm=material.algorithm_name,
        created=material.created,
        user_id=bound[0].packet.body.decode("utf-8", errors="replace"),
        secret=write_packets(secret),
        public=write_packets(public),
    )


def find_revocation(data: bytes, *, public: bytes) -> Packet:
    """The key revocation signature in ``data`` (a revoked key or a revocation certificate) for ``public``."""
    if len(data) > MAX_KEY_BYTES:
        raise KeyProblem(f"the revocation is {len(data)} bytes; at most {MAX_KEY_BYTES} are accepted")
    material = split_key(read_packets(public)).material
    packets = [p for p in read_packets(data) if p.tag == SIGNATURE]
    if not packets:
        raise KeyProblem("no revocation signature found in what was uploaded")
    for packet in packets:
        signature = parse_signature(packet)
        if signature is None or signature.kind != KEY_REVOCATION:
            continue
        if verifies(signature, material, material.hashed_prefix()):
            return packet
        raise KeyProblem(f"the revocation is not signed by key {material.fingerprint}")
    raise KeyProblem("what was uploaded holds no key revocation signature")


def with_revocation(data: bytes, revocation: Packet) -> bytes:
    """``data`` (a whole key) with ``revocation`` placed after its primary key (RFC 4880 §11.1)."""
    packets = read_packets(data)
    return write_packets([packets[0], revocation, *packets[1:]])


def is_revoked(data: bytes) -> bool:
    key = split_key(read_packets(data))
    return bool(_revocations(key, key.material))


def public_from(data: bytes) -> bytes:
    """The public counterpart of a whole secret key, every component kept (for the key's owner)."""
    return write_packets([public_packet(p) for p in read_packets(data)])


def read_armored_or_binary(text: str | bytes) -> bytes:
    """Bytes from an upload that is armored text (the usual) or the binary export."""
    if isinstance(text, bytes):
        if text[:1] and text[0] & 0x80:
            return text
        text = text.decode("utf-8", errors="replace")
    return dearmor(text)[1]


# --- The Web Key Directory's name for a local part (draft-koch-openpgp-webkey-service §3.1) ---------

_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    bits = int.from_bytes(data, "big")
    count = len(data) * 8
    pad = (-count) % 5
    bits <<= pad
    count += pad
    return "".join(_ZBASE32[(bits >> (count - 5 * (i + 1))) & 0x1F] for i in range(count // 5))


def wkd_hash(local_part: str) -> str:
    """The z-base-32 SHA-1 of the lowercased local part: the file name under ``hu/``."""
    return zbase32(hashlib.sha1(local_part.lower().encode(), usedforsecurity=False).digest())
