"""Smoke test of the uniffi Python bindings against a running node.

usage: python3 smoke.py <dir with ferry_ffi.py and libferry_ffi.so> <node host:port> <tmpdir>
Two users: Bob publishes prekeys; Alice adds him and writes (first contact); Bob syncs and
reads it; Bob answers; Alice reads; a file through media storage. Exits non-zero on failure.
"""
import os
import sys

sys.path.insert(0, sys.argv[1])
import ferry_ffi as f  # noqa: E402

node, tmp = sys.argv[2], sys.argv[3]
ns = bytes(range(32))
alice = f.Messenger.open(os.path.join(tmp, "alice"), ns)
bob = f.Messenger.open(os.path.join(tmp, "bob"), ns)
ca = f.Connection.connect(node)
cb = f.Connection.connect(node)
cb.publish_prekeys(bob, 5)
alice.add_contact("bob", bob.address())
bob.add_contact("alice", alice.address())
assert alice.contacts() == ["bob"], alice.contacts()

ca.send_text(alice, "bob", "hello from python")
got = cb.sync(bob) + cb.pump(bob, 500)
assert [m.text for m in got] == ["hello from python"], got
assert got[0].from_name == "alice"

cb.send_text(bob, "alice", "hi python")
got = ca.sync(alice) + ca.pump(alice, 500)
assert [m.text for m in got] == ["hi python"], got

data = os.urandom(100_000)
ca.send_file(alice, "bob", "blob.bin", data)
got = cb.pump(bob, 2000)
files = [m for m in got if m.file_name]
assert len(files) == 1 and files[0].file_name == "blob.bin", got
assert cb.fetch_file(files[0].file_ref) == data

try:
    alice.add_contact("x", "ferry:00")
    raise SystemExit("a malformed address was accepted")
except f.FerryError:
    pass
print("ferry-ffi python smoke test: ok")
