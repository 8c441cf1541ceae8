//! The sent journal: files beside the database where a delivery is written
//! down the moment the mail server accepts it, one `log_id message_id` line,
//! without waiting for a commit. A line written survives this process being
//! killed (it is in the kernel's page cache), which is the window between an
//! accepted message and its record that would otherwise resend it. The
//! database learns of the delivery with the event's next shared commit; at
//! open, lines a killed worker left are applied before anything else.
//!
//! Files are numbered; the current one is rotated once it is large, and an
//! older one is deleted once every line in it has been committed to the database.
//! A process holds an exclusive lock on the file it writes (and on a rotated
//! one until its lines are committed), so another one
//! opening the same database (a second worker by mistake, or `log`) applies
//! and deletes only the files of processes that are gone.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::StoreError;

/// Rotate the current file after this many bytes.
const ROTATE_AT: u64 = 1 << 20;

/// One delivery written down, still to be committed to the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub log_id: i64,
    pub message_id: Option<String>,
    /// The file it is in.
    pub file: u64,
}

pub struct Journal {
    /// `<database>.sent`: files are `<database>.sent.<n>`.
    stem: PathBuf,
    current: Mutex<Current>,
    /// Files of processes that are gone, read at open and locked until applied.
    orphans: Mutex<Vec<(PathBuf, File)>>,
}

struct Current {
    file: File,
    number: u64,
    size: u64,
    /// Lines not yet committed to the database, per file.
    uncommitted: BTreeMap<u64, usize>,
    /// Rotated files with uncommitted lines, kept open so they stay locked.
    rotated: BTreeMap<u64, File>,
}

impl Journal {
    /// Opens the journal of the database at `db`, returning the lines left
    /// over from before (to apply, then [`Journal::applied`]).
    pub fn open(db: &Path) -> Result<(Self, Vec<Line>), StoreError> {
        let stem = PathBuf::from(format!("{}.sent", db.display()));
        let mut leftover = Vec::new();
        let mut orphans = Vec::new();
        for (number, path) in existing(&stem)? {
            // Locked: a live process writes it. Gone meanwhile: someone else applied it.
            let Ok(file) = File::open(&path) else { continue };
            if file.try_lock().is_err() {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| StoreError::file(format!("reading {}", path.display()), e))?;
            leftover.extend(parse(&String::from_utf8_lossy(&text), number));
            orphans.push((path, file));
        }
        let (file, number) = create_next(&stem)?;
        let journal = Self {
            stem,
            current: Mutex::new(Current {
                file,
                number,
                size: 0,
                uncommitted: BTreeMap::new(),
                rotated: BTreeMap::new(),
            }),
            orphans: Mutex::new(orphans),
        };
        Ok((journal, leftover))
    }

    /// The leftover lines are in the database now: their files can go.
    pub fn applied(&self) -> Result<(), StoreError> {
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        for (path, _locked) in orphans {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::file(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }

    /// Writes a delivery down: when this returns, a killed worker's successor will know it went out.
    pub fn write(&self, log_id: i64, message_id: Option<&str>) -> Result<Line, StoreError> {
        // A Message-ID is one header line (no spaces or line breaks); anything else is not written, but kept as none.
        let message_id = message_id.filter(|m| !m.is_empty() && !m.contains(char::is_whitespace));
        let text = format!("{log_id} {}\n", message_id.unwrap_or("-"));
        let mut current = self.lock();
        if current.size >= ROTATE_AT {
            self.rotate(&mut current)?;
        }
        if let Err(e) = current.file.write_all(text.as_bytes()) {
            // A part-written line would run into the next one: cut it off.
            let size = current.size;
            let _ = current.file.set_len(size);
            return Err(StoreError::file("writing the sent journal".into(), e));
        }
        current.size += text.len() as u64;
        let number = current.number;
        *current.uncommitted.entry(number).or_default() += 1;
        Ok(Line {
            log_id,
            message_id: message_id.map(str::to_string),
            file: number,
        })
    }

    /// These lines are committed to the database: a rotated file whose lines all are is deleted.
    pub fn committed(&self, lines: &[Line]) {
        let mut current = self.lock();
        for line in lines {
            if let Some(left) = current.uncommitted.get_mut(&line.file) {
                *left = left.saturating_sub(1);
            }
        }
        let number = current.number;
        let done: Vec<u64> = current
            .uncommitted
            .iter()
            .filter(|&(&n, &left)| left == 0 && n < number)
            .map(|(&n, _)| n)
            .collect();
        for n in done {
            current.uncommitted.remove(&n);
            current.rotated.remove(&n);
            // Left behind if this fails: applying it again at the next open changes nothing.
            let _ = std::fs::remove_file(file_path(&self.stem, n));
        }
    }

    fn rotate(&self, current: &mut Current) -> Result<(), StoreError> {
        let (file, number) = create_next(&self.stem)?;
        let old_file = std::mem::replace(&mut current.file, file);
        let old = std::mem::replace(&mut current.number, number);
        current.size = 0;
        if current.uncommitted.get(&old).is_none_or(|&left| left == 0) {
            current.uncommitted.remove(&old);
            let _ = std::fs::remove_file(file_path(&self.stem, old));
        } else {
            current.rotated.insert(old, old_file);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates and locks the next numbered file (past any another process made meanwhile).
fn create_next(stem: &Path) -> Result<(File, u64), StoreError> {
    let mut number = existing(stem)?.last().map_or(1, |(n, _)| n + 1);
    loop {
        let path = file_path(stem, number);
        match OpenOptions::new().create_new(true).append(true).open(&path) {
            // Locked first by another opener (who took it for a dead one's): take the next.
            Ok(file) => match file.try_lock() {
                Ok(()) => return Ok((file, number)),
                Err(std::fs::TryLockError::WouldBlock) => number += 1,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::file(format!("locking {}", path.display()), e));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
            Err(e) => return Err(StoreError::file(format!("creating {}", path.display()), e)),
        }
    }
}

fn file_path(stem: &Path, number: u64) -> PathBuf {
    PathBuf::from(format!("{}.{number}", stem.display()))
}

/// The journal files there are, oldest first.
fn existing(stem: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let dir = match stem.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(
        "{}.",
        stem.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::file(format!("listing {}", dir.display()), e))?;
    let mut files: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The lines of one file; a torn last line (the process died mid-write) is skipped.
fn parse(text: &str, file: u64) -> Vec<Line> {
    text.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .filter_map(|line| {
            let (id, message_id) = line.split_once(' ')?;
            Some(Line {
                log_id: id.parse().ok()?,
                message_id: (message_id != "-").then(|| message_id.to_string()),
                file,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_a_reopen_and_go_once_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("router.db");
        let (journal, leftover) = Journal::open(&db).unwrap();
        assert!(leftover.is_empty());
        journal.write(7, Some("<a@x>")).unwrap();
        journal.write(8, None).unwrap();
        drop(journal); // as if killed: nothing committed
        let (journal, leftover) = Journal::open(&db).unwrap();
        let got: Vec<_> = leftover.iter().map(|l| (l.log_id, l.message_id.clone())).collect();
        assert_eq!(got, [(7, Some("<a@x>".to_string())), (8, None)]);
        journal.applied().unwrap();
        drop(journal);
        let (_, leftover) = Journal::open(&db).unwrap();
        assert!(leftover.is_empty(), "applied lines are not applied again");
    }

    #[test]
    fn a_second_process_leaves_a_live_journal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("router.db");
        let (live, _) = Journal::open(&db).unwrap();
        live.write(1, Some("<a@x>")).unwrap();
        let (other, leftover) = Journal::open(&db).unwrap();
        assert!(leftover.is_empty(), "the live worker's lines are not taken");
        other.applied().unwrap();
        assert_eq!(existing(&live.stem).unwrap().len(), 2, "both journals are there");
        drop(live); // its process is gone: its lines go to the next opener
        let (_, leftover) = Journal::open(&db).unwrap();
        assert_eq!(leftover.len(), 1);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        assert_eq!(parse("1 <a@x>\n2 <b", 3).len(), 1);
        assert!(parse("garbage\n", 1).is_empty());
    }

    #[test]
    fn a_rotated_file_goes_once_its_lines_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("router.db");
        let (journal, _) = Journal::open(&db).unwrap();
        let first = journal.write(1, Some("<a@x>")).unwrap();
        journal.lock().size = ROTATE_AT;
        let second = journal.write(2, Some("<b@x>")).unwrap();
        assert_ne!(first.file, second.file);
        assert_eq!(
            existing(&journal.stem).unwrap().len(),
            2,
            "the rotated file still has an uncommitted line"
        );
        journal.committed(&[first]);
        assert_eq!(existing(&journal.stem).unwrap().len(), 1);
    }
}
