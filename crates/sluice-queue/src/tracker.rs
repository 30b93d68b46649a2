//! Tracks deliveries handed out by a consumer so that commits in any order persist
//! only the fully committed prefix.

use std::collections::VecDeque;

/// Outstanding deliveries in the order they were handed out, each identified by the
/// queue position right after its last record.
#[derive(Debug, Default)]
pub struct CommitTracker {
    outstanding: VecDeque<(u64, bool)>,
    /// Everything before this position is committed.
    watermark: u64,
}

impl CommitTracker {
    pub fn new(start: u64) -> CommitTracker {
        CommitTracker {
            outstanding: VecDeque::new(),
            watermark: start,
        }
    }

    /// Records a delivery that ends at `end` (its token).
    pub fn handed_out(&mut self, end: u64) {
        debug_assert!(self.outstanding.back().is_none_or(|(e, _)| *e < end));
        self.outstanding.push_back((end, false));
    }

    /// Marks the delivery ending at `end` done; returns the new watermark if it moved.
    pub fn done(&mut self, end: u64) -> Option<u64> {
        let i = self.outstanding.partition_point(|(e, _)| *e < end);
        match self.outstanding.get_mut(i) {
            Some((e, done)) if *e == end => *done = true,
            _ => return None,
        }
        let before = self.watermark;
        while let Some(&(e, true)) = self.outstanding.front() {
            self.watermark = e;
            self.outstanding.pop_front();
        }
        (self.watermark != before).then_some(self.watermark)
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }
}
