//! sluice's embedded write-ahead log: the default, durable queue.
//!
//! A directory of segment files holding CRC32C-checked frames, one writer thread
//! doing group commit (one `fdatasync` shared by every append queued meanwhile),
//! any number of [`Reader`]s, and per-consumer checkpoints that let fully consumed
//! segments be deleted. The code is synchronous; async callers use
//! [`Wal::append`] with a callback, which never blocks on I/O.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/
//!   00000000000000000000.wal      segment: named by the logical position of its first data byte
//!   00000000000000524288.wal      (20 zero-padded digits, so names sort by position)
//!   <consumer>.ckpt               checkpoint of one consumer
//!   <consumer>.ckpt.tmp           checkpoint being written (removed at open)
//!   <segment>.quarantine-<offset> bytes moved out of a segment by open (torn tail) or repair
//!
//! segment file
//! +-------------------------------- header, 32 bytes ---------------------------------+
//! | magic "SLUICEWL" 8 | version u32 LE 4 | reserved 4 | base u64 LE 8 | reserved 4 | crc32c u32 LE 4 |
//! +------------------------------------------------------------------------------------+  crc over bytes 0..28
//! | frame | frame | frame | ...                                                         |
//! +------------------------------------------------------------------------------------+
//!
//! frame
//! +-------------+--------------+--------------------+
//! | len u32 LE  | crc u32 LE   | payload (len bytes)|
//! +-------------+--------------+--------------------+
//!   crc = crc32c(len bytes ++ payload): a flipped length fails like a flipped payload byte
//!
//! checkpoint file (16 bytes): magic "SLCK" 4 | position u64 LE 8 | crc32c of bytes 0..12, u32 LE 4
//! ```
//!
//! Logical positions count frame bytes only (headers are not part of the position
//! space): a record at position `p` in the segment with base `b` starts at file
//! offset `32 + (p - b)`, and the next segment's base is this segment's data end,
//! except after a [`repair`], where a quarantined range leaves a hole.
//!
//! The WAL directory is fsynced when it is created, and so is its parent.
//!
//! # Invariants
//!
//! - Every frame is checksummed; a frame is returned only if its length and CRC check.
//! - Positions only grow and are never reused: a new segment starts at the previous
//!   end; the last segment is never deleted; at open, when consumers committed past
//!   the end, the log continues after the highest checkpoint.
//! - Only the last segment can hold a torn tail: a segment is synced before the next
//!   one is created, and a new segment's header and the directory are synced before
//!   any frame goes into it. Open therefore scans only the last segment.
//! - The WAL never deletes what might be acked. A torn tail is a bad frame with
//!   *nothing valid after it* in the segment (found by trying every later offset as
//!   a frame start, in O(n): see `analysis`); open copies it to
//!   `<segment>.quarantine-<offset>` (synced) before cutting it, and says so in
//!   [`Recovery`]. A bad frame followed by a valid frame is corruption: open fails
//!   with [`OpenError::Corrupt`] naming the segment and offset, and [`repair`]
//!   (`sluice wal repair DIR`) keeps every valid frame at its position and moves the
//!   bad bytes to quarantine files, leaving holes in the position space that readers
//!   step over. A power loss can also tear unsynced writes out of order; the log then
//!   refuses to start rather than guess, and `repair` keeps everything readable.
//! - Frame size limits when reading come from the format (a u32 length that fits in
//!   the file), never from today's `max_record_bytes`, which bounds appends only.
//! - In [`SyncMode::Fsync`] a callback sees `Ok` only after the `fdatasync` covering
//!   its frame returned; readers never read past [`Wal::durable_end`].
//! - After a failed write, segment creation or sync the WAL refuses all appends until
//!   the process restarts, and [`Wal::failure`] says why and what to do (the
//!   observer's `on_failure` is told once). Nothing past the durable end was acked,
//!   so a restart recovers: the partly written tail is quarantined and cut. A failed
//!   fsync cannot be retried safely (the kernel may have dropped the dirty pages), so
//!   the WAL does not try to recover in-process from any failure.
//! - A segment is deleted only when its whole data lies before every consumer's
//!   checkpoint.
//! - Bytes on disk plus pending appends stay within `max_bytes`, except for the
//!   32-byte header of a segment created by a roll.

#![forbid(unsafe_code)]

mod analysis;
mod checkpoint;
mod error;
mod frame;
mod inspect;
mod mem;
mod options;
mod reader;
mod recovery;
mod repair;
mod sched;
mod segment;
mod storage;
mod wal;
mod writer;

pub use error::{
    AppendError, CloseError, CommitError, InspectError, OpenError, ReadError, RepairError,
};
pub use frame::{segment_name, Damage, HeaderProblem, FRAME_OVERHEAD, HEADER_LEN};
pub use inspect::{inspect, inspect_storage, Inspection, SegmentReport};
pub use mem::MemStorage;
pub use options::{SyncMode, WalObserver, WalOptions};
pub use reader::{Reader, Record};
pub use recovery::Recovery;
pub use repair::{repair, repair_storage, Quarantined, RepairReport, SegmentRepair};
pub use segment::ScanProblem;
pub use storage::{FsStorage, Storage, StorageFile};
pub use wal::{AppendCallback, Appended, Wal, WalFailure, WalStats};
