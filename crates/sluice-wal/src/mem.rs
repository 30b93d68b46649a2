//! An in-memory [`Storage`] that remembers what is durable, for crash tests.
//!
//! Each file keeps its bytes and how many of them were synced; the directory keeps
//! the namespace as of the last [`Storage::sync_dir`]. [`MemStorage::crash`] builds
//! the storage a reboot would find: the durable namespace, each file's synced
//! prefix, plus a random part of its unsynced tail (a torn write) with random bit
//! flips in that unsynced part. [`MemStorage::fail_after`] makes every operation
//! fail from the n-th mutating one on, to stop the WAL between a write and its sync.
//!
//! The model is pessimistic on purpose: an overwrite or truncation below the synced
//! length lowers the synced length, so the WAL gets no credit for data it rewrote.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

#[derive(Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    synced_len: usize,
}

type FileRef = Arc<Mutex<MemFile>>;

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, FileRef>,
    durable: HashMap<String, FileRef>,
    dead: bool,
    fail_after: Option<u64>,
    syncs: u64,
    /// While set, every file write stores the first half of its bytes, then fails with this OS error.
    write_error: Option<i32>,
    /// While set, every file sync fails with this OS error.
    sync_error: Option<i32>,
}

impl State {
    /// Counts one mutating operation; errors once the storage is dead.
    fn tick(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(dead());
        }
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                self.dead = true;
                return Err(dead());
            }
            *n -= 1;
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.dead {
            Err(dead())
        } else {
            Ok(())
        }
    }
}

fn dead() -> io::Error {
    io::Error::other("memory storage crashed")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// In-memory [`Storage`] with crash simulation; cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<State>>,
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Every operation from the `n`-th mutating one on (writes, syncs, creates,
    /// renames, removals, truncations) fails, as if the machine stopped there.
    pub fn fail_after(&self, n: u64) {
        lock(&self.state).fail_after = Some(n);
    }

    /// While `Some(errno)`, every file write stores the first half of its bytes and
    /// then fails with that OS error (`28` is ENOSPC), as a full disk does; the
    /// storage stays alive. `None` lets writes succeed again.
    pub fn fail_writes(&self, errno: Option<i32>) {
        lock(&self.state).write_error = errno;
    }

    /// While `Some(errno)`, every file sync fails with that OS error (`5` is EIO).
    pub fn fail_syncs(&self, errno: Option<i32>) {
        lock(&self.state).sync_error = errno;
    }

    /// Whether the storage has stopped (after [`fail_after`](Self::fail_after) or [`crash`](Self::crash)).
    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// How many `sync_data` calls succeeded so far.
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Stops this storage (every later call on it or its files fails) and returns
    /// what a reboot would find. `seed` drives which unsynced bytes survive and
    /// where up to `bit_flips` bits flip inside the surviving unsynced bytes.
    pub fn crash(&self, seed: u64, bit_flips: usize) -> MemStorage {
        let mut rng = SplitMix(seed);
        let mut st = lock(&self.state);
        st.dead = true;
        let mut names: Vec<_> = st.durable.keys().cloned().collect();
        names.sort();
        let mut files = HashMap::new();
        for name in names {
            let f = lock(&st.durable[&name]);
            let synced = f.synced_len.min(f.data.len());
            let unsynced = f.data.len() - synced;
            let keep = if unsynced == 0 {
                0
            } else {
                rng.below(unsynced as u64 + 1) as usize
            };
            let mut data = f.data[..synced + keep].to_vec();
            if keep > 0 {
                for _ in 0..bit_flips {
                    let at = synced + rng.below(keep as u64) as usize;
                    data[at] ^= 1 << rng.below(8);
                }
            }
            let synced_len = data.len();
            files.insert(name, Arc::new(Mutex::new(MemFile { data, synced_len })));
        }
        let state = State {
            durable: files.clone(),
            files,
            ..State::default()
        };
        MemStorage {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The current bytes of a file (durable or not), for assertions.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let st = lock(&self.state);
        st.files.get(name).map(|f| lock(f).data.clone())
    }

    /// Flips bits in a file as durable-media corruption would (the bytes stay "synced").
    pub fn corrupt(&self, name: &str, offset: usize, xor: u8) -> bool {
        let st = lock(&self.state);
        let Some(f) = st.files.get(name) else {
            return false;
        };
        let mut f = lock(f);
        match f.data.get_mut(offset) {
            Some(b) => {
                *b ^= xor;
                true
            }
            None => false,
        }
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        st.check()?;
        Ok(st.files.keys().cloned().collect())
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut st = lock(&self.state);
        let file = match st.files.get(name) {
            Some(f) => {
                st.check()?;
                f.clone()
            }
            None if create => {
                st.tick()?;
                let f = FileRef::default();
                st.files.insert(name.to_owned(), f.clone());
                f
            }
            None => {
                st.check()?;
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {name}"),
                ));
            }
        };
        Ok(Box::new(MemHandle {
            state: self.state.clone(),
            file,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.tick()?;
        match st.files.remove(name) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {name}"),
            )),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.tick()?;
        let f = st
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {from}")))?;
        st.files.insert(to.to_owned(), f);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.tick()?;
        st.durable = st.files.clone();
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

struct MemHandle {
    state: Arc<Mutex<State>>,
    file: FileRef,
}

impl StorageFile for MemHandle {
    fn len(&self) -> io::Result<u64> {
        lock(&self.state).check()?;
        Ok(lock(&self.file).data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        lock(&self.state).check()?;
        let f = lock(&self.file);
        let start = (offset as usize).min(f.data.len());
        let n = buf.len().min(f.data.len() - start);
        buf[..n].copy_from_slice(&f.data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let write_error = {
            let mut st = lock(&self.state);
            st.tick()?;
            st.write_error
        };
        let (data, result) = match write_error {
            Some(errno) => (
                &data[..data.len() / 2],
                Err(io::Error::from_raw_os_error(errno)),
            ),
            None => (data, Ok(())),
        };
        let mut f = lock(&self.file);
        let offset = offset as usize;
        if f.data.len() < offset + data.len() {
            f.data.resize(offset + data.len(), 0);
        }
        f.data[offset..offset + data.len()].copy_from_slice(data);
        if offset < f.synced_len {
            f.synced_len = offset;
        }
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.tick()?;
        if let Some(errno) = st.sync_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        st.syncs += 1;
        let mut f = lock(&self.file);
        f.synced_len = f.data.len();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.state).tick()?;
        let mut f = lock(&self.file);
        f.data.resize(len as usize, 0);
        f.synced_len = f.synced_len.min(len as usize);
        Ok(())
    }
}

/// Small deterministic generator so the library needs no RNG dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_durable_names_only() {
        let s = MemStorage::new();
        s.sync_dir().unwrap();
        let f = s.open("a", true).unwrap();
        f.write_all_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        s.sync_dir().unwrap();
        f.write_all_at(7, b"-maybe").unwrap();
        let g = s.open("b", true).unwrap();
        g.write_all_at(0, b"never named durably").unwrap();
        g.sync_data().unwrap();

        let after = s.crash(7, 0);
        assert!(f.sync_data().is_err(), "old handles die with the crash");
        let a = after.file_bytes("a").unwrap();
        assert!(a.starts_with(b"durable"));
        assert!(b"durable-maybe".starts_with(&a));
        assert_eq!(after.file_bytes("b"), None);
    }

    #[test]
    fn fail_after_stops_everything() {
        let s = MemStorage::new();
        let f = s.open("a", true).unwrap();
        s.fail_after(1);
        f.write_all_at(0, b"x").unwrap();
        assert!(f.sync_data().is_err());
        assert!(s.is_dead());
        assert!(s.list().is_err());
    }
}
