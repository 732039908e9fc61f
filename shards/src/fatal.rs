//! Fail-stop. A condition after which the node may not promise anything more (a failed fsync,
//! a store that cannot open, a service core that died) is reported here by the thread that met
//! it, which then stops where it is; `main` waits for the report beside the signals, logs it
//! (through `tracing`, JSON when configured) and exits 1. No other thread ends the process.

use std::sync::{Arc, Mutex, OnceLock};

/// The node's one fail-stop report; shared by every thread.
#[derive(Default)]
pub struct FatalStop {
    /// The first condition reported (later ones are logged to stderr only).
    reason: Mutex<Option<String>>,
    /// What wakes `main` from its wait for signals.
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for FatalStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatalStop")
            .field("reason", &self.reason())
            .finish_non_exhaustive()
    }
}

impl FatalStop {
    pub fn new() -> Arc<FatalStop> {
        Arc::new(FatalStop::default())
    }

    /// Sets what wakes `main` when a report comes (once; later calls are ignored). A report
    /// made before is not lost: `main` looks at [`FatalStop::reason`] before it waits.
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.waker.set(Box::new(wake));
    }

    /// Reports `why` (the first report is the one `main` logs) and wakes `main`. It goes to
    /// stderr at once as well, in case `main` cannot log it any more.
    pub fn report(&self, why: impl Into<String>) {
        let why = why.into();
        eprintln!("ferry: fatal: {why}");
        {
            let mut r = self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.is_none() {
                *r = Some(why);
            }
        }
        if let Some(wake) = self.waker.get() {
            wake();
        }
    }

    /// Reports `why` and stops the calling thread for good: it answers nothing more, and
    /// `main` ends the process.
    pub fn stop_here(&self, why: impl Into<String>) -> ! {
        self.report(why);
        loop {
            std::thread::park();
        }
    }

    /// The condition that stops the node, once one was reported.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_first_report_wins_and_every_report_wakes_main() {
        let f = FatalStop::new();
        assert_eq!(f.reason(), None);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        f.set_waker(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        f.report("store fsync failed");
        f.report("service journal sync failed");
        assert_eq!(f.reason().as_deref(), Some("store fsync failed"));
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // A real thread: a deadline in real time.
    fn a_thread_that_stops_here_reports_and_never_returns() {
        let f = FatalStop::new();
        let g = f.clone();
        let _parked = std::thread::spawn(move || g.stop_here("shard 0: store cannot open"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while f.reason().is_none() {
            assert!(std::time::Instant::now() < deadline, "never reported");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(f.reason().as_deref(), Some("shard 0: store cannot open"));
    }
}
