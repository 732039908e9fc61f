//! The node's metrics: per-shard counters (each shard is the only writer of its own block,
//! relaxed atomics, one cache line apart from other shards'; the admin endpoint sums the blocks
//! when scraped), the [`counters!`] declaration every other block of counters uses (the service
//! core's, the media workers'), fixed-bucket [`Histogram`]s, and the one Prometheus text encoder
//! they all go through ([`Exposition`]). Nothing is labelled by destination or address.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($( $(#[$m:meta])* $field:ident : $kind:literal, $name:literal, $help:literal; )+) => {
        /// Counters and gauges of one shard.
        #[derive(Debug)]
        #[repr(align(128))]
        pub struct ShardMetrics {
            $( $(#[$m])* pub $field: AtomicU64, )+
            /// How late the tick ran: from when it was due (its sleep's end, or the end of the
            /// turn it yielded for) to when it ran. Work that holds the core (a blocking sync,
            /// a long batch) shows here.
            pub tick_lag: Histogram,
            /// From issuing a group commit's syncs to their completion.
            pub store_sync: Histogram,
            /// From a cross-core batch leaving its sender's outbox to this (the owner) core
            /// handling it: the in-node part of a packet's way to a subscriber on another core.
            pub hop_delay: Histogram,
            /// Messages per cross-core batch this shard sent.
            pub hop_batch_msgs: Histogram,
        }

        impl Default for ShardMetrics {
            fn default() -> Self {
                ShardMetrics {
                    $( $field: AtomicU64::new(0), )+
                    tick_lag: Histogram::latency(),
                    store_sync: Histogram::latency(),
                    hop_delay: Histogram::latency(),
                    hop_batch_msgs: Histogram::count(&BATCH_BUCKETS),
                }
            }
        }

        impl ShardMetrics {
            /// (metric name, kind, help, value) of every metric, for the Prometheus renderer.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![ $( ($name, $kind, $help, self.$field.load(Ordering::Relaxed)), )+ ]
            }
        }
    };
}

metrics! {
    connections_accepted: "counter", "ferry_connections_accepted_total", "Connections accepted.";
    connections_open: "gauge", "ferry_connections_open", "Connections open now.";
    connections_refused_limit: "counter", "ferry_connections_refused_limit_total", "Connections refused: node connection limit.";
    connections_refused_rate: "counter", "ferry_connections_refused_rate_total", "Connections refused: per-address connection rate.";
    connections_refused_ip_limit: "counter", "ferry_connections_refused_ip_limit_total", "Connections refused: the address holds its most open connections (ip_connections_max).";
    connections_refused_fd_limit: "counter", "ferry_connections_refused_fd_limit_total", "Connections accepted with a reserve descriptor only to be refused: the process is out of file descriptors.";
    accept_errors: "counter", "ferry_accept_errors_total", "accept() failures (e.g. EMFILE: the open-files limit is too low).";
    closes_error: "counter", "ferry_connections_closed_error_total", "Connections closed by the node with an error frame.";
    closes_protocol: "counter", "ferry_connections_closed_protocol_total", "Of those: malformed, oversized, unknown or unexpected frames.";
    closes_timeout: "counter", "ferry_connections_closed_timeout_total", "Of those: handshake, idle, slow reader or slow sender timeouts.";
    frames_in: "counter", "ferry_frames_in_total", "Frames received from clients.";
    bytes_in: "counter", "ferry_bytes_in_total", "Plaintext bytes received from clients (after TLS decryption).";
    bytes_out: "counter", "ferry_bytes_out_total", "Plaintext bytes handed to client connections (before TLS encryption).";
    packets_sent: "counter", "ferry_packets_sent_total", "Send frames received.";
    packets_delivered: "counter", "ferry_packets_delivered_total", "Packets queued to a live subscriber.";
    packets_no_subscriber: "counter", "ferry_packets_not_delivered_no_subscriber_total", "Packets answered NoSubscriber.";
    drops_send_queue_full: "counter", "ferry_drops_send_queue_full_total", "Packets dropped (and answered Congested): recipient send queue full.";
    drops_hop_queue_full: "counter", "ferry_drops_hop_queue_full_total", "Packets dropped (and answered Congested): cross-core hop queue full.";
    read_pauses_rate: "counter", "ferry_read_pauses_rate_total", "Reads paused by the per-address byte rate.";
    read_pauses_backpressure: "counter", "ferry_read_pauses_backpressure_total", "Readers held by backpressure (own replies backlogged, or a cross-core outbox over half full); each resumes when the pressure ends.";
    hops_out: "counter", "ferry_hops_out_total", "Cross-core messages sent.";
    hop_batches_out: "counter", "ferry_hop_batches_out_total", "Cross-core batches sent (one channel send each).";
    proofs_ok: "counter", "ferry_proofs_ok_total", "Ownership proofs accepted.";
    proofs_failed: "counter", "ferry_proofs_failed_total", "Ownership proofs refused (bad key, dest or signature).";
    proofs_rate_limited: "counter", "ferry_proofs_rate_limited_total", "Proofs refused unchecked (RateLimited): address over its failed-proof budget, or connection or address over its proof-check budget.";
    proofs_verified: "counter", "ferry_proofs_verified_total", "Proofs whose signature the node checked (each paid from the connection's and the address's budget).";
    proofs_cached: "counter", "ferry_proofs_cached_total", "Proofs answered Ok unchecked: the connection had verified the same proof under the same challenge.";
    subscriptions: "gauge", "ferry_subscriptions", "Forward-table entries owned by this shard.";
    store_blobs: "gauge", "ferry_store_blobs", "Blobs stored for offline recipients (live: not acked, not expired).";
    store_appends: "counter", "ferry_store_appends_total", "Blobs stored (duplicates not counted).";
    store_segments_ahead: "counter", "ferry_store_segments_made_ahead_total", "Store segments made ahead off the shard's core and taken by a roll.";
    store_segments_on_core: "counter", "ferry_store_segments_made_on_core_total", "Store segments a roll had to make on the shard's core (no spare ready: the shard waited for its creation and syncs).";
    store_segments_removed: "counter", "ferry_store_segments_removed_total", "Reclaimed store segments deleted (unlinked off the shard's core, once what they hold is synced).";
    store_segments_awaiting_removal: "gauge", "ferry_store_segments_awaiting_removal", "Reclaimed store segments whose files are not deleted yet (after a failed deletion: until the next start).";
    store_syncs: "counter", "ferry_store_syncs_total", "Store commit points that synced segments (group commits: one covers every append before it).";
    store_acks: "counter", "ferry_store_acks_total", "Stored blobs acknowledged and deleted.";
    store_expired: "counter", "ferry_store_expired_total", "Stored blobs that expired unacknowledged.";
    store_drains: "counter", "ferry_store_drains_total", "Drain requests.";
    store_refused_full: "counter", "ferry_store_refused_full_total", "Sends answered StoreFull.";
    store_refused_quota: "counter", "ferry_store_refused_quota_total", "Sends answered QuotaExceeded (per-destination quota).";
    store_refused_source_share: "counter", "ferry_store_refused_source_share_total", "Sends answered StoreFull: the sending address holds its share of the store (store_source_share_percent).";
    store_refused_source_dest_share: "counter", "ferry_store_refused_source_dest_share_total", "Sends answered QuotaExceeded: the sending address holds its share of the dest's quota (store_source_dest_share_percent).";
    store_refused_pressure: "counter", "ferry_store_refused_pressure_total", "Sends answered StoreFull: the store is above its pressure mark and the sending address holds more than the mean (store_pressure_percent).";
    store_sources: "gauge", "ferry_store_sources", "Sending addresses holding stored blobs in the in-memory source table (the overflow bucket included).";
    store_sources_overflow: "counter", "ferry_store_sources_overflow_total", "Blobs charged to the shared overflow bucket because the source table was full (store_sources_max).";
    handover_live: "counter", "ferry_handover_live_total", "Packets for a subscriber in hand-over that the store refused and that were delivered live instead.";
    store_quarantined: "counter", "ferry_store_quarantined_records_total", "Corrupt records skipped at replay.";
    service_requests: "counter", "ferry_service_requests_total", "Requests handed to the service core (prekeys, push registrations, wakes).";
    service_queue_full: "counter", "ferry_service_queue_full_total", "Requests refused (clients answered Busy, wakes dropped): service queue full.";
    push_armed: "gauge", "ferry_push_armed_dests", "Dests with push registrations this shard owns (a blob stored for one while nobody listens offers a wake).";
    push_armed_tags: "gauge", "ferry_push_armed_tags", "Dest tags of sealed push registrations (read from the journal at start-up, not yet opened by a wake) this shard still looks up; every shard holds every tag, so the node-wide sum is tags x shards.";
    media_queue_full: "counter", "ferry_media_queue_full_total", "Media requests refused (answered Busy): the owner core's media queue was full.";
    memory_bytes: "gauge", "ferry_memory_bytes", "Bytes the memory budget counts now: partial frames, connection output, hop outboxes, a base per connection (updated every tick; the mmap'd store is not counted).";
    connections_shed_memory: "counter", "ferry_connections_shed_memory_total", "Connections closed with Overloaded: the shard was over its memory budget and they held the most.";
    connections_refused_memory: "counter", "ferry_connections_refused_memory_total", "Connections refused with Overloaded: the shard was at its memory budget.";
    memory_trims: "counter", "ferry_memory_trims_total", "Times a shard asked the allocator to give freed memory back to the OS (malloc_trim).";
    drops_memory: "counter", "ferry_drops_memory_total", "Packets dropped (and answered Congested): the shard was at its memory budget.";
    puzzles_required: "counter", "ferry_puzzles_required_total", "Sends to a pressured dest answered PuzzleRequired (no valid unseen answer of the effort, no capability).";
    puzzles_valid: "counter", "ferry_puzzles_valid_total", "Puzzle answers that verified on the sender's core.";
    puzzles_invalid: "counter", "ferry_puzzles_invalid_total", "Puzzle answers that did not verify (wrong effort, solution, seed or message).";
    puzzles_rate_limited: "counter", "ferry_puzzles_rate_limited_total", "Puzzle answers not checked: connection or address over its check budget.";
    store_torn_tails: "counter", "ferry_store_torn_tails_total", "Segments whose tail was torn at replay.";
}

impl ShardMetrics {
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition (format 0.0.4) of every metric the node serves: one place
/// writes `# HELP`, `# TYPE`, samples and labels.
#[derive(Debug)]
pub struct Exposition<'a> {
    out: &'a mut String,
}

impl<'a> Exposition<'a> {
    pub fn new(out: &'a mut String) -> Exposition<'a> {
        Exposition { out }
    }

    /// `# HELP` and `# TYPE` of a metric (once per name).
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample: `name{k="v",...} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A metric with one unlabelled sample.
    pub fn scalar(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram: its header, then each series (its labels, its histogram).
    pub fn histogram(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], &Histogram)]) {
        self.header(name, "histogram", help);
        for (labels, h) in series {
            h.write(self, name, labels);
        }
    }
}

/// Declares a block of counters and gauges (relaxed atomics) with their metric names, kinds
/// and help texts, and renders them through [`Exposition`]:
///
/// ```ignore
/// ferry_shards::counters! {
///     /// What the block counts.
///     pub struct ServiceCounters {
///         prekey_uploads: "counter", "ferry_prekey_uploads_total", "Prekey uploads accepted.";
///     }
/// }
/// ```
#[macro_export]
macro_rules! counters {
    ($(#[$sm:meta])* pub struct $name:ident {
        $( $(#[$m:meta])* $field:ident : $kind:literal, $metric:literal, $help:literal; )+
    }) => {
        $(#[$sm])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$m])* pub $field: ::std::sync::atomic::AtomicU64, )+
        }

        impl $name {
            /// (metric name, kind, help, value) of every metric of the block.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![ $( (
                    $metric,
                    $kind,
                    $help,
                    self.$field.load(::std::sync::atomic::Ordering::Relaxed),
                ), )+ ]
            }

            /// Every metric of the block, unlabelled.
            pub fn render(&self, e: &mut $crate::metrics::Exposition<'_>) {
                for (name, kind, help, v) in self.snapshot() {
                    e.scalar(name, kind, help, v);
                }
            }
        }
    };
}

/// Upper bounds of the latency histograms' buckets, in microseconds (Prometheus `le`, in seconds,
/// when rendered).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];
/// Upper bounds of the push wake latency histogram's buckets, in microseconds: providers answer
/// in tens to hundreds of milliseconds, retries take seconds to minutes.
pub const WAKE_BUCKETS_US: [u64; 12] = [
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000, 60_000_000,
];
/// Upper bounds of the batch-size histograms' buckets (messages).
pub const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024];
/// The most buckets a histogram has (besides `+Inf`).
pub const HISTOGRAM_BUCKETS_MAX: usize = 16;

/// A fixed-bucket histogram one writer updates (relaxed atomics) and the admin endpoint renders:
/// latencies in microseconds (rendered in seconds), or counts.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Values are microseconds, rendered as seconds.
    micros: bool,
    /// Observations at most each bound, the one after the last bound: above them all.
    buckets: [AtomicU64; HISTOGRAM_BUCKETS_MAX + 1],
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::latency()
    }
}

impl Histogram {
    /// A latency histogram over [`LATENCY_BUCKETS_US`].
    pub fn latency() -> Histogram {
        Histogram::with_bounds(&LATENCY_BUCKETS_US, true)
    }

    /// A histogram of counts (messages, bytes) over `bounds`.
    pub fn count(bounds: &'static [u64]) -> Histogram {
        Histogram::with_bounds(bounds, false)
    }

    /// A histogram over `bounds` (ascending, at most [`HISTOGRAM_BUCKETS_MAX`]); `micros`: the
    /// values are microseconds, rendered as seconds.
    pub fn with_bounds(bounds: &'static [u64], micros: bool) -> Histogram {
        assert!(bounds.len() <= HISTOGRAM_BUCKETS_MAX && bounds.is_sorted());
        Histogram {
            bounds,
            micros,
            buckets: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// [`Histogram::observe`] of a latency in microseconds.
    pub fn observe_us(&self, us: u64) {
        self.observe(us);
    }

    /// Cumulative counts per bound (the last: all observations), and the sum.
    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let counts = self.buckets[..=self.bounds.len()]
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (counts, self.sum.load(Ordering::Relaxed))
    }

    /// The `_bucket`, `_sum` and `_count` samples of this histogram as series `name`.
    fn write(&self, e: &mut Exposition<'_>, name: &str, labels: &[(&str, &str)]) {
        let (counts, sum) = self.cumulative();
        let value = |v: u64| {
            if self.micros {
                format!("{}", v as f64 / 1e6)
            } else {
                v.to_string()
            }
        };
        let bucket = format!("{name}_bucket");
        for (i, c) in counts.iter().enumerate() {
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| value(*b));
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            e.sample(&bucket, &l, *c);
        }
        let total = counts.last().copied().unwrap_or(0);
        e.sample(&format!("{name}_sum"), labels, value(sum));
        e.sample(&format!("{name}_count"), labels, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_renders_cumulatively() {
        let h = Histogram::default();
        for us in [10, 25, 26, 900, 2_000_000] {
            h.observe_us(us);
        }
        let (counts, sum) = h.cumulative();
        assert_eq!(counts[0], 2); // le 25 µs
        assert_eq!(counts[1], 3); // le 50 µs
        assert_eq!(counts[5], 4); // le 1 ms
        assert_eq!(*counts.last().unwrap(), 5);
        assert_eq!(sum, 10 + 25 + 26 + 900 + 2_000_000);
        let mut out = String::new();
        Exposition::new(&mut out).histogram("ferry_x_seconds", "x", &[(&[("shard", "3")], &h)]);
        assert!(out.contains("ferry_x_seconds_bucket{shard=\"3\",le=\"0.000025\"} 2\n"));
        assert!(out.contains("ferry_x_seconds_bucket{shard=\"3\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("ferry_x_seconds_count{shard=\"3\"} 5\n"));
        // Counts render as they are, and without a label.
        let b = Histogram::count(&BATCH_BUCKETS);
        for n in [1, 3, 3, 700, 5_000] {
            b.observe(n);
        }
        let mut out = String::new();
        Exposition::new(&mut out).histogram("ferry_x_msgs", "x", &[(&[], &b)]);
        assert!(out.contains("ferry_x_msgs_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("ferry_x_msgs_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(
            out.contains("ferry_x_msgs_bucket{le=\"1024\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("ferry_x_msgs_bucket{le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("ferry_x_msgs_sum 5707\n"), "{out}");
    }
}
