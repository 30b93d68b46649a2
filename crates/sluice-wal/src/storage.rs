//! The narrow I/O surface of the WAL.
//!
//! Everything the log does to disk goes through [`Storage`] and [`StorageFile`],
//! so tests can swap in [`MemStorage`](crate::MemStorage), which crashes, tears
//! and corrupts on demand. [`FsStorage`] is the real thing: one directory,
//! positional reads and writes, `fdatasync` via [`std::fs::File::sync_data`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A flat directory of named files.
///
/// Names are plain file names (no separators). Creating, renaming and removing a
/// file is durable only after [`Storage::sync_dir`].
pub trait Storage: Send + Sync + 'static {
    /// Names of every file in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing; creates it (empty) when `create` is set.
    fn open(&self, name: &str, create: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (`fsync` on the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// A human description of where the files live, for logs and errors.
    fn describe(&self) -> String;
}

/// One open file.
pub trait StorageFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Fills `buf` from `offset`; returns how many bytes were read, less than
    /// `buf.len()` only at the end of the file.
    fn read_full_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        while !buf.is_empty() {
            match self.read_at(offset, buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    offset += n as u64;
                    buf = &mut buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// [`Storage`] over a real directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// Uses `dir`, creating it (and its parents) when missing. Every directory it
    /// creates is fsynced, and so is the parent it was created in, so the WAL
    /// directory's own entry survives a power loss like the segments inside it.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        let mut missing = Vec::new();
        let mut at = Some(dir.as_path());
        while let Some(p) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            missing.push(p.to_path_buf());
            at = p.parent();
        }
        std::fs::create_dir_all(&dir)?;
        // Deepest first: each new directory, then the directory holding it.
        for created in &missing {
            File::open(created)?.sync_all()?;
            let parent = created
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(parent)?.sync_all()?;
        }
        Ok(FsStorage { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.dir.join(name))?;
        Ok(Box::new(FsFile(file)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

struct FsFile(File);

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(&self.0, data, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}
