//! The Kafka [`Consumer`]: one member of a consumer group, committing per partition
//! only the prefix of records whose deliveries are all done.
//!
//! Records received from librdkafka go into a small buffer before they are handed
//! out, so a poll dropped mid-way loses nothing: the next poll hands them out. One
//! poll receives at a time (the `receiving` lock), so the buffer holds each
//! partition's records in offset order, and deliveries are registered with the
//! per-partition [`CommitTracker`]s in that order.
//!
//! When partitions are revoked (a rebalance, or the consumer closing) the context
//! commits their done prefix synchronously, drops their buffered records and forgets
//! their trackers: commits of deliveries from them are ignored afterwards, and the
//! member that gets them next redelivers whatever was not committed.
//!
//! librdkafka runs that callback inside a poll, so a rebalance blocks the polling
//! task for one commit round trip (up to `session.timeout.ms` when the coordinator is
//! away). Creating a consumer needs a Tokio runtime (rdkafka spawns a wake-up task).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_core::{BoxFuture, ConsumeError, Consumer, Delivery, Event};

use super::record::{decode_records, quarantine};
use sluice_queue::CommitTracker;

/// A member of the consumer group named like the sluice consumer.
pub(super) struct KafkaConsumer {
    /// `Some` until dropped: the drop (leaving the group) blocks, so it is moved to a
    /// blocking thread.
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    state: Arc<Mutex<GroupState>>,
    topic: Arc<str>,
    /// Held by the one poll that receives records.
    receiving: tokio::sync::Mutex<()>,
    /// Measures the lag and repairs a group stuck without a rebalance.
    watch: Option<super::watch::Watch>,
    /// Where the drop leaves word that the close (leaving the group) is done; the
    /// queue's close waits for it.
    closing: Closing,
}

/// Closes of dropped consumers in progress, each done when its sender is dropped.
pub(super) type Closing = Arc<Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>>;

/// What this member handed out and what is done, shared with the rebalance callback.
#[derive(Default)]
struct GroupState {
    /// Received, not yet handed out, in receive order.
    buffer: VecDeque<Received>,
    /// Events (and quarantine events) in `buffer`.
    buffered_events: usize,
    /// Assigned partitions that have handed out records since their assignment.
    partitions: HashMap<i32, PartitionState>,
    /// Deliveries not yet committed: per partition, the tracker's epoch and the
    /// offset right after the delivery's last record there.
    deliveries: HashMap<u64, Vec<(i32, u64, u64)>>,
    /// Per partition, the offset after the last record received: a record below it
    /// was fetched twice and is dropped, so each partition is handed out in order.
    received_end: HashMap<i32, i64>,
    next_token: u64,
    next_epoch: u64,
}

struct Received {
    partition: i32,
    offset: i64,
    /// The record's events (one, or a batch record's), or for a record that is not
    /// sluice's as it stands, its quarantine event and the reason (to the dead-letter
    /// sink, never the main one).
    events: Result<Vec<Event>, (Event, String)>,
}

struct PartitionState {
    /// Tells trackers of successive assignments of the same partition apart.
    epoch: u64,
    /// Positions are Kafka offsets; a delivery's is the offset after its last record.
    tracker: CommitTracker,
    /// The offset to commit (the done prefix's end) once something is done.
    done_end: Option<u64>,
}

impl GroupState {
    /// Hands out buffered records as one delivery of about `max` events: whole
    /// records, so a batch record may pass `max` (`None` when nothing was buffered).
    /// Records that are not events go in its `unreadable`: the processor
    /// dead-letters them and they commit with the delivery.
    fn hand_out(&mut self, max: usize) -> Option<Delivery> {
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        // Per partition: first offset and end, in the order first seen.
        let mut ranges: Vec<(i32, u64, u64)> = Vec::new();
        while events.len() + unreadable.len() < max {
            let Some(r) = self.buffer.pop_front() else {
                break;
            };
            debug_assert!(r.offset >= 0, "a consumed record has an offset");
            let offset = r.offset as u64;
            match ranges.iter_mut().find(|(p, _, _)| *p == r.partition) {
                Some((_, _, end)) => *end = offset + 1,
                None => ranges.push((r.partition, offset, offset + 1)),
            }
            match r.events {
                Ok(mut es) => {
                    self.buffered_events -= es.len();
                    events.append(&mut es);
                }
                Err(q) => {
                    self.buffered_events -= 1;
                    unreadable.push(q);
                }
            }
        }
        if ranges.is_empty() {
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        let mut entries = Vec::with_capacity(ranges.len());
        for (partition, first, end) in ranges {
            let next_epoch = &mut self.next_epoch;
            let p = self.partitions.entry(partition).or_insert_with(|| {
                *next_epoch += 1;
                PartitionState {
                    epoch: *next_epoch,
                    tracker: CommitTracker::new(first),
                    done_end: None,
                }
            });
            p.tracker.handed_out(end);
            entries.push((partition, p.epoch, end));
        }
        self.deliveries.insert(token, entries);
        let mut delivery = Delivery::new(events, token);
        delivery.unreadable = unreadable;
        Some(delivery)
    }

    /// Marks delivery `token` done; returns the partitions whose done prefix moved,
    /// with the offset to commit. Tokens of revoked partitions are ignored.
    fn done(&mut self, token: u64) -> Vec<(i32, u64)> {
        let Some(entries) = self.deliveries.remove(&token) else {
            return Vec::new();
        };
        let mut moved = Vec::new();
        for (partition, epoch, end) in entries {
            let Some(p) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if p.epoch != epoch {
                continue;
            }
            if let Some(to) = p.tracker.done(end) {
                p.done_end = Some(to);
                moved.push((partition, to));
            }
        }
        moved
    }

    /// Every partition's done prefix, for a flush.
    fn done_prefixes(&self) -> Vec<(i32, u64)> {
        self.partitions
            .iter()
            .filter_map(|(&p, s)| Some((p, s.done_end?)))
            .collect()
    }

    /// Buffers a received record unless it was received already. Returns how many
    /// events are buffered.
    fn receive(&mut self, r: Received) -> usize {
        let end = self.received_end.entry(r.partition).or_insert(r.offset);
        if r.offset >= *end {
            *end = r.offset + 1;
            self.buffered_events += r.events.as_ref().map_or(1, Vec::len);
            self.buffer.push_back(r);
        } else {
            tracing::debug!(
                partition = r.partition,
                offset = r.offset,
                "dropping a kafka record fetched twice"
            );
        }
        self.buffered_events
    }

    /// Forgets revoked partitions; returns their done prefixes to commit.
    fn revoke(&mut self, revoked: &[i32]) -> Vec<(i32, u64)> {
        self.buffer.retain(|r| !revoked.contains(&r.partition));
        self.buffered_events = self
            .buffer
            .iter()
            .map(|r| r.events.as_ref().map_or(1, Vec::len))
            .sum();
        self.received_end.retain(|p, _| !revoked.contains(p));
        revoked
            .iter()
            .filter_map(|p| Some((*p, self.partitions.remove(p)?.done_end?)))
            .collect()
    }
}

fn offsets_list(topic: &str, offsets: &[(i32, u64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset as i64))
            .expect("a non-negative offset is valid");
    }
    tpl
}

/// Commits the done prefix of revoked partitions before they go to another member,
/// and reports librdkafka's log lines and errors through `tracing`.
pub(super) struct GroupContext {
    state: Arc<Mutex<GroupState>>,
    topic: Arc<str>,
    group: String,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        super::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::client_error(Some(&self.group), &error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let offsets = lock(&self.state).revoke(&revoked);
        tracing::debug!(group = %self.group, ?revoked, committing = offsets.len(), "kafka partitions revoked");
        if offsets.is_empty() {
            return;
        }
        // Synchronous: the next owner must see these offsets. Rebalances are rare;
        // see the module docs for what this blocks.
        if let Err(e) = consumer.commit(&offsets_list(&self.topic, &offsets), CommitMode::Sync) {
            tracing::warn!(group = %self.group, error = %e, "committing revoked partitions failed; they will be redelivered");
        }
    }

    fn commit_callback(&self, result: Result<(), KafkaError>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(group = %self.group, error = %e, "kafka offset commit failed; a later commit or a redelivery covers it");
        }
    }
}

fn lock(state: &Mutex<GroupState>) -> MutexGuard<'_, GroupState> {
    state.lock().expect("kafka consumer state lock poisoned")
}

impl KafkaConsumer {
    /// Joins `group` on `topic`; the group watch (see the `watch` module) looks every
    /// `watch_interval` and writes the group's lag to `depth`.
    pub(super) fn new(
        config: &rdkafka::ClientConfig,
        topic: &str,
        group: &str,
        watch_interval: Duration,
        depth: Arc<std::sync::atomic::AtomicU64>,
        closing: Closing,
    ) -> Result<KafkaConsumer, KafkaError> {
        let state = Arc::new(Mutex::new(GroupState::default()));
        let topic: Arc<str> = Arc::from(topic);
        let context = GroupContext {
            state: state.clone(),
            topic: topic.clone(),
            group: group.to_string(),
        };
        let consumer: StreamConsumer<GroupContext> = config.create_with_context(context)?;
        consumer.subscribe(&[&topic])?;
        let consumer = Arc::new(consumer);
        let watch = super::watch::start(
            Arc::downgrade(&consumer),
            topic.clone(),
            group.to_string(),
            watch_interval,
            watch_interval * 3,
            depth,
        );
        Ok(KafkaConsumer {
            consumer: Some(consumer),
            state,
            topic,
            receiving: tokio::sync::Mutex::new(()),
            watch: Some(watch),
            closing,
        })
    }

    fn consumer(&self) -> &Arc<StreamConsumer<GroupContext>> {
        self.consumer.as_ref().expect("only taken by drop")
    }

    fn buffer(&self, message: &BorrowedMessage<'_>) -> usize {
        let events = match decode_records(message) {
            Ok(es) => Ok(es),
            Err(e) => {
                tracing::error!(
                    topic = %self.topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %e,
                    "unreadable kafka record, quarantined to the dead-letter sink"
                );
                let reason = format!(
                    "unreadable kafka record {}/{}@{}: {e}",
                    self.topic,
                    message.partition(),
                    message.offset()
                );
                Err((quarantine(message), reason))
            }
        };
        lock(&self.state).receive(Received {
            partition: message.partition(),
            offset: message.offset(),
            events,
        })
    }

    fn commit_async(&self, offsets: &[(i32, u64)]) -> Result<(), ConsumeError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.consumer()
            .commit(&offsets_list(&self.topic, offsets), CommitMode::Async)
            .map_err(|e| ConsumeError::Backend {
                message: format!("committing kafka offsets failed: {e}"),
            })
    }
}

impl Consumer for KafkaConsumer {
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + max_wait;
            let max = max_events.max(1);
            let Ok(_receiving) = tokio::time::timeout_at(deadline, self.receiving.lock()).await
            else {
                return Ok(None);
            };
            let mut failure = None;
            let mut buffered = lock(&self.state).buffered_events;
            while buffered < max {
                // `recv` is cancel-safe, and a received record is buffered before the
                // next await: a dropped poll leaves its records for the next one.
                match tokio::time::timeout_at(deadline, self.consumer().recv()).await {
                    Err(_elapsed) => break,
                    Ok(Ok(message)) => buffered = self.buffer(&message),
                    Ok(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let delivery = lock(&self.state).hand_out(max);
            match (delivery, failure) {
                (Some(d), _) => Ok(Some(d)),
                (None, Some(e)) => Err(ConsumeError::Backend {
                    message: format!("kafka consumer: {e}"),
                }),
                (None, None) => Ok(None),
            }
        })
    }

    fn commit(&self, token: u64) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let moved = lock(&self.state).done(token);
        Box::pin(std::future::ready(self.commit_async(&moved)))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let offsets = lock(&self.state).done_prefixes();
        let consumer = self.consumer().clone();
        let tpl = offsets_list(&self.topic, &offsets);
        Box::pin(async move {
            if offsets.is_empty() {
                return Ok(());
            }
            sluice_core::blocking::run(sluice_core::blocking::Kind::KafkaCommit, move || {
                consumer.commit(&tpl, CommitMode::Sync)
            })
            .await
            .map_err(|e| ConsumeError::Backend {
                message: e.to_string(),
            })?
            .map_err(|e| ConsumeError::Backend {
                message: format!("committing kafka offsets failed: {e}"),
            })
        })
    }
}

impl Drop for KafkaConsumer {
    /// Closing commits the done prefix (the revoke callback) and leaves the group, so
    /// the others get its partitions at once rather than after a session timeout;
    /// with the brokers away librdkafka waits until they are back. So it happens on a
    /// thread of its own, which neither blocks the caller nor keeps a runtime's
    /// shutdown waiting (as a `spawn_blocking` task would); [`Queue::close`] waits
    /// for it, bounded.
    ///
    /// [`Queue::close`]: sluice_core::Queue::close
    fn drop(&mut self) {
        // The watch lets go of the consumer first: the last handle's drop closes it.
        drop(self.watch.take());
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (done, closed) = tokio::sync::oneshot::channel::<()>();
        lock_closing(&self.closing).push(closed);
        // Should no thread be had, the failed spawn drops the closure, and so the
        // consumer, right here.
        let _ = std::thread::Builder::new()
            .name("kafka-consumer-close".into())
            .spawn(move || {
                drop(consumer);
                drop(done);
            });
    }
}

fn lock_closing(closing: &Closing) -> MutexGuard<'_, Vec<tokio::sync::oneshot::Receiver<()>>> {
    closing.lock().expect("kafka closing lock poisoned")
}

/// Waits, until `deadline`, for the closes of dropped consumers.
pub(super) async fn wait_closed(closing: &Closing, deadline: tokio::time::Instant) {
    let pending = std::mem::take(&mut *lock_closing(closing));
    for closed in pending {
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            tracing::warn!("a kafka consumer did not leave its group in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(state: &mut GroupState, partition: i32, offsets: std::ops::Range<i64>) {
        for offset in offsets {
            let event = Event::new("s", format!("{partition}/{offset}"));
            state.receive(Received {
                partition,
                offset,
                events: Ok(vec![event]),
            });
        }
    }

    #[test]
    fn commits_only_the_contiguous_done_prefix_per_partition() {
        let mut s = GroupState::default();
        receive(&mut s, 0, 0..3);
        receive(&mut s, 1, 10..12);
        let a = s.hand_out(4).unwrap(); // p0: 0..3, p1: 10
        let b = s.hand_out(4).unwrap(); // p1: 11
        assert_eq!(a.events.len(), 4);
        assert_eq!(b.events.len(), 1);
        receive(&mut s, 0, 3..5);
        let c = s.hand_out(10).unwrap(); // p0: 3..5
        assert_eq!(s.done(c.token), vec![], "p0 waits for a");
        assert_eq!(s.done(b.token), vec![], "p1 waits for a");
        let mut moved = s.done(a.token);
        moved.sort_unstable();
        assert_eq!(moved, vec![(0, 5), (1, 12)], "last done + 1");
        assert_eq!(s.done(a.token), vec![], "a token counts once");
    }

    #[test]
    fn deliveries_of_revoked_partitions_are_forgotten() {
        let mut s = GroupState::default();
        receive(&mut s, 0, 0..2);
        let a = s.hand_out(1).unwrap();
        let b = s.hand_out(1).unwrap();
        assert_eq!(s.done(a.token), vec![(0, 1)]);
        receive(&mut s, 0, 2..3);
        assert_eq!(s.revoke(&[0]), vec![(0, 1)], "the done prefix, once");
        assert!(s.buffer.is_empty(), "buffered records of p0 dropped");
        // Reassigned: the new owner starts over at the committed offset.
        receive(&mut s, 0, 1..2);
        let again = s.hand_out(1).unwrap();
        assert_eq!(s.done(b.token), vec![], "b belongs to the old assignment");
        assert_eq!(s.done(again.token), vec![(0, 2)]);
    }

    #[test]
    fn records_fetched_twice_are_handed_out_once() {
        let mut s = GroupState::default();
        receive(&mut s, 0, 5..8);
        receive(&mut s, 0, 6..9);
        let d = s.hand_out(10).unwrap();
        let got: Vec<_> = d.events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(got, ["0/5", "0/6", "0/7", "0/8"]);
    }

    #[test]
    fn a_batch_record_goes_out_whole_and_commits_as_one_offset() {
        let mut s = GroupState::default();
        let batch = |offset, n: usize| Received {
            partition: 0,
            offset,
            events: Ok((0..n)
                .map(|i| Event::new("s", format!("{offset}/{i}")))
                .collect()),
        };
        assert_eq!(s.receive(batch(0, 3)), 3, "buffered counts events");
        assert_eq!(s.receive(batch(1, 3)), 6);
        // max 4: the first record (3) and the whole second one (3 more).
        let a = s.hand_out(4).unwrap();
        assert_eq!(a.events.len(), 6);
        assert_eq!(s.buffered_events, 0);
        assert_eq!(s.receive(batch(2, 2)), 2);
        let b = s.hand_out(1).unwrap();
        assert_eq!(b.events.len(), 2, "a record is never split");
        assert_eq!(s.done(b.token), vec![], "waits for a");
        assert_eq!(s.done(a.token), vec![(0, 3)]);
    }

    #[test]
    fn records_that_are_not_events_go_out_as_unreadable_and_commit_with_it() {
        let mut s = GroupState::default();
        s.receive(Received {
            partition: 3,
            offset: 7,
            events: Err((Event::new("_quarantine", "{}"), "no sluice-id".into())),
        });
        let d = s.hand_out(10).expect("the unreadable record is handed out");
        assert!(d.events.is_empty());
        assert_eq!(d.unreadable.len(), 1);
        assert_eq!(d.unreadable[0].1, "no sluice-id");
        assert_eq!(
            s.done(d.token),
            vec![(3, 8)],
            "committed once dead-lettered"
        );
    }
}
