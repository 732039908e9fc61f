//! Client puzzles for anonymous writes under pressure, and the per-mailbox send capability that
//! skips them.
//!
//! Anyone may `Send` to any dest. When a dest's store quota, or the node's store, fills up, the
//! node asks offline sends to that dest for proof of work first (`SendStatus::PuzzleRequired`,
//! announced by a `Puzzle` frame with the seed and the effort): Tor's onion-service scheme
//! (proposal 327), with Equi-X as the puzzle and blake3 in place of blake2b.
//!
//! * `challenge = blake3 derive_key("ferry v1 send puzzle", seed ‖ dest ‖ digest ‖ nonce ‖
//!   effort)`, where `seed` is the node's rotating puzzle seed, `digest` is
//!   [`message_digest`] of the `Send` (so one solution buys exactly one message) and `effort` the
//!   claimed effort (u32 LE).
//! * `solution` is an Equi-X solution of `challenge` (16 bytes) whose
//!   `u32_le(blake3(challenge ‖ solution)[0..4]) × effort ≤ u32::MAX`: a solver needs about
//!   `effort` Equi-X solutions, `effort / 2` solver runs, since each run yields about two.
//!
//! The node checks the cheap blake3 condition first and runs Equi-X verification (tens of
//! microseconds) only for answers that pass it.
//!
//! The capability: a mailbox owner shares a 32-byte send secret with its contacts inside the
//! end-to-end session. For each epoch the owner registers `verifier = blake3(token)` with the
//! node, where `token = blake3 derive_key("ferry v1 send capability", secret ‖ epoch)`; a `Send`
//! that carries a token whose hash is the dest's verifier needs no puzzle. The node learns only
//! that the sender holds the mailbox's send secret, not which contact it is.

use crate::frame::Dest;

/// Bytes of the node's puzzle seed.
pub const PUZZLE_SEED_BYTES: usize = 32;
/// Bytes of the solver's nonce.
pub const PUZZLE_NONCE_BYTES: usize = 16;
/// Bytes of an Equi-X solution (8 u16 items).
pub const PUZZLE_SOLUTION_BYTES: usize = 16;
/// Bytes a puzzle answer adds to a `Send` (flag `FLAG_PUZZLE`): nonce, effort (u32), solution.
pub const PUZZLE_ANSWER_BYTES: usize = PUZZLE_NONCE_BYTES + 4 + PUZZLE_SOLUTION_BYTES;
/// Bytes of a send capability token (flag `FLAG_CAPABILITY`) and of its verifier.
pub const CAPABILITY_TOKEN_BYTES: usize = 32;
/// Highest effort a node may ask for: 2^20 Equi-X solutions is hours of a phone's CPU, so a
/// node never needs more, and a client refuses to start on a larger one.
pub const PUZZLE_EFFORT_MAX: u32 = 1 << 20;

const _: () = assert!(PUZZLE_SOLUTION_BYTES == equix::Solution::NUM_BYTES);

const CHALLENGE_CONTEXT: &str = "ferry v1 send puzzle";
const DIGEST_CONTEXT: &str = "ferry v1 send digest";
const CAPABILITY_CONTEXT: &str = "ferry v1 send capability";
const PREKEY_FETCH_CONTEXT: &str = "ferry v1 prekey fetch";

/// Bytes a puzzle adds to a `PrekeyBundle`: seed, effort (u32).
pub const PUZZLE_ASK_BYTES: usize = PUZZLE_SEED_BYTES + 4;

/// What a node asks of a `PrekeyFetch` for a one-time key of a slot under pressure (it rides on
/// the `PrekeyBundle` that carries the last-resort key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PuzzleAsk {
    /// The node's puzzle seed (the same one `Send` puzzles use).
    pub seed: [u8; PUZZLE_SEED_BYTES],
    /// The effort an answer must claim (1 ..= [`PUZZLE_EFFORT_MAX`]).
    pub effort: u32,
}

/// A solved puzzle, as a `Send` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PuzzleAnswer {
    pub nonce: [u8; PUZZLE_NONCE_BYTES],
    /// The effort this answer claims (the node compares it with what the dest needs).
    pub effort: u32,
    pub solution: [u8; PUZZLE_SOLUTION_BYTES],
}

/// What a `Send` may carry to pass a pressured dest: a puzzle answer, a capability token, both or
/// neither. On the wire each one present sets its flag bit and adds its bytes after `ttl_s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SendPass {
    pub puzzle: Option<PuzzleAnswer>,
    pub capability: Option<[u8; CAPABILITY_TOKEN_BYTES]>,
}

impl SendPass {
    pub const NONE: SendPass = SendPass {
        puzzle: None,
        capability: None,
    };
    /// Bytes these add to a `Send` body.
    pub fn wire_bytes(&self) -> usize {
        self.puzzle.map_or(0, |_| PUZZLE_ANSWER_BYTES)
            + self.capability.map_or(0, |_| CAPABILITY_TOKEN_BYTES)
    }
}

/// Why a puzzle answer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PuzzleError {
    /// The claimed effort is 0 or above [`PUZZLE_EFFORT_MAX`].
    BadEffort { effort: u32 },
    /// `blake3(challenge ‖ solution) × effort` overflows: not enough work for the claimed effort.
    EffortNotMet,
    /// The solution is not an Equi-X solution of the challenge.
    BadSolution,
}

impl std::fmt::Display for PuzzleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PuzzleError::BadEffort { effort } => write!(f, "effort {effort} out of range"),
            PuzzleError::EffortNotMet => write!(f, "solution does not meet its effort"),
            PuzzleError::BadSolution => write!(f, "not an Equi-X solution of the challenge"),
        }
    }
}

impl std::error::Error for PuzzleError {}

/// The digest a puzzle answer is bound to: the parts of the `Send` the node stores (`dest` is
/// bound separately).
pub fn message_digest(msg_id: u64, ttl_s: u32, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    h.update(&msg_id.to_le_bytes());
    h.update(&ttl_s.to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// The digest a `PrekeyFetch` answer is bound to in place of a message's: the fetch is "one
/// one-time key of the slot `dest`" (the dest is bound again by the challenge). Its own context
/// keeps a send answer from passing as a fetch answer and the other way round.
pub fn prekey_fetch_digest(dest: &Dest) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(PREKEY_FETCH_CONTEXT);
    h.update(&dest.0);
    *h.finalize().as_bytes()
}

/// The Equi-X challenge for one answer.
pub fn challenge(
    seed: &[u8; PUZZLE_SEED_BYTES],
    dest: &Dest,
    digest: &[u8; 32],
    nonce: &[u8; PUZZLE_NONCE_BYTES],
    effort: u32,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CHALLENGE_CONTEXT);
    h.update(seed);
    h.update(&dest.0);
    h.update(digest);
    h.update(nonce);
    h.update(&effort.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The cheap half of the check: does this solution carry the claimed effort?
pub fn effort_met(
    challenge: &[u8; 32],
    solution: &[u8; PUZZLE_SOLUTION_BYTES],
    effort: u32,
) -> bool {
    let mut h = blake3::Hasher::new();
    h.update(challenge);
    h.update(solution);
    let head = h.finalize();
    let mut v = [0u8; 4];
    v.copy_from_slice(&head.as_bytes()[..4]);
    u32::from_le_bytes(v).checked_mul(effort).is_some()
}

/// The id a node remembers an accepted answer by (so it is not accepted twice).
pub fn answer_id(challenge: &[u8; 32]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&challenge[..16]);
    id
}

/// Checks an answer: effort range, the cheap effort condition, then Equi-X (interpreted: no
/// executable memory on the node's cores). Returns the answer's id on success.
pub fn verify(
    seed: &[u8; PUZZLE_SEED_BYTES],
    dest: &Dest,
    digest: &[u8; 32],
    answer: &PuzzleAnswer,
) -> Result<[u8; 16], PuzzleError> {
    if answer.effort == 0 || answer.effort > PUZZLE_EFFORT_MAX {
        return Err(PuzzleError::BadEffort {
            effort: answer.effort,
        });
    }
    let c = challenge(seed, dest, digest, &answer.nonce, answer.effort);
    if !effort_met(&c, &answer.solution, answer.effort) {
        return Err(PuzzleError::EffortNotMet);
    }
    let solution =
        equix::Solution::try_from_bytes(&answer.solution).map_err(|_| PuzzleError::BadSolution)?;
    equix::EquiXBuilder::new()
        .runtime(equix::RuntimeOption::InterpretOnly)
        .verify(&c, &solution)
        .map_err(|_| PuzzleError::BadSolution)?;
    Ok(answer_id(&c))
}

/// Solves a puzzle of `effort` for one message, trying nonces from `nonce_start` upwards (a
/// random start keeps two clients from racing to the same answers). Uses the compiled Equi-X
/// runtime where the platform allows it. `None` for an effort out of range.
pub fn solve(
    seed: &[u8; PUZZLE_SEED_BYTES],
    dest: &Dest,
    digest: &[u8; 32],
    effort: u32,
    nonce_start: [u8; PUZZLE_NONCE_BYTES],
) -> Option<PuzzleAnswer> {
    if effort == 0 || effort > PUZZLE_EFFORT_MAX {
        return None;
    }
    let mut nonce = u128::from_le_bytes(nonce_start);
    let mut mem = equix::SolverMemory::new();
    let builder = equix::EquiXBuilder::new();
    loop {
        let n = nonce.to_le_bytes();
        let c = challenge(seed, dest, digest, &n, effort);
        // A challenge whose HashX program is rejected (rare) is skipped like an unlucky nonce.
        if let Ok(eq) = builder.build(&c) {
            for s in eq.solve_with_memory(&mut mem) {
                let solution = s.to_bytes();
                if effort_met(&c, &solution, effort) {
                    return Some(PuzzleAnswer {
                        nonce: n,
                        effort,
                        solution,
                    });
                }
            }
        }
        nonce = nonce.wrapping_add(1);
    }
}

/// A contact's capability token for `epoch` (see the module doc).
pub fn capability_token(secret: &[u8; 32], epoch: u64) -> [u8; CAPABILITY_TOKEN_BYTES] {
    let mut h = blake3::Hasher::new_derive_key(CAPABILITY_CONTEXT);
    h.update(secret);
    h.update(&epoch.to_le_bytes());
    *h.finalize().as_bytes()
}

/// What the owner registers with the node for a token: the node compares hashes, so what it
/// stores cannot be replayed as a token.
pub fn capability_verifier(token: &[u8; CAPABILITY_TOKEN_BYTES]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solved_answer_verifies_once_bound_and_fails_when_anything_changes() {
        let seed = [7u8; 32];
        let dest = Dest([3; 16]);
        let digest = message_digest(9, 0, b"hello");
        let a = solve(&seed, &dest, &digest, 4, [0; 16]).expect("in range");
        assert!(verify(&seed, &dest, &digest, &a).is_ok());
        assert!(verify(&[8; 32], &dest, &digest, &a).is_err());
        assert!(verify(&seed, &Dest([4; 16]), &digest, &a).is_err());
        let other = message_digest(10, 0, b"hello");
        assert!(verify(&seed, &dest, &other, &a).is_err());
        let mut bad = a;
        bad.solution[0] ^= 1;
        assert!(verify(&seed, &dest, &digest, &bad).is_err());
        let mut lower = a;
        lower.effort = 1;
        assert!(
            verify(&seed, &dest, &digest, &lower).is_err(),
            "effort is bound"
        );
        assert_eq!(
            verify(&seed, &dest, &digest, &PuzzleAnswer { effort: 0, ..a }),
            Err(PuzzleError::BadEffort { effort: 0 })
        );
    }

    #[test]
    fn a_fetch_answer_is_not_a_send_answer() {
        let seed = [7u8; 32];
        let dest = Dest([3; 16]);
        let fetch = prekey_fetch_digest(&dest);
        assert_ne!(fetch, prekey_fetch_digest(&Dest([4; 16])));
        let a = solve(&seed, &dest, &fetch, 2, [0; 16]).expect("in range");
        assert!(verify(&seed, &dest, &fetch, &a).is_ok());
        assert!(verify(&seed, &dest, &message_digest(0, 0, &[]), &a).is_err());
    }

    #[test]
    fn tokens_differ_per_epoch_and_verifiers_are_their_hashes() {
        let t0 = capability_token(&[1; 32], 0);
        let t1 = capability_token(&[1; 32], 1);
        assert_ne!(t0, t1);
        assert_eq!(capability_verifier(&t0), *blake3::hash(&t0).as_bytes());
    }
}
