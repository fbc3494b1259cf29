//! The append-only journal: records in fixed-size segment files.
//!
//! Layout (one directory):
//!
//! ```text
//! 00000000000000000001.log   segment 1
//!   header  "FMQJ" | version u32 LE | segment number u64 LE          (16 bytes)
//!   record  payload length u32 LE | kind u8 | crc32 u32 LE | payload  (crc over kind + payload)
//!   record  ...
//! 00000000000000000002.log   segment 2 ...
//! ```
//!
//! Recovery policy: a record that is incomplete or fails its checksum in the
//! *last* segment is a torn tail from a crash: it is logged with its position
//! and cut off (the file is truncated there). The same in an earlier segment
//! means the data was damaged after it was written: start-up is refused with
//! a message naming the file and offset, rather than silently dropping or
//! resurrecting messages. Reading applies no size cap of its own (a record
//! written under a larger limit than today's is still read); a length past
//! the end of the file is what marks a record as incomplete.
//!
//! Writes are batched by the caller (`append` buffers, `flush` writes the
//! batch with one `write`, `sync` makes it durable). A failed write is undone
//! by truncating the segment back to where the batch started, so a full disk
//! never leaves a half record behind; after a failed sync the caller undoes
//! what the batch wrote ([`Journal::undo_to`]) except what is already
//! durable ([`Journal::is_durable`]: a segment rotation syncs the segment it
//! leaves).

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

const MAGIC: &[u8; 4] = b"FMQJ";
const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: usize = 9;

/// Where a record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error: {0}")]
    Io(#[from] io::Error),
    /// A record over the write limit: refused on its own, nothing written.
    #[error("record of {len} bytes is over the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("journal file {file} is corrupt at offset {offset}: {reason}; it is not the last segment, so this is not a torn write. Move the file aside to start without it (its records are lost).")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// A record read back during recovery.
#[derive(Debug)]
pub struct RawRecord {
    pub location: Location,
    pub kind: u8,
    pub payload: Bytes,
}

/// Test hooks: make writes or syncs fail as a full or broken disk would,
/// or make syncs slow.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    pub fail_writes: Arc<AtomicBool>,
    pub fail_syncs: Arc<AtomicBool>,
    /// Milliseconds each sync takes at least.
    pub sync_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// A new segment file is created but cannot be set up.
    pub fail_new_segments: Arc<AtomicBool>,
}

pub struct Journal {
    dir: PathBuf,
    segment_size: u64,
    max_record: usize,
    head: File,
    head_seq: u64,
    /// Bytes of the head segment already written to the file.
    head_len: u64,
    /// Records appended but not yet written.
    buf: Vec<u8>,
    /// Every segment and its length.
    segments: BTreeMap<u64, u64>,
    /// Everything before this is durable: synced, or found at start-up.
    synced: Location,
    faults: Faults,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads every record back,
    /// collected (for tests: recovery uses [`Journal::open_with`]).
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        segment_size: u64,
        max_record: usize,
        faults: Faults,
    ) -> Result<(Journal, Vec<RawRecord>), JournalError> {
        let mut all = Vec::new();
        let journal = Self::open_with(dir, segment_size, max_record, faults, |records, _| {
            all.extend(records)
        })?;
        Ok((journal, all))
    }

    /// Opens (or creates) the journal in `dir`, handing its records to
    /// `visit` one segment at a time, oldest first, with the number of
    /// segments. A segment's data is freed once `visit` drops its records:
    /// recovery holds one segment in memory, not the whole journal.
    pub fn open_with(
        dir: &Path,
        segment_size: u64,
        max_record: usize,
        faults: Faults,
        mut visit: impl FnMut(Vec<RawRecord>, usize),
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir)?;
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut segments = BTreeMap::new();
        // One buffer for every segment in turn: freed and allocated again
        // each time, segment-sized blocks would stay behind in the heap.
        let mut spare = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let mut records = Vec::new();
            let (len, data) = read_segment(&path, seq, last, spare, &mut records)?;
            visit(records, seqs.len());
            spare = data.try_into_mut().map(Vec::from).unwrap_or_default();
            segments.insert(seq, len);
        }
        let (head_seq, head_len) = match segments.iter().next_back() {
            Some((&seq, &len)) => (seq, len),
            None => (1, 0),
        };
        let path = segment_path(dir, head_seq);
        let mut head = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let head_len = if head_len < HEADER_LEN {
            write_header(&mut head, head_seq)?;
            sync_dir(dir)?;
            HEADER_LEN
        } else {
            head_len
        };
        head.seek(SeekFrom::Start(head_len))?;
        segments.insert(head_seq, head_len);
        Ok(Journal {
            dir: dir.to_path_buf(),
            segment_size: segment_size.max(HEADER_LEN + 64),
            max_record,
            head,
            head_seq,
            head_len,
            buf: Vec::with_capacity(64 * 1024),
            segments,
            synced: Location {
                segment: head_seq,
                offset: head_len,
            },
            faults,
        })
    }

    /// Buffers a record; it reaches the file at the next `flush`.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Location, JournalError> {
        if payload.len() > self.max_record {
            return Err(JournalError::TooLarge {
                len: payload.len(),
                max: self.max_record,
            });
        }
        self.append_copy(kind, payload)
    }

    /// As [`Journal::append`], for a record the journal already holds (a
    /// compaction's copy): today's size limit does not apply to it.
    pub fn append_copy(&mut self, kind: u8, payload: &[u8]) -> Result<Location, JournalError> {
        let pending = self.head_len + self.buf.len() as u64;
        let size = (RECORD_HEADER_LEN + payload.len()) as u64;
        if pending > HEADER_LEN && pending + size > self.segment_size {
            self.rotate()?;
        }
        let location = Location {
            segment: self.head_seq,
            offset: self.head_len + self.buf.len() as u64,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(payload);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(&crc.finalize().to_le_bytes());
        self.buf.extend_from_slice(payload);
        Ok(location)
    }

    /// Writes the buffered records. On failure nothing of them stays in the file.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = if self.faults.fail_writes.load(Ordering::Relaxed) {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ))
        } else {
            self.head.write_all(&self.buf)
        };
        match res {
            Ok(()) => {
                self.head_len += self.buf.len() as u64;
                self.segments.insert(self.head_seq, self.head_len);
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                // Undo a partial write so the segment ends on a whole record.
                let _ = self.head.set_len(self.head_len);
                let _ = self.head.seek(SeekFrom::Start(self.head_len));
                Err(e.into())
            }
        }
    }

    /// Makes everything written durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.faults.fail_syncs.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected: fsync failed").into());
        }
        let delay = self.faults.sync_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        self.head.sync_data()?;
        self.synced = Location {
            segment: self.head_seq,
            offset: self.head_len,
        };
        Ok(())
    }

    /// Where the next record goes (a batch's start, for [`Journal::undo_to`]).
    pub fn mark(&self) -> Location {
        Location {
            segment: self.head_seq,
            offset: self.head_len + self.buf.len() as u64,
        }
    }

    /// Whether the record at `at` is durable.
    pub fn is_durable(&self, at: Location) -> bool {
        at < self.synced
    }

    /// Whether everything before `at` is durable.
    pub fn is_durable_before(&self, at: Location) -> bool {
        at <= self.synced
    }

    /// Undoes what was appended since `mark` (a failed batch), except what
    /// is durable already: buffered records are dropped, written ones cut
    /// off the head segment.
    pub fn undo_to(&mut self, mark: Location) -> Result<(), JournalError> {
        self.buf.clear();
        let mut keep = if mark.segment == self.head_seq {
            mark.offset
        } else {
            HEADER_LEN
        };
        if self.synced.segment == self.head_seq {
            keep = keep.max(self.synced.offset);
        }
        if keep < self.head_len {
            self.head.set_len(keep)?;
            self.head.seek(SeekFrom::Start(keep))?;
            self.head_len = keep;
            self.segments.insert(self.head_seq, keep);
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        self.sync()?;
        let seq = self.head_seq + 1;
        let path = segment_path(&self.dir, seq);
        let created = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| {
                if self.faults.fail_new_segments.load(Ordering::Relaxed) {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "injected: no space for a segment header",
                    ));
                }
                write_header(&mut file, seq)?;
                sync_dir(&self.dir)?;
                Ok(file)
            });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // The records go on in this segment: it must stay the last
                // one, or a torn tail in it would read as damage.
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        self.head = file;
        self.head_seq = seq;
        self.head_len = HEADER_LEN;
        self.segments.insert(seq, HEADER_LEN);
        Ok(())
    }

    pub fn head_segment(&self) -> u64 {
        self.head_seq
    }

    /// Segments oldest first, with their lengths.
    pub fn segments(&self) -> &BTreeMap<u64, u64> {
        &self.segments
    }

    pub fn disk_usage(&self) -> u64 {
        self.segments.values().sum()
    }

    /// Deletes a segment that holds nothing live any more.
    pub fn delete_segment(&mut self, seq: u64) -> Result<(), JournalError> {
        if seq == self.head_seq {
            return Ok(());
        }
        std::fs::remove_file(segment_path(&self.dir, seq))?;
        self.segments.remove(&seq);
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Reads one record back (for compaction).
    pub fn read(&mut self, at: Location) -> Result<(u8, Bytes), JournalError> {
        if at.segment == self.head_seq && at.offset >= self.head_len {
            self.flush()?;
        }
        read_record(&self.dir, at, self.max_record)
    }
}

/// Reads and checks the record at `at` (written and flushed, so any thread
/// may read it while its segment exists).
pub fn read_record(
    dir: &Path,
    at: Location,
    max_record: usize,
) -> Result<(u8, Bytes), JournalError> {
    let f = open_segment(dir, at.segment)?;
    read_record_in(&f, dir, at, max_record)
}

/// Opens a segment for [`read_record_in`].
pub fn open_segment(dir: &Path, seq: u64) -> Result<File, JournalError> {
    Ok(File::open(segment_path(dir, seq))?)
}

/// As [`read_record`], in the segment file `f` already open.
pub fn read_record_in(
    f: &File,
    dir: &Path,
    at: Location,
    max_record: usize,
) -> Result<(u8, Bytes), JournalError> {
    use std::os::unix::fs::FileExt;
    let corrupt = |reason: String| JournalError::Corrupt {
        file: segment_path(dir, at.segment),
        offset: at.offset,
        reason,
    };
    let mut header = [0u8; RECORD_HEADER_LEN];
    f.read_exact_at(&mut header, at.offset)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4")) as usize;
    // Over today's write limit it may still be a record written under a
    // larger one: only one that ends past the file is refused.
    if len > max_record && at.offset + (RECORD_HEADER_LEN + len) as u64 > f.metadata()?.len() {
        return Err(corrupt(format!(
            "record length {len} past the end of the file"
        )));
    }
    let mut payload = vec![0u8; len];
    f.read_exact_at(&mut payload, at.offset + RECORD_HEADER_LEN as u64)?;
    let stored = u32::from_le_bytes(header[5..9].try_into().expect("4"));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[header[4]]);
    crc.update(&payload);
    if crc.finalize() != stored {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok((header[4], Bytes::from(payload)))
}

fn write_header(f: &mut File, seq: u64) -> io::Result<()> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&h)?;
    f.sync_data()
}

/// Reads a segment's records; returns the length of its valid part.
fn read_segment(
    path: &Path,
    seq: u64,
    last: bool,
    mut buf: Vec<u8>,
    out: &mut Vec<RawRecord>,
) -> Result<(u64, Bytes), JournalError> {
    use std::io::Read;
    buf.clear();
    File::open(path)?.read_to_end(&mut buf)?;
    let data = Bytes::from(buf);
    let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if data.len() < HEADER_LEN as usize {
        if last {
            warn!(file = %path.display(), "journal segment with a torn header; starting it again");
            return Ok((0, data));
        }
        return Err(corrupt(0, "short header".into()));
    }
    if &data[..4] != MAGIC || u32::from_le_bytes(data[4..8].try_into().expect("4")) != VERSION {
        return Err(corrupt(
            0,
            "not a ferromq journal segment (bad magic or version)".into(),
        ));
    }
    let mut pos = HEADER_LEN as usize;
    while pos < data.len() {
        let problem = record_at(&data, pos);
        match problem {
            Ok((kind, payload, next)) => {
                out.push(RawRecord {
                    location: Location {
                        segment: seq,
                        offset: pos as u64,
                    },
                    kind,
                    payload,
                });
                pos = next;
            }
            Err(reason) if last => {
                warn!(
                    file = %path.display(),
                    offset = pos,
                    dropped_bytes = data.len() - pos,
                    reason,
                    "torn journal tail cut off"
                );
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(pos as u64)?;
                f.sync_all()?;
                return Ok((pos as u64, data));
            }
            Err(reason) => return Err(corrupt(pos as u64, reason.to_string())),
        }
    }
    if last {
        info!(file = %path.display(), records = out.len(), "journal head segment read");
    }
    Ok((pos as u64, data))
}

fn record_at(data: &Bytes, pos: usize) -> Result<(u8, Bytes, usize), &'static str> {
    if data.len() - pos < RECORD_HEADER_LEN {
        return Err("incomplete record header");
    }
    let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
    let start = pos + RECORD_HEADER_LEN;
    if data.len() - start < len {
        return Err("incomplete record");
    }
    let kind = data[pos + 4];
    let stored = u32::from_le_bytes(data[pos + 5..pos + 9].try_into().expect("4"));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&data[start..start + len]);
    if crc.finalize() != stored {
        return Err("checksum mismatch");
    }
    Ok((kind, data.slice(start..start + len), start + len))
}

#[cfg(test)]
mod tests;
