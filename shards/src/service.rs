//! The shards' side of the service core (push wakes and the prekey directory, on their own
//! low-priority thread). Shards hand it [`ServiceRequest`]s through a [`ServiceSink`] that never
//! blocks: when the service's bounded queue is full the request is refused on the spot, the
//! client is answered `Busy` (a wake is dropped), and the refusal is counted. The service answers
//! with [`ServiceReply`]s on a bounded channel per shard, which the driver feeds to
//! [`crate::Shard::on_service`].

use bytes::Bytes;
use ferry_proto::conn::prekey_refusal;
use ferry_proto::frame::{Dest, Frame, PrekeyStatus, PushProvider, PushStatus};
use ferry_proto::prekey::Upload;

use crate::ratelimit::IpKey;
use crate::table::ConnRef;

/// Work for the service core.
#[derive(Clone, Debug)]
pub enum ServiceWork {
    /// Check and store prekeys (the connection proved `PrekeyUpdate` for the dest);
    /// `requester` keys the per-address upload limit.
    PrekeyUpload {
        upload: Box<Upload>,
        requester: IpKey,
    },
    /// Hand out one bundle; `requester` keys the per-address fetch limit; `puzzle` is the
    /// fetch's answer (checked on the service core, only when the slot is under pressure).
    PrekeyFetch {
        dest: Dest,
        requester: IpKey,
        puzzle: Option<ferry_proto::puzzle::PuzzleAnswer>,
    },
    /// Count the one-time keys left (the connection proved `PrekeyUpdate` for the dest).
    PrekeyCount { dest: Dest },
    /// Register (`ttl_s` > 0) or remove (`ttl_s` = 0) a push token for proven dests.
    PushRegister {
        provider: PushProvider,
        ttl_s: u32,
        token: Bytes,
        dests: Vec<Dest>,
    },
    /// A blob was stored for `dest`, which has push registrations and no live subscriber.
    Wake { dest: Dest },
    /// A media request, for the media worker of the blob's owner core; `source` keys the
    /// per-address cap on unfinished uploads.
    Blob {
        op: ferry_proto::conn::BlobOp,
        source: IpKey,
    },
}

/// One request: `from` is the connection to answer (for `Wake`, the owner shard and conn 0).
#[derive(Clone, Debug)]
pub struct ServiceRequest {
    pub from: ConnRef,
    pub work: ServiceWork,
}

impl ServiceRequest {
    /// The answer a client gets when the request cannot reach the service (`busy`: its queue is
    /// full; otherwise the node runs no service core). `None` for wakes, which answer nobody.
    pub fn refusal(&self, busy: bool) -> Option<Frame> {
        let prekey = if busy {
            PrekeyStatus::Busy
        } else {
            PrekeyStatus::Unavailable
        };
        match &self.work {
            ServiceWork::PrekeyUpload { upload, .. } => Some(prekey_refusal(upload.dest, prekey)),
            ServiceWork::PrekeyCount { dest } => Some(prekey_refusal(*dest, prekey)),
            ServiceWork::PrekeyFetch { dest, .. } => Some(Frame::PrekeyBundle {
                dest: *dest,
                status: prekey,
                bundle: None,
                puzzle: None,
            }),
            ServiceWork::PushRegister { .. } => Some(Frame::PushResult {
                status: if busy {
                    PushStatus::Busy
                } else {
                    PushStatus::Unavailable
                },
                dests_registered: 0,
            }),
            ServiceWork::Wake { .. } => None,
            ServiceWork::Blob { op, .. } => Some(Frame::BlobStatus {
                id: *op.id(),
                op: op.kind(),
                status: if busy {
                    ferry_proto::BlobStatus::Busy
                } else {
                    ferry_proto::BlobStatus::Unavailable
                },
                offset: op.offset(),
                size: 0,
            }),
        }
    }
}

/// What the service core sends back to a shard.
#[derive(Clone, Debug)]
pub enum ServiceReply {
    /// Write `frame` to connection `to` of this shard.
    Frame {
        to: crate::table::ConnId,
        frame: Frame,
    },
    /// `dest` (owned by this shard) has push registrations until `until_unix_s`; 0 = none left.
    PushArm { dest: Dest, until_unix_s: u64 },
    /// At start-up: the dests whose [`push_dest_tag`] is a key here have push registrations
    /// until about the value (Unix s). What a restarted service core knows of a registration
    /// until a wake for the dest opens it: the journal keeps dests only as tags, so that nothing
    /// at rest links one registration's dests. Every shard gets the same map (a tag names no
    /// owner), shared, read-only.
    PushArmTags {
        tags: std::sync::Arc<ahash::AHashMap<[u8; 16], u64>>,
    },
    /// The registrations under `tag` were opened, replaced or have expired: a blob for its dest
    /// no longer needs the tag to ask for a wake.
    PushUnarmTag { tag: [u8; 16] },
}

/// The tag a push registration's dest is kept under at rest (the service core's journal, and the
/// shards' armed tags after a restart): a one-way function of the dest, so that the journal
/// names no dest, while a blob stored for the dest finds its registrations.
pub fn push_dest_tag(dest: &Dest) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key("ferry v1 push dest tag");
    h.update(&dest.0);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
    tag
}

/// The non-blocking way into the service core's bounded queue.
pub trait ServiceSink: Send + Sync + std::fmt::Debug {
    /// Queues `req`, or gives it back at once when the queue is full or the service is gone.
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest>;
}

/// What ferry's push wakes look like on the providers' wire: defined once, for the service core
/// that sends them (`src/service/providers.rs`) and for `ferry-pushmock`, which checks them.
pub mod push_wire {
    /// The body of every APNs wake: a background push with no content.
    pub const APNS_BODY: &str = r#"{"aps":{"content-available":1}}"#;
    /// The APNs request path before the device token.
    pub const APNS_PATH_PREFIX: &str = "/3/device/";
    /// `apns-push-type`: a background (silent) push.
    pub const APNS_PUSH_TYPE: &str = "background";
    /// `apns-priority`: 5, what Apple requires for background pushes.
    pub const APNS_PRIORITY: &str = "5";
    /// OAuth2 scope of FCM HTTP v1.
    pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
}
