//! The client's prekey calls: uploading a slot, counting its one-time keys, and fetching a
//! contact's bundle.

use std::time::Duration;

use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Dest, Frame};

use crate::{Client, SdkError, local_unix_s};

impl Client {
    /// Sends prekey uploads (made by [`prekeys::generate`](crate::prekeys::generate)) for a dest
    /// proven for `Op::PrekeyUpdate`, in order, each answered before the next. Returns the
    /// one-time keys (EC, PQ) in the slot after the last one.
    pub fn upload_prekeys(
        &mut self,
        uploads: &[ferry_proto::prekey::Upload],
    ) -> Result<(u16, u16), SdkError> {
        let mut counts = (0, 0);
        for u in uploads {
            self.conn.push(&Frame::PrekeyUpload {
                upload: Box::new(u.clone()),
            });
            self.flush()?;
            counts = self.prekey_answer(u.dest)?;
        }
        Ok(counts)
    }

    /// One-time keys (EC, PQ) left in the slot of a dest proven for `Op::PrekeyUpdate`.
    pub fn prekey_count(&mut self, dest: Dest) -> Result<(u16, u16), SdkError> {
        self.conn.push(&Frame::PrekeyCount { dest });
        self.flush()?;
        self.prekey_answer(dest)
    }

    fn prekey_answer(&mut self, dest: Dest) -> Result<(u16, u16), SdkError> {
        use ferry_proto::frame::PrekeyStatus;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::PrekeyResult {
                dest: d,
                status,
                kind,
                index,
                ec_left,
                pq_left,
            } if *d == dest => Some(if *status == PrekeyStatus::Ok {
                Ok((*ec_left, *pq_left))
            } else {
                Err(SdkError::Prekey {
                    status: *status,
                    kind: *kind,
                    index: *index,
                })
            }),
            _ => None,
        })?
    }

    /// Fetches one prekey bundle from `slot` (a contact's slot of one day,
    /// [`Contact::prekey_slot`](crate::Contact::prekey_slot)), opens it and checks its signatures
    /// and the signed expiry against this device's clock.
    ///
    /// When the slot is under pressure the node answers with the last-resort bundle and a
    /// puzzle; the client then solves it (efforts up to [`Client::set_puzzle_effort_max`]) and
    /// fetches once more with the answer, which buys a one-time key (forward secrecy from the
    /// first message). If the puzzle is too hard, or the second answer is again a last-resort
    /// bundle, that bundle is returned: a first contact never fails for want of a puzzle.
    pub fn fetch_prekeys(
        &mut self,
        slot: &ferry_proto::prekey::SlotOpener,
    ) -> Result<ferry_proto::prekey::Bundle, SdkError> {
        let dest = slot.dest();
        let (bundle, ask) = self.fetch_prekeys_once(slot, None)?;
        let Some(ask) = ask.filter(|a| a.effort <= self.puzzle_effort_max) else {
            return Ok(bundle);
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
        let digest = ferry_proto::puzzle::prekey_fetch_digest(&dest);
        let Some(answer) = ferry_proto::puzzle::solve(&ask.seed, &dest, &digest, ask.effort, nonce)
        else {
            return Ok(bundle);
        };
        match self.fetch_prekeys_once(slot, Some(answer)) {
            Ok((again, _)) => Ok(again),
            // The first bundle is as good a last resort as any (the retry may meet the fetch
            // rate limit, for one).
            Err(SdkError::Prekey { .. }) => Ok(bundle),
            Err(e) => Err(e),
        }
    }

    /// One `PrekeyFetch` and its opened, checked bundle, with the puzzle the node asked for, if
    /// any.
    fn fetch_prekeys_once(
        &mut self,
        slot: &ferry_proto::prekey::SlotOpener,
        puzzle: Option<ferry_proto::puzzle::PuzzleAnswer>,
    ) -> Result<
        (
            ferry_proto::prekey::Bundle,
            Option<ferry_proto::puzzle::PuzzleAsk>,
        ),
        SdkError,
    > {
        let dest = slot.dest();
        self.conn.push(&Frame::PrekeyFetch { dest, puzzle });
        self.flush()?;
        let (sealed, ask) = self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::PrekeyBundle {
                dest: d,
                status,
                bundle,
                puzzle,
            } if *d == dest => Some(match bundle {
                Some(b) => Ok((b.as_ref().clone(), *puzzle)),
                None => Err(SdkError::Prekey {
                    status: *status,
                    kind: ferry_proto::prekey::KeyKind::None,
                    index: 0,
                }),
            }),
            _ => None,
        })??;
        let bundle = slot.open(&sealed).map_err(SdkError::BadBundle)?;
        if bundle.expires <= local_unix_s() {
            return Err(SdkError::BadBundle(ferry_proto::prekey::Fault {
                bad_signature: false,
                kind: ferry_proto::prekey::KeyKind::SignedPrekey,
                index: 0,
            }));
        }
        Ok((bundle, ask))
    }
}
