//! Media requests: rate-limited per connection and handed to the worker of the blob's owner.

use super::*;

/// The core that stores media blob `id`: its first 8 bytes, little-endian, modulo the shards.
pub fn media_owner(id: &[u8; 32], shards: usize) -> usize {
    let mut head = [0u8; 16];
    head.copy_from_slice(&id[..16]);
    ferry_proto::Dest(head).owner(shards)
}

impl<B: Backend> Shard<B> {
    /// Connects this shard to the media workers (index = owner core).
    pub fn with_media(mut self, sinks: Vec<Arc<dyn crate::service::ServiceSink>>) -> Self {
        assert_eq!(sinks.len(), self.cfg.shards);
        self.media = Some(sinks);
        self
    }

    /// Hands a media request to the worker of the blob's owner core; refusals answer at once.
    pub(super) fn hand_to_media(
        &mut self,
        now: Now,
        from: ConnRef,
        source: IpKey,
        op: ferry_proto::conn::BlobOp,
    ) {
        use ferry_proto::conn::BlobOp;
        let refuse = |status| Frame::BlobStatus {
            id: *op.id(),
            op: op.kind(),
            status,
            offset: op.offset(),
            size: 0,
        };
        let refused = match &op {
            BlobOp::Chunk { data, .. }
                if !self
                    .media_upload
                    .allow_n(from.conn, now.mono_ms, data.len() as u64) =>
            {
                Some(refuse(ferry_proto::BlobStatus::RateLimited))
            }
            _ => None,
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
            return;
        }
        let owner = media_owner(op.id(), self.cfg.shards);
        let req = crate::service::ServiceRequest {
            from,
            work: crate::service::ServiceWork::Blob { op, source },
        };
        let refused = match self.media.as_ref().and_then(|m| m.get(owner)) {
            None => req.refusal(false),
            Some(sink) => match sink.offer(req) {
                Ok(()) => return,
                Err(req) => {
                    ShardMetrics::inc(&self.metrics.media_queue_full);
                    req.refusal(true)
                }
            },
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
        }
    }
}
