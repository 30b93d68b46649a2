//! The commit tracker: only the committed prefix moves the watermark, checked against
//! a plain model with proptest.

use std::collections::BTreeSet;

use proptest::prelude::*;
use sluice_queue::CommitTracker;

#[test]
fn only_the_committed_prefix_moves_the_watermark() {
    let mut t = CommitTracker::new(0);
    for end in [10, 20, 30] {
        t.handed_out(end);
    }
    assert_eq!(t.done(20), None, "20 done but 10 is not");
    assert_eq!(t.watermark(), 0);
    assert_eq!(t.done(10), Some(20));
    assert_eq!(t.done(99), None, "unknown token");
    assert_eq!(t.done(30), Some(30));
    assert_eq!(t.watermark(), 30);
}

/// What the tracker must report, kept the plain way: every delivery handed out as
/// its `start..end` range, and the set of those finished.
struct Model {
    start: u64,
    handed: Vec<(u64, u64)>,
    finished: BTreeSet<(u64, u64)>,
}

impl Model {
    /// The committed prefix: the end of the last of the leading finished
    /// deliveries (the start when the first is not finished).
    fn prefix(&self) -> u64 {
        self.handed
            .iter()
            .take_while(|r| self.finished.contains(r))
            .last()
            .map_or(self.start, |r| r.1)
    }

    fn unfinished(&self) -> Vec<(u64, u64)> {
        let finished = |r: &&(u64, u64)| self.finished.contains(*r);
        self.handed
            .iter()
            .filter(|r| !finished(r))
            .copied()
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// The next delivery, `gap` positions after the last one ends (offsets a
    /// compacted Kafka topic skips) and `len` positions long.
    HandOut { gap: u64, len: u64 },
    /// One of the unfinished deliveries is done.
    Finish(prop::sample::Index),
    /// A delivery already done is reported again.
    Again(prop::sample::Index),
    /// A position that ends no delivery is reported done.
    Unknown(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u64, 1..6u64).prop_map(|(gap, len)| Op::HandOut { gap, len }),
        4 => any::<prop::sample::Index>().prop_map(Op::Finish),
        1 => any::<prop::sample::Index>().prop_map(Op::Again),
        1 => (0..400u64).prop_map(Op::Unknown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Deliveries handed out in order and finished in any order, hand-outs and
    /// completions interleaved: after every step the watermark is exactly the
    /// model's committed prefix, has not moved backwards, and is not past the
    /// start of any unfinished delivery; `done` says when it moved, and to where.
    #[test]
    fn the_watermark_is_the_committed_prefix(
        start in 0..100u64,
        ops in prop::collection::vec(op(), 0..120),
        drain in prop::collection::vec(any::<prop::sample::Index>(), 120),
    ) {
        let mut t = CommitTracker::new(start);
        let mut m = Model { start, handed: Vec::new(), finished: BTreeSet::new() };
        let mut last = t.watermark();
        let mut next = start;
        let mut check = |t: &CommitTracker, m: &Model, moved: Option<u64>, what: &str| -> Result<(), TestCaseError> {
            let w = t.watermark();
            prop_assert_eq!(w, m.prefix(), "{}", what);
            prop_assert!(w >= last, "{}: the watermark went back from {} to {}", what, last, w);
            if let Some(&(s, _)) = m.unfinished().first() {
                prop_assert!(w <= s, "{}: watermark {} passes unfinished {}", what, w, s);
            }
            prop_assert_eq!(moved, (w != last).then_some(w), "{}: done's answer", what);
            last = w;
            Ok(())
        };
        let finish = |t: &mut CommitTracker, m: &mut Model, r: (u64, u64)| {
            m.finished.insert(r);
            t.done(r.1)
        };
        for op in ops {
            match op {
                Op::HandOut { gap, len } => {
                    // The first delivery starts where the tracker does.
                    let s = if m.handed.is_empty() { start } else { next + gap };
                    next = s + len;
                    m.handed.push((s, next));
                    t.handed_out(next);
                    check(&t, &m, None, "hand out")?;
                }
                Op::Finish(i) => {
                    let open = m.unfinished();
                    if !open.is_empty() {
                        let moved = finish(&mut t, &mut m, open[i.index(open.len())]);
                        check(&t, &m, moved, "finish")?;
                    }
                }
                Op::Again(i) => {
                    let done: Vec<_> = m.finished.iter().copied().collect();
                    if !done.is_empty() {
                        let moved = finish(&mut t, &mut m, done[i.index(done.len())]);
                        check(&t, &m, moved, "finish again")?;
                    }
                }
                Op::Unknown(pos) => {
                    if !m.handed.iter().any(|r| r.1 == pos) {
                        let moved = t.done(pos);
                        check(&t, &m, moved, "unknown position")?;
                    }
                }
            }
        }
        // Finishing everything left, in any order, commits all that was handed out.
        for i in drain {
            let open = m.unfinished();
            if open.is_empty() {
                break;
            }
            let moved = finish(&mut t, &mut m, open[i.index(open.len())]);
            check(&t, &m, moved, "drain")?;
        }
        prop_assert_eq!(t.watermark(), m.handed.last().map_or(start, |r| r.1));
    }
}
