//! The session layer without a network: two messengers and a model of the node (dests, a
//! store that keeps one copy per message id, a prekey slot). First contact through prekeys while
//! the recipient is offline, replies on the contact mailbox, duplicates shown once, retries,
//! restarts from storage mid-conversation, the listen and drain plans, forged packets dropped.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ferry_proto::addr::{DAY_SECONDS, NamespaceId, day_of, epoch_of};
use ferry_proto::frame::{Dest, SendStatus};
use ferry_proto::prekey::{Bundle, SealedBundle, SlotOpener, Upload};
use ferry_sdk::messenger::{
    Address, Body, DirStorage, MemoryStorage, Messenger, MessengerError, SLOT_DAYS_AHEAD,
    SPK_ROTATE_DAYS, STORE_WINDOW_EPOCHS, Storage, Transmit,
};

const NS: NamespaceId = NamespaceId([0x42; 32]);
/// 2026-11-27 10:20 UTC.
const T0: u64 = 1_795_774_800;

/// What the node keeps: stored packets per dest (one per message id), prekey slots.
#[derive(Default)]
struct Node {
    /// In arrival order, one per message id.
    store: BTreeMap<Dest, Vec<(u64, Vec<u8>)>>,
    slots: BTreeMap<Dest, Vec<Upload>>,
}

impl Node {
    fn send(&mut self, t: &Transmit) {
        let q = self.store.entry(t.dest).or_default();
        if !q.iter().any(|(id, _)| *id == t.msg_id) {
            q.push((t.msg_id, t.payload.clone()));
        }
    }
    /// What `Client::query` answers.
    fn query(&self, dests: &[Dest]) -> Vec<Dest> {
        dests
            .iter()
            .filter(|d| self.store.get(d).is_some_and(|m| !m.is_empty()))
            .copied()
            .collect()
    }
    /// Drain and ack in one go.
    fn drain(&mut self, d: &Dest) -> Vec<Vec<u8>> {
        self.store
            .remove(d)
            .map(|q| q.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default()
    }
    /// A sealed bundle as the directory hands it out: one EC and one PQ one-time key
    /// consumed.
    fn fetch_sealed(&mut self, slot: &Dest) -> SealedBundle {
        let uploads = self.slots.get_mut(slot).unwrap();
        let head = uploads[0].head.clone().unwrap();
        let ec = uploads.iter_mut().find_map(|u| u.ec.pop());
        let pq = uploads.iter_mut().find_map(|u| u.pq.pop());
        SealedBundle { head, pq, ec }
    }
    /// A bundle fetched and opened as `Client::fetch_prekeys` does.
    fn fetch(&mut self, slot: &SlotOpener) -> Bundle {
        let sealed = self.fetch_sealed(&slot.dest());
        slot.open(&sealed).unwrap()
    }
}

/// Today's slot day at `T0`.
fn day0() -> u64 {
    day_of(T0)
}

/// A user's full reconnect: drain the window and return what opened.
fn sync<S: Storage>(node: &mut Node, m: &mut Messenger<S>, now: u64) -> Vec<Body> {
    // As `chat::sync`: prove every candidate first (the node answers a Query only for proven
    // dests), then ask, then drain those holding blobs.
    let candidates = m.drain_candidates(now).unwrap();
    let signers = m.drain_signers(&candidates).unwrap();
    assert_eq!(signers.len(), candidates.len());
    let holding = node.query(&candidates);
    let mut out = Vec::new();
    for s in signers.into_iter().filter(|s| holding.contains(&s.dest())) {
        for p in node.drain(&s.dest()) {
            if let Some(msg) = m.receive(&s.dest(), &p).unwrap() {
                m.done(&msg.msg_id).unwrap();
                out.push(msg.body);
            }
        }
    }
    out
}

/// Publishes `m`'s slots at `now` with `one_time` keys each, as `Sender::publish_prekeys` does.
/// Returns the days published.
fn publish_at<S: Storage>(
    node: &mut Node,
    m: &mut Messenger<S>,
    now: u64,
    one_time: usize,
) -> Vec<u64> {
    let mut days = Vec::new();
    for slot in m.prekey_publication(now, one_time).unwrap() {
        for u in &slot.uploads {
            ferry_proto::prekey::check_upload(u).unwrap();
            assert_eq!(u.dest, slot.signer.dest());
        }
        node.slots.insert(slot.signer.dest(), slot.uploads);
        m.slot_published(slot.day).unwrap();
        days.push(slot.day);
    }
    days
}

fn publish<S: Storage>(node: &mut Node, m: &mut Messenger<S>) {
    publish_at(node, m, T0, 5);
}

type Mem = Messenger<MemoryStorage>;

/// Receives a packet as `chat` does: at its dest, which the recipient's drain plan of the
/// packet's hour knows.
fn recv<S: Storage>(
    m: &mut Messenger<S>,
    t: &Transmit,
) -> Result<Option<ferry_sdk::messenger::Incoming>, MessengerError> {
    m.drain_candidates(t.epoch * 3_600).unwrap();
    m.receive(&t.dest, &t.payload)
}

/// Alice and Bob, Bob's prekeys published, each in the other's contacts (addresses exchanged
/// out of band); with `session`, Alice has fetched Bob's bundle and started a session. Returns
/// Bob's identity too.
fn introduced(node: &mut Node, session: bool) -> (Mem, Mem, [u8; 33]) {
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    publish(node, &mut bob);
    alice.add_contact("bob", &bob.address()).unwrap();
    bob.add_contact("alice", &alice.address()).unwrap();
    let b_id = bob.address().identity;
    if session {
        let bundle = node.fetch(&alice.contact_prekey_slot(&b_id, day0()).unwrap());
        alice.start_session(&b_id, &bundle).unwrap();
    }
    (alice, bob, b_id)
}

fn text(s: &str) -> Body {
    Body::Data(s.as_bytes().to_vec())
}

#[test]
fn first_contact_offline_lands_as_a_request_then_a_conversation_on_pairwise_mailboxes() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    publish(&mut node, &mut bob);

    // Alice has Bob's address (out of band), fetches his bundle and writes while he is offline.
    let bob_addr: Address = bob.address().to_string().parse().unwrap();
    assert_eq!(bob_addr, bob.address());
    alice.add_contact("bob", &bob_addr).unwrap();
    let bob_id = bob_addr.identity;
    assert!(matches!(
        alice.send(&bob_id, &text("x"), T0, 0),
        Err(MessengerError::NoSession)
    ));
    let slot = alice.contact_prekey_slot(&bob_id, day0()).unwrap();
    let bundle = node.fetch(&slot);
    alice.start_session(&bob_id, &bundle).unwrap();
    let t1 = alice.send(&bob_id, &text("hello bob"), T0, 0).unwrap();
    let t2 = alice.send(&bob_id, &text("second"), T0, 0).unwrap();
    // Both to Bob's intro mailbox of this hour: Alice does not know his contact secret yet.
    assert_eq!(t1.dest, t2.dest);
    node.send(&t1);
    node.send(&t2);
    node.send(&t1); // a retry: the node keeps one copy
    assert_eq!(alice.unacknowledged(), 2);
    alice.on_send_result(t1.msg_id, SendStatus::Stored, 10);
    alice.on_send_result(t2.msg_id, SendStatus::Stored, 10);
    assert_eq!(alice.unacknowledged(), 0);

    // An hour later Bob comes online and drains: a stranger's first contact is a request.
    let got = sync(&mut node, &mut bob, T0 + 3600);
    assert_eq!(got, vec![text("hello bob"), text("second")]);
    let alice_id = alice.address().identity;
    assert_eq!(bob.contacts().count(), 0);
    let peer = bob
        .requests()
        .find(|p| p.identity == alice_id)
        .unwrap()
        .clone();
    assert_eq!(peer.mailbox, alice.address().mailbox);
    assert!(peer.s_mbox.is_some());
    // Nothing goes back until Bob accepts; then he answers on the mailbox Alice keeps for him.
    assert!(matches!(
        bob.send(&alice_id, &text("hi alice"), T0 + 3600, 0),
        Err(MessengerError::NotAccepted)
    ));
    bob.accept_request(&alice_id, "alice").unwrap();
    assert_eq!(bob.requests().count(), 0);
    let r = bob
        .send(&alice_id, &text("hi alice"), T0 + 3600, 0)
        .unwrap();
    assert_ne!(
        r.dest,
        ferry_sdk::Contact::new(&peer.mailbox, NS, None)
            .unwrap()
            .dest(epoch_of(T0 + 3600))
            .unwrap(),
        "replies go to the pairwise mailbox, not the intro one"
    );
    node.send(&r);
    assert_eq!(
        sync(&mut node, &mut alice, T0 + 3700),
        vec![text("hi alice")]
    );
    // Now Alice writes to the mailbox Bob keeps for her too.
    let t3 = alice
        .send(&bob_id, &text("on contact"), T0 + 3700, 0)
        .unwrap();
    assert_ne!(t3.dest, t1.dest);
    node.send(&t3);
    assert_eq!(
        sync(&mut node, &mut bob, T0 + 3800),
        vec![text("on contact")]
    );
    // The same packet again (a node that delivers twice) is shown once.
    assert_eq!(recv(&mut bob, &t3).unwrap(), None);
}

#[test]
fn restarts_from_storage_mid_conversation_and_resends_what_was_not_acknowledged() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(DirStorage::open(tempdir("bob")).unwrap(), NS).unwrap();
    publish(&mut node, &mut bob);
    alice.add_contact("bob", &bob.address()).unwrap();
    bob.add_contact("alice", &alice.address()).unwrap();
    let bob_id = bob.address().identity;
    let bundle = node.fetch(&alice.contact_prekey_slot(&bob_id, day0()).unwrap());
    alice.start_session(&bob_id, &bundle).unwrap();
    node.send(&alice.send(&bob_id, &text("one"), T0, 0).unwrap());
    assert_eq!(sync(&mut node, &mut bob, T0), vec![text("one")]);

    // Both restart from their storage.
    let alice_store = alice.into_storage();
    let mut alice = Messenger::open(alice_store, NS).unwrap();
    let bob_dir = bob.into_storage();
    let mut bob = Messenger::open(bob_dir, NS).unwrap();
    let alice_id = alice.address().identity;
    assert_eq!(bob.contacts().count(), 1);

    // Bob answers; the node never acknowledges, so Bob resends after the backoff, with the same
    // id and bytes, also after another restart.
    let r = bob.send(&alice_id, &text("two"), T0, 1_000).unwrap();
    assert!(
        bob.due(T0, 1_500, false).is_empty(),
        "not before the backoff"
    );
    let again = bob.due(T0, 2_000, false);
    assert_eq!(again, vec![r.clone()]);
    let mut bob = Messenger::open(bob.into_storage(), NS).unwrap();
    let after_restart = bob.due(T0, 0, true);
    assert_eq!(after_restart.len(), 1);
    assert_eq!(after_restart[0].msg_id, r.msg_id);
    assert_eq!(after_restart[0].payload, r.payload);
    node.send(&after_restart[0]);
    node.send(&r);
    assert_eq!(sync(&mut node, &mut alice, T0 + 60), vec![text("two")]);
    // What a contact's node answers a sender that has not proven the dest.
    bob.on_send_result(r.msg_id, SendStatus::Accepted, 3_000);
    assert_eq!(bob.unacknowledged(), 0);
    let bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert_eq!(bob.unacknowledged(), 0, "the acknowledgement was persisted");
}

#[test]
fn the_listen_plan_proves_the_next_hour_before_it_starts_and_the_drain_window_is_72_hours() {
    let mut m = Messenger::open(MemoryStorage::default(), NS).unwrap();
    // Two contacts: a pairwise mailbox each.
    for (name, seed) in [("carol", 1u8), ("dave", 2)] {
        let c = Messenger::open(MemoryStorage::default(), NamespaceId([seed; 32])).unwrap();
        m.add_contact(name, &c.address()).unwrap();
    }
    let e = epoch_of(T0);
    let start = e * 3600;
    // Early in the hour: this hour's intro dest and each contact's dest of the day.
    assert_eq!(m.listen_plan(start + 10).unwrap().len(), 3);
    assert_eq!(m.next_listen_s(start + 10), start + 3600 - 300);
    // Within five minutes of the end: the next hour's intro dest too (the same day).
    let plan = m.listen_plan(start + 3600 - 299).unwrap();
    assert_eq!(plan.len(), 4);
    let next = m.listen_plan(start + 3600).unwrap();
    assert!(next.iter().any(|s| s.dest() == plan[1].dest()));
    assert_eq!(m.next_listen_s(start + 3600 - 100), start + 3600);
    // Near midnight, the next day's pairwise dests as well.
    let midnight = (day0() + 1) * DAY_SECONDS;
    assert_eq!(m.listen_plan(midnight - 200).unwrap().len(), 2 + 2 * 2);

    let c = m.drain_candidates(T0).unwrap();
    // The intro mailbox's 75 hours, and the four days they span for each contact.
    let days = (e + 1) / 24 - (e - STORE_WINDOW_EPOCHS - 1) / 24 + 1;
    assert_eq!(days, 4);
    assert_eq!(c.len() as u64, STORE_WINDOW_EPOCHS + 3 + 2 * days);
    // Signers are made only for dests that were candidates, and prove exactly them.
    let pick = [c[0], c[77], c[c.len() - 1], Dest([9; 16])];
    let s = m.drain_signers(&pick).unwrap();
    assert_eq!(s.len(), 3);
    for (signer, d) in s.iter().zip(pick) {
        assert_eq!(signer.dest(), d);
    }
    // A token registered for 24 hours covers this hour and the next 24 (its expiry falls in
    // the last): the two days of each contact's pairwise mailbox, and 25 hours of the intro
    // mailbox for first contacts.
    let contact_only = m.push_plan(T0, 24, false).unwrap();
    assert_eq!(contact_only.len(), 2 * 2);
    let both = m.push_plan(T0, 24, true).unwrap();
    assert_eq!(both.len(), 25 + 2 * 2);
    let intro_slot = m.prekey_slot(day0()).unwrap().dest();
    let intro_now = ferry_sdk::Contact::new(&m.address().mailbox, NS, None)
        .unwrap()
        .dest(epoch_of(T0))
        .unwrap();
    assert!(both.iter().any(|s| s.dest() == intro_now));
    assert!(
        contact_only
            .iter()
            .all(|s| s.dest() != intro_now && s.dest() != intro_slot),
        "no intro dest without first contacts"
    );
    assert!(m.push_plan(T0, 0, false).is_err() && m.push_plan(T0, 49, true).is_err());

    // On one connection: subscribe this hour's dests, then near the turn the next hour's, then
    // drop the past hour's.
    m.new_connection();
    let (add, drop) = m.listen_update(start + 10).unwrap();
    assert_eq!((add.len(), drop.len()), (3, 0));
    let (add, drop) = m.listen_update(start + 3600 - 100).unwrap();
    assert_eq!((add.len(), drop.len()), (1, 0));
    let (add, drop) = m.listen_update(start + 3600 + 10).unwrap();
    assert_eq!((add.len(), drop.len()), (0, 1));
    m.new_connection();
    assert_eq!(m.listen_update(start + 3600 + 10).unwrap().0.len(), 3);
}

/// Issue 21.6: each contact writes to a mailbox of its own (a contact's dests are no other
/// contact's), a packet on one contact's pairwise mailbox from anyone else is dropped, a
/// stranger's first contact lands as a request the app accepts or refuses, and a refused
/// identity's packets are dropped, also after a restart.
#[test]
fn each_contact_has_a_mailbox_of_its_own_and_strangers_land_as_requests() {
    let mut node = Node::default();
    let (mut alice, mut bob, b_id) = introduced(&mut node, true);
    let mut carol = Messenger::open(MemoryStorage::default(), NS).unwrap();
    carol.add_contact("bob", &bob.address()).unwrap();
    bob.add_contact("carol", &carol.address()).unwrap();
    carol
        .start_session(
            &b_id,
            &node.fetch(&carol.contact_prekey_slot(&b_id, day0()).unwrap()),
        )
        .unwrap();
    let (a_id, c_id) = (alice.address().identity, carol.address().identity);
    // First contacts (intro), Bob's answers (each to the mailbox its contact keeps for him).
    for (m, id) in [(&mut alice, a_id), (&mut carol, c_id)] {
        let t = m.send(&b_id, &text("hi"), T0, 0).unwrap();
        let got = recv(&mut bob, &t).unwrap().unwrap();
        assert!(!got.request, "a contact added by address is no request");
        let r = bob.send(&id, &text("hello"), T0, 0).unwrap();
        assert!(recv(m, &r).unwrap().is_some());
    }
    // Now each writes to the pairwise mailbox Bob keeps for it: two different dests, neither
    // the intro dest; each contact's dests are unknown to the other.
    let ta = alice.send(&b_id, &text("from alice"), T0, 0).unwrap();
    let tc = carol.send(&b_id, &text("from carol"), T0, 0).unwrap();
    let intro = ferry_sdk::Contact::new(&bob.address().mailbox, NS, None)
        .unwrap()
        .dest(epoch_of(T0))
        .unwrap();
    assert!(ta.dest != tc.dest && ta.dest != intro && tc.dest != intro);
    assert!(
        alice
            .drain_candidates(T0)
            .unwrap()
            .iter()
            .all(|d| *d != tc.dest)
    );
    // Carol's packet at the dest Bob keeps for Alice (a node that moves it): dropped.
    let moved = Transmit {
        dest: ta.dest,
        ..tc.clone()
    };
    assert!(matches!(
        recv(&mut bob, &moved),
        Err(MessengerError::Refused(_))
    ));
    assert_eq!(
        recv(&mut bob, &ta).unwrap().unwrap().body,
        text("from alice")
    );
    assert_eq!(
        recv(&mut bob, &tc).unwrap().unwrap().body,
        text("from carol")
    );

    // Mallory, a stranger with Bob's address: a request, shown as one, not answered, and it
    // adds nothing to what Bob listens on or drains.
    let before = bob.drain_candidates(T0).unwrap().len();
    let mut mallory = Messenger::open(MemoryStorage::default(), NS).unwrap();
    mallory.add_contact("bob", &bob.address()).unwrap();
    mallory
        .start_session(
            &b_id,
            &node.fetch(&mallory.contact_prekey_slot(&b_id, day0()).unwrap()),
        )
        .unwrap();
    let m_id = mallory.address().identity;
    let tm = mallory.send(&b_id, &text("buy now"), T0, 0).unwrap();
    // At a pairwise dest (which Mallory cannot compute, but a node can move it there): dropped.
    assert!(matches!(
        recv(
            &mut bob,
            &Transmit {
                dest: ta.dest,
                ..tm.clone()
            }
        ),
        Err(MessengerError::Refused(_))
    ));
    let got = recv(&mut bob, &tm).unwrap().unwrap();
    assert!(got.request);
    assert_eq!(
        bob.requests().map(|p| p.identity).collect::<Vec<_>>(),
        vec![m_id]
    );
    assert!(
        bob.inbox()
            .unwrap()
            .iter()
            .any(|m| m.request && m.from == m_id)
    );
    assert!(matches!(
        bob.send(&m_id, &text("who?"), T0, 0),
        Err(MessengerError::NotAccepted)
    ));
    assert_eq!(bob.drain_candidates(T0).unwrap().len(), before);
    assert_eq!(bob.listen_plan(T0).unwrap().len(), 1 + 2);
    // Refused: forgotten, and its later packets dropped, also after a restart.
    bob.refuse_request(&m_id).unwrap();
    assert_eq!(bob.requests().count(), 0);
    assert_eq!(bob.drain_candidates(T0).unwrap().len(), before);
    let mut bob = Messenger::open(bob.into_storage(), NS).unwrap();
    // A restarted messenger knows no dest until a plan names it: packets are refused, not
    // misfiled; after the listen plan they open.
    let again_a = alice.send(&b_id, &text("after restart"), T0, 0).unwrap();
    assert!(matches!(
        bob.receive(&again_a.dest, &again_a.payload),
        Err(MessengerError::Refused(_))
    ));
    bob.new_connection();
    bob.listen_update(T0).unwrap();
    assert!(
        bob.receive(&again_a.dest, &again_a.payload)
            .unwrap()
            .is_some()
    );
    let again = mallory.send(&b_id, &text("buy now!"), T0, 0).unwrap();
    assert!(matches!(
        recv(&mut bob, &again),
        Err(MessengerError::Refused(_))
    ));
    assert_eq!(bob.requests().count(), 0);
    // A request accepted by adding its address later is a contact like any other.
    let mut erin = Messenger::open(MemoryStorage::default(), NS).unwrap();
    erin.add_contact("bob", &bob.address()).unwrap();
    erin.start_session(
        &b_id,
        &node.fetch(&erin.contact_prekey_slot(&b_id, day0()).unwrap()),
    )
    .unwrap();
    let te = erin.send(&b_id, &text("it's erin"), T0, 0).unwrap();
    assert!(recv(&mut bob, &te).unwrap().unwrap().request);
    let mut bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert_eq!(
        bob.requests().count(),
        1,
        "requests are kept across restarts"
    );
    bob.add_contact("erin", &erin.address()).unwrap();
    assert_eq!(bob.requests().count(), 0);
    let erin_id = erin.address().identity;
    assert!(
        !bob.inbox()
            .unwrap()
            .iter()
            .any(|m| m.from == erin_id && m.request)
    );
    assert!(
        bob.inbox()
            .unwrap()
            .iter()
            .any(|m| m.from == m_id && m.request),
        "a refused request's messages stay marked"
    );
    assert!(
        bob.send(&erin.address().identity, &text("hi erin"), T0, 0)
            .is_ok()
    );
}

/// Each contact's pairwise mailbox costs proofs at every sync: past `CONTACTS_MAX` a new
/// contact (or an accepted request) is refused with a clear error; renaming one is not.
/// A messenger from before pairwise mailboxes: its contacts' stored secrets were their shared
/// contact mailboxes', so they are forgotten (sends go to intro mailboxes until a message
/// brings the pairwise secret), and its own old shared mailbox is still drained and listened on
/// for the store's window from the first drain after the update, then no more.
#[test]
fn a_messenger_from_before_pairwise_mailboxes_keeps_its_conversations() {
    let mut node = Node::default();
    let (alice, bob, b_id) = introduced(&mut node, true);
    let mut alice = alice;
    // Alice knew a secret of Bob's (as an old messenger would have stored his shared one).
    let t = alice.send(&b_id, &text("x"), T0, 0).unwrap();
    let mut bob = bob;
    recv(&mut bob, &t).unwrap();
    let r = bob
        .send(&alice.address().identity, &text("y"), T0, 0)
        .unwrap();
    recv(&mut alice, &r).unwrap();
    assert!(alice.contact("bob").unwrap().s_mbox.is_some());
    // The store as an old version left it: no "pairwise" record.
    let mut store = alice.into_storage();
    store.delete("pairwise").unwrap();
    let mut alice = Messenger::open(store, NS).unwrap();
    assert!(
        alice.contact("bob").unwrap().s_mbox.is_none(),
        "the old secret is forgotten"
    );
    let intro_b = ferry_sdk::Contact::new(&bob.address().mailbox, NS, None)
        .unwrap()
        .dest(epoch_of(T0))
        .unwrap();
    assert_eq!(alice.send(&b_id, &text("z"), T0, 0).unwrap().dest, intro_b);
    let fresh = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let n_fresh = {
        let mut f = fresh;
        f.add_contact("bob", &bob.address()).unwrap();
        f.drain_candidates(T0).unwrap().len()
    };
    // The old shared mailbox's 75 hours are drained too, from the first drain on, for the
    // store's window.
    assert_eq!(alice.drain_candidates(T0).unwrap().len(), n_fresh + 75);
    assert_eq!(alice.listen_plan(T0 + 60).unwrap().len(), 1 + 1 + 1);
    let alice = Messenger::open(alice.into_storage(), NS).unwrap();
    let mut alice = alice;
    let later = T0 + (STORE_WINDOW_EPOCHS + 2) * 3600;
    assert_eq!(alice.drain_candidates(later).unwrap().len(), n_fresh);
    assert_eq!(alice.listen_plan(later).unwrap().len(), 2);
}

#[test]
fn contacts_past_the_limit_are_refused() {
    let mut m = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let others: Vec<Address> = (0..=ferry_sdk::messenger::CONTACTS_MAX)
        .map(|_| {
            Messenger::open(MemoryStorage::default(), NS)
                .unwrap()
                .address()
        })
        .collect();
    for (i, a) in others
        .iter()
        .take(ferry_sdk::messenger::CONTACTS_MAX)
        .enumerate()
    {
        m.add_contact(&format!("c{i}"), a).unwrap();
    }
    assert!(matches!(
        m.add_contact("one more", others.last().unwrap()),
        Err(MessengerError::InvalidArgument(_))
    ));
    m.add_contact("renamed", &others[0]).unwrap();
    let c = m.drain_candidates(T0).unwrap().len();
    assert!(
        77 + 7 * ferry_sdk::messenger::CONTACTS_MAX >= c + ferry_sdk::messenger::CONTACTS_MAX + 2
    );
}

#[test]
fn forged_or_foreign_packets_are_dropped_and_change_nothing() {
    let mut node = Node::default();
    let (mut alice, mut bob, bob_id) = introduced(&mut node, true);
    let mut carol = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let t = alice.send(&bob_id, &text("secret"), T0, 0).unwrap();
    // Carol cannot open it, and it changes nothing for her.
    let before = carol.storage().0.clone();
    assert!(recv(&mut carol, &t).is_err());
    assert_eq!(carol.storage().0, before);
    // A flipped byte: dropped, nothing stored.
    let before = bob.storage().0.clone();
    let mut bad = t.clone();
    bad.payload[100] ^= 4;
    assert!(recv(&mut bob, &bad).is_err());
    assert_eq!(bob.storage().0, before);
    assert_eq!(recv(&mut bob, &t).unwrap().unwrap().body, text("secret"));
    assert!(bob.has_session(&alice.address().identity));
}

#[test]
fn a_bundle_of_another_identity_is_refused() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut mallory = Messenger::open(MemoryStorage::default(), NS).unwrap();
    publish(&mut node, &mut bob);
    publish(&mut node, &mut mallory);
    alice.add_contact("bob", &bob.address()).unwrap();
    // The node answers Bob's slot with Mallory's bundle: it does not open under Bob's slot.
    let bob_slot = alice
        .contact_prekey_slot(&bob.address().identity, day0())
        .unwrap();
    let mallory_slot = mallory.prekey_slot(day0()).unwrap().dest();
    assert!(bob_slot.open(&node.fetch_sealed(&mallory_slot)).is_err());
    // Mallory's bundle, opened as Mallory's, is still not Bob's.
    alice.add_contact("mallory", &mallory.address()).unwrap();
    let wrong = node.fetch(
        &alice
            .contact_prekey_slot(&mallory.address().identity, day0())
            .unwrap(),
    );
    assert!(matches!(
        alice.start_session(&bob.address().identity, &wrong),
        Err(MessengerError::IdentityMismatch)
    ));
    assert!("ferry:00".parse::<Address>().is_err());
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-messenger-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Both write first at the same moment: each accepts the other's first contact and keeps its
/// own session too; whichever session the other side answers in becomes the one both use.
#[test]
fn simultaneous_first_contacts_converge_on_one_session() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    publish(&mut node, &mut alice);
    publish(&mut node, &mut bob);
    alice.add_contact("bob", &bob.address()).unwrap();
    bob.add_contact("alice", &alice.address()).unwrap();
    let (a_id, b_id) = (alice.address().identity, bob.address().identity);
    let bundle = node.fetch(&alice.contact_prekey_slot(&b_id, day0()).unwrap());
    alice.start_session(&b_id, &bundle).unwrap();
    let bundle = node.fetch(&bob.contact_prekey_slot(&a_id, day0()).unwrap());
    bob.start_session(&a_id, &bundle).unwrap();
    let ta = alice.send(&b_id, &text("from alice"), T0, 0).unwrap();
    let tb = bob.send(&a_id, &text("from bob"), T0, 0).unwrap();
    assert_eq!(
        recv(&mut bob, &ta).unwrap().unwrap().body,
        text("from alice")
    );
    assert_eq!(
        recv(&mut alice, &tb).unwrap().unwrap().body,
        text("from bob")
    );
    // A conversation goes on, both ways, several turns.
    for i in 0..4 {
        let m = alice.send(&b_id, &text(&format!("a{i}")), T0, 0).unwrap();
        assert_eq!(
            recv(&mut bob, &m).unwrap().unwrap().body,
            text(&format!("a{i}"))
        );
        let r = bob.send(&a_id, &text(&format!("b{i}")), T0, 0).unwrap();
        assert_eq!(
            recv(&mut alice, &r).unwrap().unwrap().body,
            text(&format!("b{i}"))
        );
    }
}

/// A first contact made without a one-time key (the directory ran out) can be replayed by the
/// node; once accepted it is refused as a replay, also after the duplicate filter forgot it.
#[test]
fn a_replayed_first_contact_is_refused() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    publish_at(&mut node, &mut bob, T0, 0);
    alice.add_contact("bob", &bob.address()).unwrap();
    let b_id = bob.address().identity;
    let bundle = node.fetch(&alice.contact_prekey_slot(&b_id, day0()).unwrap());
    assert!(bundle.ec.is_none() && bundle.pq_last_resort);
    alice.start_session(&b_id, &bundle).unwrap();
    let t = alice.send(&b_id, &text("once"), T0, 0).unwrap();
    assert!(recv(&mut bob, &t).unwrap().is_some());
    assert_eq!(recv(&mut bob, &t).unwrap(), None, "a duplicate");
    // Bob's state without the duplicate filter (as after 4096 newer messages): still refused.
    let mut store = bob.into_storage();
    store.0.remove("seen");
    store.0.retain(|k, _| !k.starts_with("inbox/"));
    let bob = Messenger::open(store, NS).unwrap();
    let mut others = bob.storage().0.clone();
    others.retain(|k, _| k.starts_with("session/"));
    // The session is gone too (the worst case: only the accepted-init list remembers).
    let mut store = bob.into_storage();
    store.0.retain(|k, _| !k.starts_with("session/"));
    let mut bob = Messenger::open(store, NS).unwrap();
    assert!(matches!(recv(&mut bob, &t), Err(MessengerError::Replay)));
    assert!(!others.is_empty());
}

/// A received message stays in the inbox until the application says it has it, also across
/// a restart; the same packet again is a duplicate.
#[test]
fn the_inbox_keeps_messages_until_done() {
    let mut node = Node::default();
    let (mut alice, mut bob, b_id) = introduced(&mut node, true);
    let t = alice.send(&b_id, &text("keep me"), T0, 0).unwrap();
    let got = recv(&mut bob, &t).unwrap().unwrap();
    let mut bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert_eq!(bob.inbox().unwrap(), vec![got.clone()]);
    assert_eq!(recv(&mut bob, &t).unwrap(), None);
    bob.done(&got.msg_id).unwrap();
    assert!(bob.inbox().unwrap().is_empty());
}

/// Prekey slots move daily and are published a week ahead; the signed prekey rotates every
/// `SPK_ROTATE_DAYS` days with a signed expiry; a bundle fetched before a rotation still
/// starts a session; and once no live slot nor a stored first contact can need a key, its
/// secret is gone (a session from a bundle that old fails).
#[test]
fn slots_rotate_daily_the_signed_prekey_weekly_and_old_secrets_are_erased() {
    let mut node = Node::default();
    let mut alice = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let days = publish_at(&mut node, &mut bob, T0, 2);
    assert_eq!(
        days,
        (day0()..=day0() + SLOT_DAYS_AHEAD).collect::<Vec<_>>()
    );
    // Publishing again the same day adds nothing; a day later, one slot.
    assert!(publish_at(&mut node, &mut bob, T0 + 3_600, 2).is_empty());
    assert_eq!(
        publish_at(&mut node, &mut bob, T0 + DAY_SECONDS, 2),
        vec![day0() + SLOT_DAYS_AHEAD + 1]
    );
    alice.add_contact("bob", &bob.address()).unwrap();
    let b_id = bob.address().identity;
    // Every day's slot is its own dest, none an hourly dest of Bob's mailboxes.
    let slots: Vec<SlotOpener> = (day0()..=day0() + SLOT_DAYS_AHEAD)
        .map(|d| alice.contact_prekey_slot(&b_id, d).unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<Dest> = slots.iter().map(SlotOpener::dest).collect();
    assert_eq!(distinct.len(), slots.len());
    let hourly = bob.drain_candidates(T0 + 6 * DAY_SECONDS).unwrap();
    assert!(slots.iter().all(|s| !hourly.contains(&s.dest())));
    // The signed prekey is the one of the day's period, its expiry the day's end plus a day.
    let bundles: Vec<Bundle> = slots.iter().map(|s| node.fetch(s)).collect();
    for (i, b) in bundles.iter().enumerate() {
        let d = day0() + i as u64;
        assert_eq!(b.expires, (d + 2) * DAY_SECONDS);
        assert_eq!(b.identity, b_id);
        for (j, other) in bundles.iter().enumerate() {
            let e = day0() + j as u64;
            let same_period = d / SPK_ROTATE_DAYS == e / SPK_ROTATE_DAYS;
            assert_eq!(b.spk.key == other.spk.key, same_period, "days {d} and {e}");
        }
    }
    // Contacts asking today's slot, and yesterday's when today's is missing.
    let order: Vec<Dest> = alice
        .contact_prekey_slots(&b_id, T0)
        .unwrap()
        .iter()
        .map(SlotOpener::dest)
        .collect();
    assert_eq!(
        order,
        vec![
            slots[0].dest(),
            alice.contact_prekey_slot(&b_id, day0() - 1).unwrap().dest()
        ]
    );
    // A bundle of today, used two days later (within its window: the first contact waited
    // in the store), still opens...
    let old = node.fetch(&slots[0]);
    let mut carol = Messenger::open(MemoryStorage::default(), NS).unwrap();
    carol.add_contact("bob", &bob.address()).unwrap();
    for k in 1..=2 {
        publish_at(&mut node, &mut bob, T0 + k * DAY_SECONDS, 2);
    }
    alice.start_session(&b_id, &old).unwrap();
    let t = alice.send(&b_id, &text("old bundle"), T0, 0).unwrap();
    assert_eq!(
        recv(&mut bob, &t).unwrap().unwrap().body,
        text("old bundle")
    );
    // ...but once its slot and the store window are over, its keys are erased: a first
    // contact from it no longer opens (forward secrecy).
    let stale = bundles[1].clone();
    let after = (day0() + 1 + 2) * DAY_SECONDS + STORE_WINDOW_EPOCHS * 3_600;
    publish_at(&mut node, &mut bob, after - 1, 2);
    carol.start_session(&b_id, &stale).unwrap();
    let t = carol.send(&b_id, &text("too late?"), after - 1, 0).unwrap();
    let mut bob_before = Messenger::open(bob.storage().clone(), NS).unwrap();
    assert!(
        recv(&mut bob_before, &t).unwrap().is_some(),
        "still kept a second before"
    );
    publish_at(&mut node, &mut bob, after, 2);
    assert!(
        matches!(
            recv(&mut bob, &t),
            Err(MessengerError::Session(
                ferry_crypto::session::SessionError::UnknownPrekey
            ))
        ),
        "the secrets of a slot past its window are gone"
    );
    assert!(matches!(
        bob.prekey_publication(after, 101),
        Err(MessengerError::InvalidArgument(_))
    ));
    // Weeks of daily starts: the signed prekey and last-resort key of the first week are erased
    // too. A first contact made from day 0's head alone (no one-time key: what a drained slot
    // gives) no longer opens, while one from today's head does.
    let head_only = |node: &Node, slot: &SlotOpener| {
        let head = node.slots[&slot.dest()][0].head.clone().unwrap();
        slot.open(&SealedBundle {
            head,
            pq: None,
            ec: None,
        })
        .unwrap()
    };
    let first_head = head_only(&node, &slots[0]);
    assert!(first_head.pq_last_resort);
    let far = T0 + 30 * DAY_SECONDS;
    let mut now = after;
    while now < far {
        now += DAY_SECONDS;
        publish_at(&mut node, &mut bob, now, 1);
    }
    let mut dave = Messenger::open(MemoryStorage::default(), NS).unwrap();
    dave.add_contact("bob", &bob.address()).unwrap();
    dave.start_session(&b_id, &first_head).unwrap();
    let old = dave
        .send(&b_id, &text("from day 0's head"), now, 0)
        .unwrap();
    assert!(
        matches!(
            recv(&mut bob, &old),
            Err(MessengerError::Session(
                ferry_crypto::session::SessionError::UnknownPrekey
            ))
        ),
        "day 0's signed keys are erased"
    );
    let today_slot = dave.contact_prekey_slot(&b_id, day_of(now)).unwrap();
    let mut erin = Messenger::open(MemoryStorage::default(), NS).unwrap();
    erin.add_contact("bob", &bob.address()).unwrap();
    erin.start_session(&b_id, &head_only(&node, &today_slot))
        .unwrap();
    let fresh = erin
        .send(&b_id, &text("from today's head"), now, 0)
        .unwrap();
    assert!(recv(&mut bob, &fresh).unwrap().is_some());
}

#[test]
fn storage_is_locked_tied_to_its_namespace_and_names_are_unique() {
    let dir = tempdir("lock");
    let m = Messenger::open(DirStorage::open(&dir).unwrap(), NS).unwrap();
    assert!(
        DirStorage::open(&dir).is_err(),
        "a second process would reuse ratchet keys"
    );
    drop(m);
    assert!(matches!(
        Messenger::open(DirStorage::open(&dir).unwrap(), NamespaceId([1; 32])),
        Err(MessengerError::InvalidArgument(_))
    ));
    // A stray file in a record directory is ignored.
    std::fs::create_dir_all(dir.join("contact")).unwrap();
    std::fs::write(dir.join("contact").join("notes.txt"), b"x").unwrap();
    let mut m = Messenger::open(DirStorage::open(&dir).unwrap(), NS).unwrap();
    let other = Messenger::open(MemoryStorage::default(), NS).unwrap();
    let third = Messenger::open(MemoryStorage::default(), NS).unwrap();
    m.add_contact("pat", &other.address()).unwrap();
    assert!(m.add_contact("pat", &third.address()).is_err());
    m.add_contact("pat", &other.address()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A contact name longer than its stored length field can say is refused with the limit named,
/// and nothing stored changes: the contact keeps its name and what arrives from it is stored in
/// records that read back (once, a 70 000-byte name wrote a u16 length of 0 in front of 65 535
/// name bytes, and the inbox no longer parsed).
#[test]
fn a_contact_name_over_the_limit_is_refused_and_nothing_is_corrupted() {
    use ferry_sdk::messenger::CONTACT_NAME_BYTES_MAX;
    let mut node = Node::default();
    let (mut alice, mut bob, b_id) = introduced(&mut node, true);
    bob.add_contact("alice", &alice.address()).unwrap();
    let before = bob.storage().clone();
    for len in [CONTACT_NAME_BYTES_MAX + 1, 70_000] {
        match bob.add_contact(&"n".repeat(len), &alice.address()) {
            Err(e @ MessengerError::InvalidArgument(_)) => {
                assert!(e.to_string().contains("CONTACT_NAME_BYTES_MAX"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bob.storage().0, before.0, "a refused name changed nothing");
    let t = alice.send(&b_id, &text("still fine"), T0, 0).unwrap();
    let got = recv(&mut bob, &t).unwrap().unwrap();
    assert_eq!(got.from_name, "alice");
    let bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert_eq!(bob.inbox().unwrap(), vec![got]);

    // The longest name allowed goes through the inbox record and back.
    let long = "é".repeat(CONTACT_NAME_BYTES_MAX / 2);
    let mut bob = bob;
    bob.add_contact(&long, &alice.address()).unwrap();
    let t = alice.send(&b_id, &text("long name"), T0, 0).unwrap();
    let got = recv(&mut bob, &t).unwrap().unwrap();
    assert_eq!(got.from_name, long);
    let bob = Messenger::open(bob.into_storage(), NS).unwrap();
    // The inbox is in message-id order: both messages, this one among them.
    let inbox = bob.inbox().unwrap();
    assert!(inbox.len() == 2 && inbox.contains(&got), "{inbox:?}");
}

/// An attachment marked done stays kept, also across a restart, until it is forgotten; a
/// message of text is not kept.
#[test]
fn an_attachment_is_kept_after_done_until_forgotten() {
    let mut node = Node::default();
    let (mut alice, mut bob, b_id) = introduced(&mut node, true);
    let file = Body::Attachment {
        id: [7; 32],
        key: [9; 32],
        ciphertext_bytes: 3_000_048,
        plaintext_bytes: 3_000_000,
        name: "photo.bin".into(),
    };
    let t1 = alice.send(&b_id, &file, T0, 0).unwrap();
    let t2 = alice.send(&b_id, &text("and words"), T0, 0).unwrap();
    let f = recv(&mut bob, &t1).unwrap().unwrap();
    let w = recv(&mut bob, &t2).unwrap().unwrap();
    bob.done(&f.msg_id).unwrap();
    bob.done(&w.msg_id).unwrap();
    assert!(bob.inbox().unwrap().is_empty());
    let mut bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert_eq!(bob.attachments().unwrap(), vec![f.clone()]);
    assert_eq!(bob.attachment(&f.msg_id).unwrap(), Some(f.clone()));
    assert_eq!(bob.attachment(&w.msg_id).unwrap(), None);
    // Received again (a retry): a duplicate, not kept twice.
    assert_eq!(recv(&mut bob, &t1).unwrap(), None);
    bob.forget_attachment(&f.msg_id).unwrap();
    let bob = Messenger::open(bob.into_storage(), NS).unwrap();
    assert!(bob.attachments().unwrap().is_empty());
}

/// A node that withholds every answer until the hour turns, then the sender restarts: each
/// retry goes to the dest of the first send (the same bytes never at two dests, so the node
/// cannot link the recipient's two hours by them), the recipient still finds it by draining,
/// and once the first send's hour leaves the drain window the message expires instead.
#[test]
fn retries_go_to_the_first_sends_dest_across_the_hour_and_a_restart() {
    let mut node = Node::default();
    let (mut alice, mut bob, b_id) = introduced(&mut node, true);
    let hour_end = (epoch_of(T0) + 1) * 3600;
    let first = alice.send(&b_id, &text("late"), hour_end - 1, 0).unwrap();
    assert_eq!(first.epoch, epoch_of(hour_end - 1));
    // Unanswered: retries after the hour turned, then after a restart, then hours later.
    let mut retries = alice.due(hour_end + 5, 10_000, false);
    let mut alice = Messenger::open(alice.into_storage(), NS).unwrap();
    retries.extend(alice.due(hour_end + 60, 0, true));
    retries.extend(alice.due(hour_end + 30 * 3600, 0, true));
    assert_eq!(retries.len(), 3);
    for r in &retries {
        assert_eq!(r, &first, "a retry went to another dest or changed");
    }
    node.send(&retries[2]);
    // Bob, back 40 hours later, drains it from the first send's hour.
    assert_eq!(
        sync(&mut node, &mut bob, hour_end + 40 * 3600),
        vec![text("late")]
    );
    // Past the drain window: dropped and reported, never sent to a newer dest.
    let late = hour_end + (STORE_WINDOW_EPOCHS + 1) * 3600;
    assert!(alice.due(late, 0, true).is_empty());
    assert_eq!(alice.expired(), vec![first.msg_id]);
    assert_eq!(alice.unacknowledged(), 0);
    let mut alice = Messenger::open(alice.into_storage(), NS).unwrap();
    assert_eq!(alice.unacknowledged(), 0, "the expiry was persisted");
    assert!(alice.expired().is_empty());
}

/// An outbox record written before the first dest was kept (`to ‖ envelope`) still loads; its
/// first retry fixes its dest for good, so later hours and restarts send it there too.
#[test]
fn an_old_outbox_record_gets_its_dest_fixed_at_the_first_retry() {
    let mut node = Node::default();
    let (alice, _bob, b_id) = introduced(&mut node, true);
    let mut alice = alice;
    let t = alice.send(&b_id, &text("old"), T0, 0).unwrap();
    let mut store = alice.into_storage();
    let key = format!("outbox/{:016x}", t.msg_id);
    let mut old = b_id.to_vec();
    old.extend_from_slice(&t.payload);
    store.put(&key, &old).unwrap();
    let mut alice = Messenger::open(store, NS).unwrap();
    let later = T0 + 2 * 3600;
    let fixed = alice.due(later, 0, true);
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0].epoch, epoch_of(later));
    let mut alice = Messenger::open(alice.into_storage(), NS).unwrap();
    assert_eq!(alice.due(later + 3600, 0, true), fixed);
}

#[test]
fn contacts_carry_their_pairwise_mailboxs_capability_and_strangers_none() {
    let mut node = Node::default();
    let (mut alice, mut bob, bob_id) = introduced(&mut node, true);
    // First contact goes to Bob's intro mailbox: no token (it would tie the intro dest to the
    // pairwise mailbox whose verifier it hashes to).
    let first = alice.send(&bob_id, &text("hello"), T0, 0).unwrap();
    assert_eq!(first.capability, None);
    node.send(&first);
    assert_eq!(sync(&mut node, &mut bob, T0 + 60), vec![text("hello")]);
    let alice_id = alice.address().identity;
    // Bob answers on the mailbox Alice keeps for him with the token of that day, whose verifier
    // is the one Alice registers for the dest she listens on, and only for that dest.
    let r = bob.send(&alice_id, &text("hi"), T0 + 60, 0).unwrap();
    let token = r.capability.expect("a contact's send carries a capability");
    let (add, _) = alice.listen_update(T0 + 60).unwrap();
    let dests: Vec<Dest> = add
        .iter()
        .map(ferry_proto::addr::BlindedSigner::dest)
        .collect();
    assert!(dests.contains(&r.dest));
    let regs = alice.capability_verifiers(T0 + 60, &dests).unwrap();
    assert_eq!(regs.len(), 1, "Bob's pairwise dest only: {regs:?}");
    let (dest, verifier, ttl_s) = regs[0];
    assert_eq!(dest, r.dest);
    assert_eq!(verifier, ferry_proto::puzzle::capability_verifier(&token));
    // Kept to the end of the day plus the retry grace.
    let end = (day0() + 1) * DAY_SECONDS;
    assert_eq!(
        u64::from(ttl_s),
        end + ferry_sdk::messenger::CAPABILITY_GRACE_S - (T0 + 60)
    );
    assert!(
        alice
            .capability_verifiers(T0 + 60, &[first.dest])
            .unwrap()
            .is_empty()
    );
    // A retry in a later hour keeps its first dest and its day's token.
    let again = bob.due(T0 + 2 * 3600, u64::MAX, true);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].dest, again[0].capability), (r.dest, Some(token)));
    // The same day's sends carry the same token; the next day's another one, at another dest.
    let later = bob.send(&alice_id, &text("later"), T0 + 3600, 0).unwrap();
    assert_eq!((later.dest, later.capability), (r.dest, Some(token)));
    let tomorrow = bob
        .send(&alice_id, &text("tomorrow"), T0 + DAY_SECONDS, 0)
        .unwrap();
    assert_ne!(tomorrow.dest, r.dest);
    assert!(tomorrow.capability.is_some() && tomorrow.capability != Some(token));
}
