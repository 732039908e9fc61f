"""Smoke test of the uniffi Python bindings against a running node.

usage: python3 smoke.py <dir with ferry_ffi.py and libferry_ffi.so> <plain node URL>
                        <TLS node URL> <CA file> <tmpdir>
Two users: Alice connects by the plain URL (asked for explicitly, ferry://), Bob by the TLS
one without its scheme (TLS is the default) trusting the CA file. Bob publishes prekeys; Alice
adds him and writes (first contact); Bob syncs and reads it; Bob answers; Alice reads; a
stranger's first contact is a request Bob accepts, then answers; a file through media storage,
kept until fetched. Wrong URLs, a missing CA and a plain node reached
without ferry:// (taken as TLS) are refused. Exits non-zero on failure.
"""
import os
import sys

sys.path.insert(0, sys.argv[1])
import ferry_ffi as f  # noqa: E402

plain_url, tls_url, ca_file, tmp = sys.argv[2:6]
ns = bytes(range(32))
alice = f.Messenger.open(os.path.join(tmp, "alice"), ns)
bob = f.Messenger.open(os.path.join(tmp, "bob"), ns)
ca = f.Connection.connect(plain_url)
assert tls_url.startswith("ferry+tls://"), tls_url
cb = f.Connection.connect(tls_url[len("ferry+tls://"):], ca_file)
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

# A stranger's first contact lands as a request; accepted, she can be answered.
carol = f.Messenger.open(os.path.join(tmp, "carol"), ns)
carol.add_contact("bob", bob.address())
ca.send_text(carol, "bob", "carol here")
got = cb.sync(bob) + cb.pump(bob, 500)
assert [(m.text, m.is_request) for m in got] == [("carol here", True)], got
assert bob.requests() == [got[0].from_identity]
assert "carol" not in bob.contacts() and got[0].from_name not in bob.contacts()
bob.accept_request(got[0].from_identity, "carol")
assert bob.requests() == [] and sorted(bob.contacts()) == ["alice", "carol"]
cb.send_text(bob, "carol", "welcome")
got = ca.sync(carol) + ca.pump(carol, 500)
assert [m.text for m in got] == ["welcome"], got

data = os.urandom(100_000)
ca.send_file(alice, "bob", "blob.bin", data)
got = cb.pump(bob, 2000)
files = [m for m in got if m.file_name]
assert len(files) == 1 and files[0].file_name == "blob.bin", got
assert cb.fetch_file(files[0].file_ref) == data
# Kept (also for a Bob restarted now) until fetched by id.
kept = bob.attachments()
assert [(k.id, k.file_name) for k in kept] == [(files[0].id, "blob.bin")], kept
assert cb.fetch_attachment(bob, files[0].id) == data
assert bob.attachments() == []

for bad in ["ferry+tls://", "http://localhost:7700", "ferry://relay.example/x"]:
    try:
        f.Connection.connect(bad)
        raise SystemExit(f"the URL {bad} was accepted")
    except f.FerryError.InvalidArgument as e:
        assert "URL" in str(e), e
try:
    f.Connection.connect(tls_url)
    raise SystemExit("a TLS node was trusted without its CA")
except f.FerryError.Tls as e:
    assert "certificate" in str(e), e
try:
    # Without a scheme a URL means TLS: the plain listener cannot answer it.
    f.Connection.connect(plain_url[len("ferry://"):], ca_file)
    raise SystemExit("a plain node was reached without asking for ferry://")
except f.FerryError:
    pass
try:
    alice.add_contact("x", "ferry:00")
    raise SystemExit("a malformed address was accepted")
except f.FerryError.InvalidArgument:
    pass
print("ferry-ffi python smoke test: ok")
