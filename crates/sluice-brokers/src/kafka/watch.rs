//! The group watch: a thread beside each consumer that measures the group's lag
//! (the queue depth sluice reports) and rejoins the group when partitions with a
//! backlog have stopped moving while no rebalance hands them to anyone.
//!
//! Every `interval` it reads, for each partition of the topic, the group's committed
//! offset and the high watermark: lag = high watermark − committed (or − the low
//! watermark when nothing is committed), and their sum is the depth.
//!
//! A partition that is not this member's, has a lag, and whose committed offset has
//! not moved for `stall_after` is *stalled*. On Apache Kafka that only happens while
//! the member owning it cannot deliver (its sink is down) — the coordinator itself
//! takes a dead member's partitions away within a session timeout. Some
//! Kafka-compatible brokers do not: tansu 0.6.0 drops a member whose session expired
//! without starting a new generation, and a rejoin in the same generation gets the
//! old assignment back, so a SIGKILLed processor's partitions are never consumed
//! again. Against that, a member seeing a stalled partition leaves the group and
//! joins it again (`unsubscribe` + `subscribe`: a LeaveGroup, then a JoinGroup as a
//! new member), which every coordinator answers with a new generation and a full
//! assignment. Its own deliveries are committed by the revoke like in any
//! rebalance. Where the owner is merely slow this costs one rebalance per
//! `stall_after`, no data.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

/// What one look at the group found, per partition: (committed offset, lag).
type Positions = HashMap<i32, (i64, u64)>;

/// Stops the watch thread when dropped.
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts watching `consumer`'s group on `topic`; the depth goes to `depth`. The
/// watch holds the consumer only while it looks, so that dropping the last handle
/// elsewhere closes it (leaving the group).
pub(super) fn start<C: ConsumerContext + 'static>(
    consumer: Weak<StreamConsumer<C>>,
    topic: Arc<str>,
    group: String,
    interval: Duration,
    stall_after: Duration,
    depth: Arc<AtomicU64>,
) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let watch = Watch { stop: stop.clone() };
    let spawned = std::thread::Builder::new()
        .name("kafka-group-watch".into())
        .spawn(move || {
            let mut stalls = Stalls::default();
            while sleep_unless_stopped(&stop, interval) {
                let Some(consumer) = consumer.upgrade() else {
                    return;
                };
                let positions = match look(&consumer, &topic, interval) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(%group, error = %e, "kafka group watch: no answer");
                        continue;
                    }
                };
                depth.store(
                    positions.values().map(|(_, lag)| lag).sum(),
                    Ordering::Relaxed,
                );
                let mine = assigned(&consumer, &topic);
                let stalled = stalls.update(&positions, &mine, Instant::now(), stall_after);
                if stalled.is_empty() {
                    continue;
                }
                tracing::warn!(
                    %group,
                    partitions = ?stalled,
                    after = ?stall_after,
                    "kafka partitions with a backlog have not moved and are not this member's: \
                     leaving and rejoining the group to force a rebalance"
                );
                consumer.unsubscribe();
                if let Err(e) = consumer.subscribe(&[&topic]) {
                    tracing::error!(%group, error = %e, "kafka: subscribing again failed");
                }
                stalls = Stalls::default();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "kafka group watch not started: no thread");
    }
    watch
}

/// Sleeps `total` in short steps; false once `stop` is set.
fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) -> bool {
    let end = Instant::now() + total;
    while !stop.load(Ordering::Acquire) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}

/// Committed offset and lag of every partition of `topic` (blocking calls).
fn look<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Positions, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut positions = HashMap::with_capacity(partitions.len());
    for e in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let committed = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        let lag = (high - committed.max(low)).max(0) as u64;
        positions.insert(e.partition(), (committed, lag));
    }
    Ok(positions)
}

/// The partitions of `topic` assigned to this member.
fn assigned<C: ConsumerContext>(consumer: &StreamConsumer<C>, topic: &str) -> HashSet<i32> {
    consumer
        .assignment()
        .map(|tpl| {
            tpl.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        })
        .unwrap_or_default()
}

/// Since when each partition that is not ours has had a backlog and the same
/// committed offset.
#[derive(Default)]
struct Stalls {
    since: HashMap<i32, (i64, Instant)>,
}

impl Stalls {
    /// Updates the record with one look; returns the partitions stalled for at least
    /// `stall_after`, sorted.
    fn update(
        &mut self,
        positions: &Positions,
        mine: &HashSet<i32>,
        now: Instant,
        stall_after: Duration,
    ) -> Vec<i32> {
        self.since.retain(|p, _| positions.contains_key(p));
        let mut stalled = Vec::new();
        for (&p, &(committed, lag)) in positions {
            if lag == 0 || mine.contains(&p) {
                self.since.remove(&p);
                continue;
            }
            let entry = self.since.entry(p).or_insert((committed, now));
            if entry.0 != committed {
                *entry = (committed, now);
            } else if now.duration_since(entry.1) >= stall_after {
                stalled.push(p);
            }
        }
        stalled.sort_unstable();
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_others_partitions_with_a_backlog_and_no_progress_stall() {
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let mut s = Stalls::default();
        let mine: HashSet<i32> = [0].into();
        // p0 is ours, p1 has no backlog, p2 and p3 have one.
        let look = |c2: i64, c3: i64| -> Positions {
            [(0, (5, 9)), (1, (7, 0)), (2, (c2, 4)), (3, (c3, 4))].into()
        };
        assert!(s.update(&look(10, 20), &mine, t0, after).is_empty());
        // p3 moves on, p2 does not.
        let t1 = t0 + Duration::from_secs(6);
        assert!(s.update(&look(10, 21), &mine, t1, after).is_empty());
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(s.update(&look(10, 22), &mine, t2, after), vec![2]);
        // Once p2 moves, its clock starts over.
        let t3 = t0 + Duration::from_secs(12);
        assert!(s.update(&look(11, 22), &mine, t3, after).is_empty());
        // p3 stopped moving at t2, p2 at t3.
        let t4 = t3 + after;
        assert_eq!(s.update(&look(11, 22), &mine, t4, after), vec![2, 3]);
    }
}
