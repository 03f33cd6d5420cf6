//! A request budget per (tenant, API family): a token bucket at Microsoft's documented rate, plus
//! the "blocked until" that a 429's `Retry-After` imposes on every request of that family.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The share of Microsoft's documented limit a budget uses.
const HEADROOM: f64 = 0.95;

pub struct Budget {
    per_second: f64,
    capacity: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Budget {
    /// At most `per_minute` requests in any 60 s window: a burst of a tenth of that, refilled
    /// so that burst plus a minute's refill never exceeds the limit (Microsoft counts per
    /// sliding minute, so a full-minute burst followed by the full rate would invite a 429).
    pub fn per_minute(per_minute: u32) -> Self {
        // Microsoft counts by when a request arrives, we by when it leaves: network and
        // scheduling jitter can bunch our sends, so keep 5% of the limit as headroom.
        let per_minute = (f64::from(per_minute.max(2)) * HEADROOM).max(2.0);
        let capacity = (per_minute / 10.0).floor().max(1.0);
        Self {
            per_second: (per_minute - capacity) / 60.0,
            capacity,
            state: Mutex::new(State {
                tokens: capacity,
                last: Instant::now(),
                blocked_until: None,
            }),
        }
    }

    /// Waits until a request may be sent, then takes its token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = match self.state.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let now = Instant::now();
                let refill = now.duration_since(s.last).as_secs_f64() * self.per_second;
                s.tokens = (s.tokens + refill).min(self.capacity);
                s.last = now;
                match s.blocked_until {
                    Some(until) if until > now => until - now,
                    _ if s.tokens >= 1.0 => {
                        s.tokens -= 1.0;
                        return;
                    }
                    // At least the timer's resolution: a wait it rounds to nothing would
                    // refill nothing and spin.
                    _ => Duration::from_secs_f64((1.0 - s.tokens) / self.per_second)
                        .max(Duration::from_millis(1)),
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Microsoft said "retry after `d`": nobody of this family sends before then.
    pub fn block_for(&self, d: Duration) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let until = Instant::now() + d;
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Remaining whole requests right now (for deciding whether reconciliation may run).
    pub fn available(&self) -> f64 {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let refill = Instant::now().duration_since(s.last).as_secs_f64() * self.per_second;
        (s.tokens + refill).min(self.capacity)
    }

    /// How long a `Retry-After` still keeps this family from sending, if it does.
    pub fn blocked_for(&self) -> Option<Duration> {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.blocked_until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_minute_ever_holds_more_than_the_limit() {
        let b = Budget::per_minute(60);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..130 {
            b.acquire().await;
            sent.push(start.elapsed());
        }
        // A tenth of the budget (57 after the headroom) goes at once.
        assert!(sent[4] < Duration::from_millis(10), "a burst goes at once");
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 60,
                "{in_window} requests in the minute from {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_everyone() {
        let b = Budget::per_minute(600);
        b.block_for(Duration::from_millis(2500));
        let start = Instant::now();
        b.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(2500));
    }
}
