//! The one poison-tolerant lock of the daemon.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it. Nothing the daemon does under its
//! locks panics (datastore operations, counters, queues); if something ever did, keeping the data is better than
//! failing every later request on the poison, so the guard is taken back from the poison error.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poison (see the module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(7));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
