//! Backoff delays grow and are capped.

use std::time::Duration;

use sluice_pipeline::Backoff;

#[test]
fn grows_and_is_capped() {
    let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
    let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
    assert!(delays[0] <= Duration::from_millis(10));
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
    assert!(delays[11] >= Duration::from_millis(50), "{delays:?}");
    assert_eq!(b.attempts(), 12);
}
