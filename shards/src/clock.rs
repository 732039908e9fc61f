//! The one place the data plane reads the clock. Everything else takes [`Now`] as an input.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_proto::conn::Now;

/// Monotonic milliseconds since start, and Unix seconds shifted by a fixed offset. The offset is
/// the injected clock of tests (and of an operator whose wall clock is known to be off); it is
/// zero by default.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    unix_offset_s: i64,
}

impl Clock {
    pub fn new(unix_offset_s: i64) -> Self {
        Clock {
            origin: Instant::now(),
            unix_offset_s,
        }
    }

    pub fn now(&self) -> Now {
        let mono_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let unix_s = u64::try_from(i128::from(unix) + i128::from(self.unix_offset_s)).unwrap_or(0);
        Now { mono_ms, unix_s }
    }
}
