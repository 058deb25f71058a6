//! [`DirectReads`]: the SQLite stores' single-row lookups run on the calling thread through
//! `rusqlite`, beside the sqlx pool that does everything else.
//!
//! sqlx runs every SQLite statement on a worker thread of its own per connection: a lookup is
//! a hand-off to that thread and back, 10 to 15 µs here where the query itself takes 1.4 µs
//! (`docs/performance.md`). A lookup by primary key on a local file is short enough to run
//! where the request already is, so `get` and `find_by_hash` do, and only they: writes,
//! migrations and transactions stay on the pool.
//!
//! - **Which file**: the one the pool's own connection has open, as SQLite reports it
//!   (`pragma_database_list`), learnt on the connection that answered the first lookup. An
//!   in-memory or temporary database reports none, and its lookups stay on the pool; so
//!   does every lookup until one has reached the database through the pool.
//! - **Never waiting**: the connections have no busy timeout. A lookup that meets a lock (a
//!   writer on a file in rollback-journal mode, `locking_mode = EXCLUSIVE`), or fails in any
//!   other way, is handed to the pool, which waits within the store's deadline and reports
//!   what it finds. In WAL mode, which [`SqliteStore::connect`](super::SqliteStore::connect)
//!   sets, readers do not wait for writers at all.
//! - **Taking turns**: each lookup spends the task's tokio budget as a socket read would, so
//!   a task looking tokens up in a loop still yields its worker thread.
//! - **Read only**: `PRAGMA query_only`, so nothing on this path can change the file.
//! - **Renewed** as the pool's own connections are: one older than half an hour is closed
//!   rather than reused. The path is checked once a second to still name the file learnt:
//!   if it names another (a file restored from a backup under the same name), every read
//!   connection is closed and the pool answers until a lookup through it learns the file
//!   again.
//! - **One SQLite**: both drivers link the one `libsqlite3-sys` (Cargo allows one crate per
//!   native library), so the file's locks are shared within the process as SQLite requires.
//!
//! Uses `crate::store` only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, Row, ToSql};
use sqlx::SqliteConnection;

/// How many idle read connections a store keeps; a lookup that finds none opens another, and
/// one returned beyond this is closed.
const IDLE_CONNECTIONS: usize = 8;

/// How long a read connection is used, as `SqliteStore::connect`'s pool keeps its own.
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// How often the path is checked to still name the file learnt: a file replaced under the
/// same name (a restore from a backup) is followed within this.
const RECHECK: Duration = Duration::from_secs(1);

/// Which file a path names: its device and inode.
#[cfg(unix)]
type FileId = (u64, u64);
/// Which file a path names: its creation time (a file cannot be renamed over while open on
/// Windows).
#[cfg(not(unix))]
type FileId = Option<std::time::SystemTime>;

fn file_id(path: &Path) -> Option<FileId> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        Some(metadata.created().ok())
    }
}

/// Read connections on a pool's file, opened as lookups need them.
#[derive(Debug, Default)]
pub(crate) struct DirectReads {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    known: Known,
    idle: Vec<ReadConnection>,
}

/// What is known of the pool's file.
#[derive(Debug, Default)]
enum Known {
    /// Nothing yet, or the path has named another file since it was learnt: the pool answers
    /// until a lookup through it learns the file again.
    #[default]
    Unknown,
    /// The database has no file (in memory, temporary).
    NoFile,
    /// The file at `path`, which was `id` when learnt and when last `checked`.
    File {
        path: PathBuf,
        id: FileId,
        checked: Instant,
    },
}

#[derive(Debug)]
struct ReadConnection {
    connection: Connection,
    file: FileId,
    opened: Instant,
}

impl DirectReads {
    /// Runs the one-parameter query `sql` and gives `answer` its first row, or `None` for no
    /// row. `None` back means this path cannot answer now (no file known, a lock, any
    /// error): ask the pool.
    pub(crate) fn read<T>(
        &self,
        sql: &str,
        param: impl ToSql,
        answer: impl FnOnce(Option<&Row<'_>>) -> T,
    ) -> Option<T> {
        let connection = self.take()?;
        let answered = query(&connection.connection, sql, param, answer);
        // A connection whose statement failed may hold a lock or a half-read state; a fresh
        // one costs an open, which failures are rare enough to afford.
        if answered.is_some() {
            self.give_back(connection);
        }
        answered
    }

    /// Spends one unit of the task's tokio budget, yielding when it is spent. A direct read
    /// never waits, so without this a task that looks tokens up in a loop would never give
    /// its worker thread to another task (as tokio's own sockets and channels do, every 128
    /// operations).
    pub(crate) async fn take_turn() {
        tokio::task::coop::consume_budget().await;
    }

    /// Whether the file is known (or known to be none), so [`learn`](Self::learn) has nothing
    /// to do.
    pub(crate) fn learnt(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|state| !matches!(state.known, Known::Unknown))
    }

    /// Learns the file from `conn`, the pool's connection that just answered a lookup (so
    /// the database is there). An error leaves it to be learnt on the next one.
    pub(crate) async fn learn(&self, conn: &mut SqliteConnection) {
        let file: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(conn)
                .await;
        let known = match file {
            Ok(Some(path)) if !path.is_empty() => {
                let path = PathBuf::from(path);
                let Some(id) = file_id(&path) else { return };
                Known::File {
                    path,
                    id,
                    checked: Instant::now(),
                }
            }
            Ok(_) => Known::NoFile,
            Err(_) => return,
        };
        if let Ok(mut state) = self.state.lock() {
            state.known = known;
        }
    }

    /// An idle connection on the file, or a new one; `None` when no file is known, or the
    /// path names another file now (then nothing is known until the pool learns it again).
    fn take(&self) -> Option<ReadConnection> {
        let (path, id) = {
            let mut state = self.state.lock().ok()?;
            let State { known, idle } = &mut *state;
            let Known::File { path, id, checked } = known else {
                return None;
            };
            if checked.elapsed() >= RECHECK {
                if file_id(path) != Some(*id) {
                    *known = Known::Unknown;
                    idle.clear();
                    return None;
                }
                *checked = Instant::now();
            }
            while let Some(read) = idle.pop() {
                if read.file == *id && read.opened.elapsed() < MAX_LIFETIME {
                    return Some(read);
                }
            }
            (path.clone(), *id)
        };
        let read = open(&path, id)?;
        // Opened by name: the file must still be the one learnt.
        (file_id(&path) == Some(id)).then_some(read)
    }

    fn give_back(&self, connection: ReadConnection) {
        if let Ok(mut state) = self.state.lock()
            && state.idle.len() < IDLE_CONNECTIONS
        {
            state.idle.push(connection);
        }
    }
}

/// A read connection on `file` (which must exist: it is never created here), taken to be the
/// file `id`.
fn open(file: &Path, id: FileId) -> Option<ReadConnection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(file, flags).ok()?;
    // Busy at once, never waiting on the calling thread: the pool waits instead.
    connection.busy_timeout(Duration::ZERO).ok()?;
    connection.pragma_update(None, "query_only", true).ok()?;
    Some(ReadConnection {
        connection,
        file: id,
        opened: Instant::now(),
    })
}

fn query<T>(
    connection: &Connection,
    sql: &str,
    param: impl ToSql,
    answer: impl FnOnce(Option<&Row<'_>>) -> T,
) -> Option<T> {
    let mut statement = connection.prepare_cached(sql).ok()?;
    let mut rows = statement.query([param]).ok()?;
    let row = rows.next().ok()?;
    Some(answer(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with one table, and a read connection on it.
    fn read_connection(name: &str) -> (PathBuf, ReadConnection) {
        let path =
            std::env::temp_dir().join(format!("apitoken-reads-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        let read = open(&path, file_id(&path).unwrap()).unwrap();
        (path, read)
    }

    #[test]
    fn a_read_connection_cannot_write() {
        let (path, read) = read_connection("write");
        assert!(
            read.connection
                .execute("INSERT INTO t VALUES (2)", [])
                .is_err()
        );
        let count: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_file_that_does_not_exist_is_not_created() {
        let path =
            std::env::temp_dir().join(format!("apitoken-reads-missing-{}.db", std::process::id()));
        assert!(open(&path, file_id(&std::env::temp_dir()).unwrap()).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn nothing_is_read_before_the_file_is_learnt() {
        let reads = DirectReads::default();
        assert!(!reads.learnt());
        assert!(reads.read("SELECT 1", 1, |_| ()).is_none());
    }
}
