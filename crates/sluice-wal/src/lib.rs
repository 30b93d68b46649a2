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
//! offset `32 + (p - b)`, and the next segment's base is this segment's data end.
//!
//! # Invariants
//!
//! - Every frame is checksummed; a frame is returned only if its length and CRC check.
//! - Positions only grow and are never reused: a new segment starts at the previous
//!   end; the last segment is never deleted; at open, when consumers committed past
//!   the end, the log continues after the highest checkpoint.
//! - Only the last segment can hold a torn tail: a segment is synced before the next
//!   one is created, and a new segment's header and the directory are synced before
//!   any frame goes into it. Open therefore scans only the last segment and cuts it
//!   after its last good frame.
//! - In [`SyncMode::Fsync`] a callback sees `Ok` only after the `fdatasync` covering
//!   its frame returned; readers never read past [`Wal::durable_end`].
//! - After a failed write or sync the WAL refuses all appends (a failed fsync cannot
//!   be retried safely).
//! - A segment is deleted only when its whole data lies before every consumer's
//!   checkpoint.
//! - Bytes on disk plus pending appends stay within `max_bytes`, except for the
//!   32-byte header of a segment created by a roll.

#![forbid(unsafe_code)]

mod checkpoint;
mod error;
mod frame;
mod inspect;
mod mem;
mod options;
mod reader;
mod recovery;
mod segment;
mod storage;
mod wal;
mod writer;

pub use error::{AppendError, CloseError, CommitError, InspectError, OpenError, ReadError};
pub use frame::{segment_name, FRAME_OVERHEAD, HEADER_LEN};
pub use inspect::{inspect, inspect_storage, Inspection, SegmentReport};
pub use mem::MemStorage;
pub use options::{SyncMode, WalObserver, WalOptions};
pub use reader::{Reader, Record};
pub use recovery::Recovery;
pub use segment::ScanProblem;
pub use storage::{FsStorage, Storage, StorageFile};
pub use wal::{AppendCallback, Wal, WalStats};
