// A round trip through ferry-wasm under Node: built with
//   cargo build -p ferry-wasm --target wasm32-unknown-unknown --release
//   wasm-bindgen --target nodejs --out-dir <pkg> ferry_wasm.wasm
// then `node roundtrip.js <pkg>`. Exits non-zero on the first failed check.
"use strict";
const assert = require("node:assert/strict");
const path = require("node:path");
const pkg = require(path.resolve(process.argv[2], "ferry_wasm.js"));
const { Identity, Session } = pkg;
const enc = new TextEncoder();
const dec = new TextDecoder();

const alice = new Identity();
const bob = new Identity();
assert.equal(bob.public().length, 33);
const bobKeys = bob.makePrekeys(3);
assert.deepEqual(Array.from(bobKeys.left()), [3, 3]);

// First contact: Alice checks Bob's bundle and seals; Bob accepts with his prekeys.
const s = Session.initiate(alice, bobKeys.bundle());
const first = s.seal(alice, enc.encode("hello bob"));
assert.ok([256, 1024, 4096, 16384, 61440].includes(first.length), "a bucket size");
const second = s.seal(alice, enc.encode("second"));
// Bob's page reloads: his prekeys come back from storage.
const bobKeysAgain = pkg.Prekeys.fromBytes(bobKeys.toBytes());
const accepted = Session.accept(bob, bobKeysAgain, first);
assert.equal(dec.decode(accepted.plaintext()), "hello bob");
assert.deepEqual(Array.from(accepted.sender()), Array.from(alice.public()));
assert.deepEqual(Array.from(bobKeysAgain.left()), [2, 2], "one-time keys used up");
let b = accepted.session();
assert.equal(dec.decode(b.open(bob, second)), "second");

// A forged envelope throws and changes nothing; a replay throws.
const forged = Uint8Array.from(second);
forged[100] ^= 1;
const before = b.toBytes();
assert.throws(() => b.open(bob, forged));
assert.throws(() => b.open(bob, second));
assert.deepEqual(Array.from(b.toBytes()), Array.from(before));

// Bob answers; Alice's session survives a save and restore.
const reply = b.seal(bob, enc.encode("hi alice"));
const restored = Session.fromBytes(s.toBytes());
assert.equal(dec.decode(restored.open(alice, reply)), "hi alice");
for (let i = 0; i < 5; i++) {
  const m = restored.seal(alice, enc.encode("n" + i));
  assert.equal(dec.decode(b.open(bob, m)), "n" + i);
}
// A bundle with a bad signature is refused.
const bad = Uint8Array.from(bobKeys.bundle());
bad[40] ^= 1;
assert.throws(() => Session.initiate(alice, bad));
// Secrets can be stored and reloaded.
const again = Identity.fromSecret(alice.secret());
assert.deepEqual(Array.from(again.public()), Array.from(alice.public()));
console.log("ferry-wasm round trip: ok");
