//! Microsoft's clock as seen through `Date` headers. Coverage bounds come from it, never from our
//! own clock, so a skewed host cannot claim coverage of time Microsoft has not reached.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct MicrosoftClock {
    known: AtomicBool,
    /// Microsoft's time minus ours, in milliseconds, from the latest `Date`.
    offset_ms: AtomicI64,
    latest_date: AtomicI64,
}

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl MicrosoftClock {
    /// Records a `Date` header (Unix seconds).
    pub fn observe(&self, date_secs: i64) {
        // `Date` is truncated to the second, so this estimate runs up to 1 s behind: the safe side.
        self.offset_ms
            .store(date_secs * 1000 - local_ms(), Ordering::Relaxed);
        self.latest_date.fetch_max(date_secs, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
    }

    /// Microsoft's current time in whole seconds, once a `Date` was seen.
    pub fn now_secs(&self) -> Option<i64> {
        if !self.known.load(Ordering::Acquire) {
            return None;
        }
        Some((local_ms() + self.offset_ms.load(Ordering::Relaxed)).div_euclid(1000))
    }

    /// The latest `Date` Microsoft sent (D in the lag formula).
    pub fn latest(&self) -> Option<i64> {
        if !self.known.load(Ordering::Acquire) {
            return None;
        }
        Some(self.latest_date.load(Ordering::Relaxed))
    }
}
