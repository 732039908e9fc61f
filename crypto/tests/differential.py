"""The independent side of crypto/tests/differential.rs: Syndace's PyPI packages `xeddsa`
(libxeddsa), `x3dh` and `doubleratchet`, configured with ferry's constructions where they are
configurable (encoding 0x05 ‖ u, SHA-256, the info strings, HMAC constants 0x02/0x01,
ChaCha20-Poly1305 keyed by HKDF). One command per run: JSON in on stdin, JSON out on stdout,
bytes as hex.
"""

import asyncio
import json
import sys

import xeddsa
import x3dh
import doubleratchet
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet.recommended import (
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)
from doubleratchet.recommended.crypto_provider import HashFunction as DrHash

PQXDH_INFO = b"ferry_PQXDH_CURVE25519_SHA-256_ML-KEM-1024"
ROOT_INFO = b"ferry_ratchet_root_v1"
MESSAGE_INFO = b"ferry_ratchet_message_v1"


def h(b: bytes) -> str:
    return b.hex()


def u(s: str) -> bytes:
    return bytes.fromhex(s)


# --- XEdDSA ---------------------------------------------------------------------------------


def cmd_xeddsa(req):
    out = []
    for item in req["items"]:
        priv, msg = u(item["priv"]), u(item["msg"])
        pub = xeddsa.priv_to_curve25519_pub(priv)
        ed = xeddsa.curve25519_pub_to_ed25519_pub(pub, False)
        out.append({
            "pub": h(pub),
            "rust_sig_ok": xeddsa.ed25519_verify(u(item["sig"]), ed, msg),
            # XEdDSA's calculate_key_pair: the scalar whose Edwards key has sign bit 0.
            "sig": h(xeddsa.ed25519_priv_sign(xeddsa.priv_force_sign(priv, False), msg,
                                              u(item["nonce"]))),
            "x25519": h(xeddsa.x25519(priv, u(item["peer"]))),
        })
    return {"items": out}


# --- X3DH -------------------------------------------------------------------------------------


class Bob(x3dh.BaseState):
    @staticmethod
    def _encode_public_key(key_format, pub):
        return b"\x05" + pub


def cmd_x3dh_bundle(req):
    bob = Bob.create(x3dh.IdentityKeyFormat.CURVE_25519, x3dh.HashFunction.SHA_256, PQXDH_INFO)
    bob.generate_pre_keys(1)
    b = bob.bundle
    return {
        "identity": h(b.identity_key),
        "spk": h(b.signed_pre_key),
        "spk_sig": h(b.signed_pre_key_sig),
        "opk": h(next(iter(b.pre_keys))),
        "state": bob.json,
    }


def cmd_x3dh_passive(req):
    bob, _ = Bob.from_json(req["state"], x3dh.IdentityKeyFormat.CURVE_25519,
                           x3dh.HashFunction.SHA_256, PQXDH_INFO)
    hd = x3dh.Header(identity_key=u(req["identity"]), ephemeral_key=u(req["ephemeral"]),
                     signed_pre_key=u(req["spk"]), pre_key=u(req["opk"]))
    sk, ad, _ = asyncio.run(bob.get_shared_secret_passive(hd))
    return {"sk": h(sk), "ad": h(ad)}


# --- Double Ratchet ---------------------------------------------------------------------------


class RootKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function():
        return DrHash.SHA_256

    @staticmethod
    def _get_info():
        return ROOT_INFO


class ChainKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function():
        return DrHash.SHA_256


class Aead(doubleratchet.AEAD):
    @staticmethod
    def _parts(key):
        okm = HKDF(hashes.SHA256(), 44, b"\x00" * 32, MESSAGE_INFO).derive(key)
        return ChaCha20Poly1305(okm[:32]), okm[32:]

    @staticmethod
    async def encrypt(plaintext, key, associated_data):
        c, n = Aead._parts(key)
        return c.encrypt(n, plaintext, associated_data)

    @staticmethod
    async def decrypt(ciphertext, key, associated_data):
        c, n = Aead._parts(key)
        try:
            return c.decrypt(n, ciphertext, associated_data)
        except InvalidTag as e:
            raise doubleratchet.AuthenticationFailedException() from e


class Ratchet(doubleratchet.DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data, header):
        # ferry's header: version ‖ DH ‖ PN ‖ N (big-endian).
        return (associated_data + b"\x01" + header.ratchet_pub
                + header.previous_sending_chain_length.to_bytes(4, "big")
                + header.sending_chain_length.to_bytes(4, "big"))


CONFIG = dict(
    diffie_hellman_ratchet_class=diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
    root_chain_kdf=RootKdf,
    message_chain_kdf=ChainKdf,
    message_chain_constant=b"\x02\x01",
    dos_protection_threshold=1000,
    max_num_skipped_message_keys=2000,
    aead=Aead,
)


def parse(m):
    hd = u(m["header"])
    assert hd[0] == 1 and len(hd) == 41
    header = doubleratchet.Header(ratchet_pub=hd[1:33],
                                  previous_sending_chain_length=int.from_bytes(hd[33:37], "big"),
                                  sending_chain_length=int.from_bytes(hd[37:41], "big"))
    return doubleratchet.EncryptedMessage(header=header, ciphertext=u(m["ct"]))


def unparse(em):
    hd = em.header
    return {"header": h(b"\x01" + hd.ratchet_pub
                        + hd.previous_sending_chain_length.to_bytes(4, "big")
                        + hd.sending_chain_length.to_bytes(4, "big")),
            "ct": h(em.ciphertext)}


async def dr(req):
    ad = u(req["ad"])
    msgs = [parse(m) for m in req["messages"]]
    plaintexts = []
    if "state" in req:
        r = Ratchet.from_json(req["state"], **CONFIG)
    else:
        r, pt = await Ratchet.decrypt_initial_message(
            shared_secret=u(req["sk"]), own_ratchet_priv=u(req["ratchet_priv"]),
            message=msgs[0], associated_data=ad, **CONFIG)
        plaintexts.append(h(pt))
        msgs = msgs[1:]
    for m in msgs:
        plaintexts.append(h(await r.decrypt_message(m, ad)))
    replies = [unparse(await r.encrypt_message(u(p), ad)) for p in req.get("replies", [])]
    return {"plaintexts": plaintexts, "replies": replies, "state": r.json}


def main():
    req = json.load(sys.stdin)
    cmd = req["cmd"]
    if cmd == "dr":
        out = asyncio.run(dr(req))
    else:
        out = {"xeddsa": cmd_xeddsa, "x3dh_bundle": cmd_x3dh_bundle,
               "x3dh_passive": cmd_x3dh_passive}[cmd](req)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
