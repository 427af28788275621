//! Login rate limiting: failed attempts per key (username, client address) in a sliding
//! window, in memory.

use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct RateLimiter {
    window: i64,
    failures: Mutex<HashMap<String, Vec<i64>>>,
}

impl RateLimiter {
    pub fn new(window_secs: i64) -> Self {
        RateLimiter {
            window: window_secs,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has fewer than `max` failures in the window ending at `now`.
    pub fn allowed(&self, key: &str, max: u32, now: i64) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(key) {
            Some(v) => {
                v.retain(|&t| t > now - self.window);
                (v.len() as u32) < max
            }
            None => true,
        }
    }

    pub fn fail(&self, key: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the memory a flood of distinct keys can take.
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, v| v.iter().any(|&t| t > now - window));
        }
        map.entry(key.to_string()).or_default().push(now);
    }

    pub fn reset(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let r = RateLimiter::new(60);
        for t in 0..3 {
            assert!(r.allowed("u", 3, t));
            r.fail("u", t);
        }
        assert!(!r.allowed("u", 3, 10));
        assert!(r.allowed("other", 3, 10));
        assert!(r.allowed("u", 3, 61));
        r.reset("u");
        assert!(r.allowed("u", 1, 10));
    }
}
