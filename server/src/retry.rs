//! The one way to try something again: a cap on attempts and an
//! exponential backoff with full jitter between them (each wait is drawn
//! from zero to the current ceiling, so shards that failed together do not
//! retry together). Every retry loop of the node uses it, with a policy
//! named in `crate::limits`.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts_max: u32,
    /// The ceiling of the first wait; it doubles after each attempt...
    pub backoff_first: Duration,
    /// ... up to this.
    pub backoff_max: Duration,
}

/// How a retried operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T, E> {
    Done(T),
    /// An error not worth retrying.
    Failed(E),
    /// Every attempt failed with a retryable error; the last one.
    GaveUp(E),
}

impl Retry {
    /// The longest `run` can wait in all (the sum of every ceiling).
    pub fn wait_max(&self) -> Duration {
        (0..self.attempts_max.saturating_sub(1)).map(|n| self.ceiling(n)).sum()
    }

    fn ceiling(&self, retry: u32) -> Duration {
        let doubled = self.backoff_first.saturating_mul(1 << retry.min(20));
        doubled.min(self.backoff_max)
    }

    /// Runs `attempt` until it succeeds, fails with an error `retryable`
    /// refuses, or `attempts_max` attempts failed; waits between attempts.
    pub async fn run<T, E, F: Future<Output = Result<T, E>>>(
        &self,
        mut attempt: impl FnMut() -> F,
        retryable: impl Fn(&E) -> bool,
    ) -> Outcome<T, E> {
        assert!(self.attempts_max >= 1 && self.backoff_first <= self.backoff_max);
        let mut retry = 0;
        loop {
            match attempt().await {
                Ok(value) => return Outcome::Done(value),
                Err(error) if !retryable(&error) => return Outcome::Failed(error),
                Err(error) if retry + 1 >= self.attempts_max => return Outcome::GaveUp(error),
                Err(_) => {
                    glommio::timer::sleep(jitter(self.ceiling(retry))).await;
                    retry += 1;
                }
            }
        }
    }
}

impl Retry {
    /// `run` for a thread that may block (the main thread at start).
    pub fn run_blocking<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<T, E>,
        retryable: impl Fn(&E) -> bool,
    ) -> Outcome<T, E> {
        assert!(self.attempts_max >= 1 && self.backoff_first <= self.backoff_max);
        let mut retry = 0;
        loop {
            match attempt() {
                Ok(value) => return Outcome::Done(value),
                Err(error) if !retryable(&error) => return Outcome::Failed(error),
                Err(error) if retry + 1 >= self.attempts_max => return Outcome::GaveUp(error),
                Err(_) => {
                    std::thread::sleep(jitter(self.ceiling(retry)));
                    retry += 1;
                }
            }
        }
    }
}

/// A wait drawn uniformly from zero to `ceiling` (xorshift, per thread:
/// waits need spread, not secrecy).
fn jitter(ceiling: Duration) -> Duration {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    let draw = STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    });
    let nanos = ceiling.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { draw % (nanos + 1) })
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failed draw leaves a fixed seed: the spread is then the same on
    // every thread, which is still a spread.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const POLICY: Retry = Retry {
        attempts_max: 4,
        backoff_first: Duration::from_micros(100),
        backoff_max: Duration::from_micros(250),
    };

    /// Runs the future `make` builds on an executor of its own.
    fn run<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::default().spawn(make).unwrap().join().unwrap()
    }

    #[test]
    fn waits_are_capped_and_jittered() {
        assert_eq!(POLICY.ceiling(0), Duration::from_micros(100));
        assert_eq!(POLICY.ceiling(1), Duration::from_micros(200));
        assert_eq!(POLICY.ceiling(2), Duration::from_micros(250));
        assert_eq!(POLICY.wait_max(), Duration::from_micros(550));
        let draws: Vec<Duration> = (0..64).map(|_| jitter(Duration::from_millis(1))).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(1)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "waits vary");
    }

    /// Runs `POLICY` over attempts that fail with `errors[n]` (then succeed
    /// with the attempt's number); returns the outcome and the attempts made.
    fn attempts(
        errors: &'static [&'static str],
        final_error: Option<&'static str>,
    ) -> (Outcome<usize, &'static str>, usize) {
        run(move || async move {
            let tries = Cell::new(0);
            let outcome = POLICY
                .run(
                    || {
                        tries.set(tries.get() + 1);
                        let n = tries.get();
                        async move { errors.get(n - 1).map_or(Ok(n), |e| Err(*e)) }
                    },
                    |e| Some(*e) != final_error,
                )
                .await;
            (outcome, tries.get())
        })
    }

    #[test]
    fn retries_until_done_or_capped_and_stops_at_a_final_error() {
        assert_eq!(attempts(&["busy", "busy"], None), (Outcome::Done(3), 3));
        let always = &["busy"; 10];
        assert_eq!(attempts(always, None), (Outcome::GaveUp("busy"), 4), "the cap ends it");
        assert_eq!(attempts(&["closed"], Some("closed")), (Outcome::Failed("closed"), 1));
    }

    #[test]
    fn blocking_retries_follow_the_same_policy() {
        let mut tries = 0;
        let outcome = POLICY.run_blocking(
            || {
                tries += 1;
                if tries < 2 { Err("busy") } else { Ok(tries) }
            },
            |_| true,
        );
        assert_eq!(outcome, Outcome::Done(2));
        let outcome = POLICY.run_blocking(|| Err::<(), _>("busy"), |_| true);
        assert_eq!(outcome, Outcome::GaveUp("busy"));
    }
}
