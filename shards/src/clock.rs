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
    #[allow(clippy::disallowed_methods)] // The one place the data plane reads the clock.
    pub fn new(unix_offset_s: i64) -> Self {
        Clock {
            origin: Instant::now(),
            unix_offset_s,
        }
    }

    /// Monotonic microseconds since start: for measuring short intervals (latency histograms).
    pub fn elapsed_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros())
            .expect("microseconds since start fit a u64 (584 thousand years)")
    }

    /// Panics when the wall clock, shifted by the offset, reads before 1970: every expiry, epoch
    /// and challenge would be wrong, and reading 0 instead hid that.
    #[allow(clippy::disallowed_methods)] // The one place the data plane reads the clock.
    pub fn now(&self) -> Now {
        let mono_ms = u64::try_from(self.origin.elapsed().as_millis())
            .expect("milliseconds since start fit a u64 (584 million years)");
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the wall clock reads after 1970")
            .as_secs();
        let unix_s = unix
            .checked_add_signed(self.unix_offset_s)
            .expect("the wall clock shifted by clock_offset_s reads after 1970");
        Now { mono_ms, unix_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_shifts_the_wall_clock() {
        let base = Clock::new(0).now().unix_s;
        let shifted = Clock::new(-3_600).now().unix_s;
        assert!((base - 3_601..=base - 3_600 + 1).contains(&shifted));
    }

    /// An offset that takes the clock before 1970 used to read as 0 (the epoch) without a word.
    #[test]
    #[should_panic(expected = "clock_offset_s")]
    fn an_offset_before_1970_is_refused() {
        let _ = Clock::new(i64::MIN).now();
    }
}
