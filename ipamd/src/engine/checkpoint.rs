//! The checkpoint: who holds which address, on disk, in the anchor's format, so a restarted ipamd (or the anchor
//! after a rollback, or we after the anchor) knows every running pod's address.
//!
//! **File** (the anchor's, since v1.12): `AWS_VPC_K8S_CNI_BACKING_STORE`, default `/var/run/aws-node/ipam.json`:
//!
//! ```json
//! {"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"8f3c…","ifName":"eth0",
//!   "ipv4":"10.0.3.17","allocationTimestamp":1767225600123456789,
//!   "metadata":{"k8sPodNamespace":"default","k8sPodName":"nginx"}}]}
//! ```
//!
//! In IPv6 mode an allocation carries `"ipv6":"2600:…::5"` (Go's text form, which is Rust's) and no `ipv4`, as the
//! anchor writes it; an allocation with neither is refused.
//!
//! Field for field the anchor's `CheckpointData` as Go's encoder writes it (one line, a trailing newline;
//! `allocations` may be `null`; `ipv6`, `metadata` members and `interfacesCount` are left out when empty;
//! unknown members are ignored). Only assignments are stored: free addresses and cooldowns are not (as in the
//! anchor). The anchor's placeholder keys of allocations it migrated from CRI (`_migrated-from-cri`/`unknown`)
//! are kept as they are and honoured on DEL ([`crate::core::datastore`]).
//!
//! **Reading** ([`read`]) happens before anything else at startup. A missing file is a fresh node. A file that is
//! empty, truncated, not JSON, of another format or of a newer version stops ipamd with a [`CheckpointError`]
//! naming the file, and the file is left exactly as it is: it is never silently replaced, because it is the only
//! record of which running pod holds which address.
//!
//! **Writing** ([`hostfs::write_atomic`], mode 0600) is atomic and durable: the whole file goes to `<name>.tmp` in the same
//! directory, which is fsync'd, renamed over the file, and the directory is fsync'd so the rename itself survives
//! a power loss. A reader (us after a crash, the anchor after a rollback) sees the old file or the new one, never
//! a mix.
//!
//! **Group commit** ([`Checkpoint::persist`]). An ADD (and a DEL) returns only once a checkpoint containing its
//! change is on disk. Rewriting and fsyncing the file once per request would serialise every ADD behind a disk
//! flush; instead every change bumps the datastore's generation ([`crate::core::datastore::Datastore::generation`]),
//! and a request waits until the generation on disk is at least its own. One writer at a time holds the write
//! lock; whoever gets it snapshots the *current* datastore (under its mutex, so the snapshot and its generation
//! agree) and writes it. Requests that arrived while a write was in flight queue on the lock; the next writer's
//! snapshot already holds all of their changes, so one write and one fsync release the whole queue, and each of
//! them returns at once when it sees its generation on disk. Under a burst of N concurrent ADDs this costs about
//! two writes instead of N, and the guarantee is unchanged: when a request returns, its change, and every change
//! made before it, is on disk. A failed write fails every request it was meant to cover (an ADD then gives its
//! address back and fails with `INTERNAL`); the next request tries again. Changes nobody waits for (GC,
//! evictions by reconcile, releases at restart) are written by a background flusher within a second.
//!
//! Every write's duration is reported to an observer (`awscni_checkpoint_write_seconds` in the daemon). Cost: on
//! a node the default path is under `/var/run`, i.e. `/run`, a tmpfs, where fsync costs nothing (and the file,
//! like the pods, does not outlive a reboot); on a disk each write costs two journal commits (file and
//! directory; about 10 ms on the test machines' ext4), which group commit shares among concurrent requests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::datastore::{AssignmentRecord, IpamKey, PodMeta};
use crate::core::family::V6;

/// The format this module reads and writes (the anchor's `CheckpointFormatVersion`).
pub const FORMAT_VERSION: &str = "vpc-cni-ipam/1";
/// The variable naming the checkpoint file (the anchor's).
pub const ENV_BACKING_STORE: &str = "AWS_VPC_K8S_CNI_BACKING_STORE";
/// The anchor's default checkpoint file.
pub const DEFAULT_PATH: &str = "/var/run/aws-node/ipam.json";
const VERSION_PREFIX: &str = "vpc-cni-ipam/";

/// Why the checkpoint could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} is empty; it was left as it is (move it aside to start without it)"
    )]
    Empty { path: PathBuf },
    #[error(
        "checkpoint {path} is truncated (the JSON ends at line {line}, column {column}); it was left as it is \
         (move it aside to start without it)"
    )]
    Truncated {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("checkpoint {path} is corrupt: {reason}; it was left as it is (move it aside to start without it)")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "checkpoint {path} has version {version:?}, newer than this ipamd understands ({FORMAT_VERSION}): it was \
         written by a newer release; it was left as it is (run that release, or move the file aside)"
    )]
    FutureVersion { path: PathBuf, version: String },
    #[error(
        "checkpoint {path} has an unknown format {version:?} (expected {FORMAT_VERSION}); it was left as it is \
         (move it aside to start without it)"
    )]
    UnknownFormat { path: PathBuf, version: String },
    #[error("checkpoint {path}: allocation {index} ({container}) has neither an IPv4 nor an IPv6 address")]
    NoIpv4 {
        path: PathBuf,
        index: usize,
        container: String,
    },
    #[error("checkpoint {path}: cannot encode it: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("checkpoint {path}: cannot write it: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: the writer thread failed: {reason}")]
    Writer { path: PathBuf, reason: String },
}

// === the file format ===

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FileData {
    version: String,
    #[serde(default)]
    allocations: Option<Vec<FileEntry>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FileEntry {
    #[serde(rename = "networkName", default)]
    network_name: String,
    #[serde(rename = "containerID", default)]
    container_id: String,
    #[serde(rename = "ifName", default)]
    if_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ipv4: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ipv6: String,
    #[serde(rename = "allocationTimestamp", default)]
    allocation_timestamp: i64,
    #[serde(default)]
    metadata: FileMetadata,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct FileMetadata {
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    namespace: String,
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    name: String,
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    interfaces_count: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One assignment read from the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub key: IpamKey,
    pub meta: PodMeta,
    /// `ipv4`, or `ipv6` in IPv6 mode.
    pub ip: IpAddr,
    /// `allocationTimestamp`, since the Unix epoch.
    pub wall: Duration,
}

/// The checkpoint file named by `AWS_VPC_K8S_CNI_BACKING_STORE` in `get` (default [`DEFAULT_PATH`]).
pub fn path_from_env(get: impl Fn(&str) -> Option<String>) -> PathBuf {
    get(ENV_BACKING_STORE)
        .filter(|p| !p.trim().is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// Reads the checkpoint at `path`: `None` when there is none (a fresh node). See the module docs for errors.
pub fn read(path: &Path) -> Result<Option<Vec<CheckpointEntry>>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a checkpoint's bytes; `path` is only for errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<CheckpointEntry>, CheckpointError> {
    let path = path.to_owned();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CheckpointError::Empty { path });
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Eof {
            CheckpointError::Truncated {
                path: path.clone(),
                line: e.line(),
                column: e.column(),
            }
        } else {
            CheckpointError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }
        }
    })?;
    let Some(version) = value.get("version").and_then(|v| v.as_str()) else {
        return Err(CheckpointError::Corrupt {
            path,
            reason: "no \"version\" string: not a vpc-cni-ipam checkpoint".into(),
        });
    };
    if version != FORMAT_VERSION {
        let newer = version
            .strip_prefix(VERSION_PREFIX)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 1);
        let version = version.to_string();
        return Err(if newer {
            CheckpointError::FutureVersion { path, version }
        } else {
            CheckpointError::UnknownFormat { path, version }
        });
    }
    let data: FileData = serde_json::from_value(value).map_err(|e| CheckpointError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (index, e) in data.allocations.unwrap_or_default().into_iter().enumerate() {
        let ip: IpAddr = if !e.ipv4.is_empty() {
            IpAddr::V4(
                e.ipv4
                    .parse::<Ipv4Addr>()
                    .map_err(|_| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "allocation {index} ({}) has an invalid ipv4 {:?}",
                            e.container_id, e.ipv4
                        ),
                    })?,
            )
        } else if !e.ipv6.is_empty() {
            IpAddr::V6(
                e.ipv6
                    .parse::<Ipv6Addr>()
                    .map_err(|_| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "allocation {index} ({}) has an invalid ipv6 {:?}",
                            e.container_id, e.ipv6
                        ),
                    })?,
            )
        } else {
            return Err(CheckpointError::NoIpv4 {
                path,
                index,
                container: e.container_id,
            });
        };
        out.push(CheckpointEntry {
            key: IpamKey {
                network_name: e.network_name,
                container_id: e.container_id,
                if_name: e.if_name,
            },
            meta: PodMeta {
                namespace: e.metadata.namespace,
                name: e.metadata.name,
            },
            ip,
            wall: Duration::from_nanos(u64::try_from(e.allocation_timestamp).unwrap_or(0)),
        });
    }
    Ok(out)
}

/// The file's bytes for these assignments (the anchor's encoding: compact JSON and a newline).
pub fn encode(records: &[AssignmentRecord]) -> Result<Vec<u8>, serde_json::Error> {
    encode_all(records, &[])
}

fn file_entry(r_key: &IpamKey, meta: &PodMeta, wall: Duration, ip: IpAddr) -> FileEntry {
    let (ipv4, ipv6) = match ip {
        IpAddr::V4(a) => (a.to_string(), String::new()),
        IpAddr::V6(a) => (String::new(), a.to_string()),
    };
    FileEntry {
        network_name: r_key.network_name.clone(),
        container_id: r_key.container_id.clone(),
        if_name: r_key.if_name.clone(),
        ipv4,
        ipv6,
        allocation_timestamp: i64::try_from(wall.as_nanos()).unwrap_or(i64::MAX),
        metadata: FileMetadata {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            interfaces_count: 0,
        },
    }
}

/// [`encode`] with IPv6 assignments too (IPv6 mode): each in the `ipv6` member, as the anchor writes them.
pub fn encode_all(
    v4: &[AssignmentRecord],
    v6: &[AssignmentRecord<V6>],
) -> Result<Vec<u8>, serde_json::Error> {
    let entries = v4
        .iter()
        .map(|r| file_entry(&r.key, &r.meta, r.wall, IpAddr::V4(r.allocation.ip)))
        .chain(
            v6.iter()
                .map(|r| file_entry(&r.key, &r.meta, r.wall, IpAddr::V6(r.allocation.ip))),
        )
        .collect();
    let data = FileData {
        version: FORMAT_VERSION.to_string(),
        allocations: Some(entries),
    };
    let mut bytes = serde_json::to_vec(&data)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// What one write holds: the datastore generation it covers and every assignment, of both IP versions.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub v4: Vec<AssignmentRecord>,
    pub v6: Vec<AssignmentRecord<V6>>,
}

impl From<(u64, Vec<AssignmentRecord>)> for Snapshot {
    fn from((generation, v4): (u64, Vec<AssignmentRecord>)) -> Snapshot {
        Snapshot {
            generation,
            v4,
            v6: Vec::new(),
        }
    }
}

/// Called with the duration of every write (for the latency histogram).
pub type WriteObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// The checkpoint file and its group-commit writer (see the module docs).
pub struct Checkpoint {
    path: PathBuf,
    write_lock: tokio::sync::Mutex<()>,
    durable: AtomicU64,
    writes: AtomicU64,
    observer: Option<WriteObserver>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("durable", &self.durable_generation())
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// A writer for `path` (nothing is written until asked).
    pub fn new(path: impl Into<PathBuf>) -> Checkpoint {
        Checkpoint {
            path: path.into(),
            write_lock: tokio::sync::Mutex::new(()),
            durable: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            observer: None,
        }
    }

    /// Reports every write's duration to `observer`.
    pub fn with_observer(mut self, observer: WriteObserver) -> Checkpoint {
        self.observer = Some(observer);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The datastore generation known to be on disk.
    pub fn durable_generation(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Writes done so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Returns once generation `generation` (or a later one) is on disk, writing it unless a write already did.
    /// `snapshot` gives the current generation and assignments, read together under the datastore's lock.
    pub async fn persist<S: Into<Snapshot>>(
        &self,
        generation: u64,
        snapshot: impl Fn() -> S + Sync,
    ) -> Result<(), CheckpointError> {
        if self.durable_generation() >= generation {
            return Ok(());
        }
        let _writer = self.write_lock.lock().await;
        // While we queued, the writer before us may have covered our change: its snapshot was taken after it.
        if self.durable_generation() >= generation {
            return Ok(());
        }
        self.write_locked(&|| snapshot().into()).await
    }

    /// Writes the current state whatever is on disk (startup, shutdown).
    pub async fn persist_now<S: Into<Snapshot>>(
        &self,
        snapshot: impl Fn() -> S + Sync,
    ) -> Result<(), CheckpointError> {
        let _writer = self.write_lock.lock().await;
        self.write_locked(&|| snapshot().into()).await
    }

    async fn write_locked(
        &self,
        snapshot: &(dyn Fn() -> Snapshot + Sync),
    ) -> Result<(), CheckpointError> {
        let Snapshot { generation, v4, v6 } = snapshot();
        let bytes = encode_all(&v4, &v6).map_err(|e| CheckpointError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // The observer measures the real duration of a disk write (a latency metric), not engine time.
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        let path = self.path.clone();
        // fsync blocks for milliseconds: keep it off the runtime's worker threads. The write lock stays held
        // until it is done, so two writes never race on the temp file.
        let res = tokio::task::spawn_blocking(move || {
            hostfs::write_atomic(&path, &bytes, hostfs::STATE_FILE_MODE)
                .map_err(std::io::Error::from)
        })
        .await;
        if let Some(observe) = &self.observer {
            observe(started.elapsed());
        }
        match res {
            Ok(Ok(())) => {
                self.durable.fetch_max(generation, Ordering::AcqRel);
                self.writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(source)) => Err(CheckpointError::Write {
                path: self.path.clone(),
                source,
            }),
            Err(e) => Err(CheckpointError::Writer {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::datastore::Allocation;

    /// The anchor's checkpoint as its Go encoder writes it, including a CRI-migration placeholder.
    pub(crate) const ANCHOR_FILE: &str = concat!(
        r#"{"version":"vpc-cni-ipam/1","allocations":["#,
        r#"{"networkName":"aws-cni","containerID":"3f1c0e","ifName":"eth0","ipv4":"10.0.0.7","#,
        r#""allocationTimestamp":1767225600123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0"}},"#,
        r#"{"networkName":"_migrated-from-cri","containerID":"77aa01","ifName":"unknown","ipv4":"10.0.0.8","#,
        r#""allocationTimestamp":1600000000000000000,"metadata":{}}]}"#,
        "\n"
    );

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ipamd-checkpoint-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("ipam.json")
    }

    fn record(c: &str, ip: [u8; 4], wall: u64) -> AssignmentRecord {
        AssignmentRecord {
            key: IpamKey {
                network_name: "aws-cni".into(),
                container_id: c.into(),
                if_name: "eth0".into(),
            },
            meta: PodMeta {
                namespace: "default".into(),
                name: format!("pod-{c}"),
            },
            allocation: Allocation {
                ip: Ipv4Addr::from(ip),
                eni_id: "eni-1".into(),
                device_number: 0,
                route_table: 254,
            },
            wall: Duration::from_nanos(wall),
            assigned_at: Duration::ZERO,
        }
    }

    #[test]
    fn reads_the_anchors_file() {
        let entries = parse(Path::new("ipam.json"), ANCHOR_FILE.as_bytes()).expect("parse");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key.container_id, "3f1c0e");
        assert_eq!(entries[0].meta.name, "web-0");
        assert_eq!(entries[0].ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(
            entries[0].wall,
            Duration::from_nanos(1_767_225_600_123_456_789)
        );
        assert_eq!(entries[1].key.network_name, "_migrated-from-cri");
        assert_eq!(entries[1].key.if_name, "unknown");
        assert_eq!(entries[1].meta, PodMeta::default());
        // Go encodes an empty slice of a nil value as null.
        let none = parse(
            Path::new("x"),
            br#"{"version":"vpc-cni-ipam/1","allocations":null}"#,
        )
        .expect("null allocations");
        assert!(none.is_empty());
    }

    #[test]
    fn writes_what_the_anchor_writes() {
        let bytes =
            encode(&[record("3f1c0e", [10, 0, 0, 7], 1_767_225_600_123_456_789)]).expect("encode");
        let text = String::from_utf8(bytes).expect("utf8");
        assert_eq!(
            text,
            concat!(
                r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"3f1c0e","#,
                r#""ifName":"eth0","ipv4":"10.0.0.7","allocationTimestamp":1767225600123456789,"#,
                r#""metadata":{"k8sPodNamespace":"default","k8sPodName":"pod-3f1c0e"}}]}"#,
                "\n"
            )
        );
        let back = parse(Path::new("x"), text.as_bytes()).expect("round trip");
        assert_eq!(back[0].key.container_id, "3f1c0e");
        assert_eq!(
            back[0].wall,
            Duration::from_nanos(1_767_225_600_123_456_789)
        );
    }

    /// An IPv6-mode checkpoint as the anchor's Go encoder writes it: `ipv6` set, `ipv4` omitted.
    pub(crate) const ANCHOR_FILE_V6: &str = concat!(
        r#"{"version":"vpc-cni-ipam/1","allocations":["#,
        r#"{"networkName":"aws-cni","containerID":"9e2f","ifName":"eth0","ipv6":"2600:1f14:ab:c800:1::5","#,
        r#""allocationTimestamp":1767225600123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1"}}]}"#,
        "\n"
    );

    #[test]
    fn ipv6_entries_are_read_and_written_in_the_anchors_form() {
        let entries = parse(Path::new("ipam.json"), ANCHOR_FILE_V6.as_bytes()).expect("parse");
        assert_eq!(entries.len(), 1);
        let ip: Ipv6Addr = "2600:1f14:ab:c800:1::5".parse().expect("ip");
        assert_eq!(entries[0].ip, IpAddr::V6(ip));
        let e = &entries[0];
        let rec = AssignmentRecord::<V6> {
            key: e.key.clone(),
            meta: e.meta.clone(),
            allocation: Allocation {
                ip,
                eni_id: "eni-1".into(),
                device_number: 0,
                route_table: 254,
            },
            wall: e.wall,
            assigned_at: Duration::ZERO,
        };
        let bytes = encode_all(&[], &[rec]).expect("encode");
        assert_eq!(String::from_utf8(bytes).expect("utf8"), ANCHOR_FILE_V6);
    }

    #[test]
    fn bad_files_are_named_and_classified() {
        let p = Path::new("/var/run/aws-node/ipam.json");
        let truncated = &ANCHOR_FILE.as_bytes()[..ANCHOR_FILE.len() / 2];
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "is empty"),
            (b"  \n", "is empty"),
            (truncated, "is truncated"),
            (b"{\"version\":\"vpc-cni-ipam/1\",\"allocations\":[}", "is corrupt"),
            (b"\x00\x01garbage", "is corrupt"),
            (b"[1,2]", "is corrupt"),
            (br#"{"version":"vpc-cni-ipam/2","allocations":[]}"#, "newer than"),
            (br#"{"version":"something-else","allocations":[]}"#, "unknown format"),
            (
                br#"{"version":"vpc-cni-ipam/1","allocations":[{"containerID":"c","ipv4":"300.1.1.1"}]}"#,
                "invalid ipv4",
            ),
            (
                br#"{"version":"vpc-cni-ipam/1","allocations":[{"containerID":"c"}]}"#,
                "neither an IPv4 nor an IPv6",
            ),
            (
                br#"{"version":"vpc-cni-ipam/1","allocations":[{"containerID":"c","ipv6":"fd00::g"}]}"#,
                "invalid ipv6",
            ),
            (br#"{"version":"vpc-cni-ipam/1","allocations":{"a":1}}"#, "is corrupt"),
        ];
        for (bytes, want) in cases {
            let err = parse(p, bytes).expect_err("must fail");
            let msg = err.to_string();
            assert!(msg.contains("/var/run/aws-node/ipam.json"), "{msg}");
            assert!(msg.contains(want), "{want:?} not in {msg:?}");
        }
    }

    #[test]
    fn missing_file_is_a_fresh_node_and_bad_file_is_kept() {
        let path = tmp("missing");
        assert_eq!(read(&path).expect("no file"), None);
        std::fs::write(&path, b"{\"version\":").expect("write");
        assert!(matches!(
            read(&path),
            Err(CheckpointError::Truncated { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("still there"), b"{\"version\":");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn path_comes_from_the_anchors_variable() {
        assert_eq!(path_from_env(|_| None), PathBuf::from(DEFAULT_PATH));
        assert_eq!(
            path_from_env(|k| (k == ENV_BACKING_STORE).then(|| "/tmp/x.json".to_string())),
            PathBuf::from("/tmp/x.json")
        );
    }

    #[tokio::test]
    async fn concurrent_persists_share_writes_and_each_sees_its_change_on_disk() {
        let path = tmp("group");
        let cp = Arc::new(Checkpoint::new(&path));
        let state = Arc::new(std::sync::Mutex::new((
            0u64,
            Vec::<AssignmentRecord>::new(),
        )));
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let cp = Arc::clone(&cp);
            let state = Arc::clone(&state);
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let generation = {
                    let mut st = state.lock().expect("lock");
                    st.0 += 1;
                    st.1.push(record(&format!("c{i}"), [10, 0, 1, i], u64::from(i)));
                    st.0
                };
                let snap = || state.lock().expect("lock").clone();
                cp.persist(generation, snap).await.expect("persist");
                // Durable before returning: the file on disk holds this change.
                let on_disk = read(&path).expect("read").expect("file");
                assert!(on_disk
                    .iter()
                    .any(|e| e.key.container_id == format!("c{i}")));
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(cp.durable_generation(), 64);
        assert!(cp.writes() < 64, "writes were not shared: {}", cp.writes());
        assert_eq!(read(&path).expect("read").expect("file").len(), 64);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn failed_write_is_reported_with_the_path() {
        let path = tmp("fail");
        // A directory where the temp file should go makes the write fail.
        std::fs::create_dir_all(path.with_file_name("ipam.json.tmp")).expect("mkdir");
        let cp = Checkpoint::new(&path);
        let err = cp
            .persist(1, || (1, vec![record("c", [10, 0, 0, 9], 0)]))
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains("ipam.json"), "{err}");
        assert_eq!(cp.durable_generation(), 0);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
