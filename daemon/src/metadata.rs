//! The snapshot metadata: one redb database, each RPC's change one write
//! transaction, so a crash at any point leaves either the state before the
//! call or the state after it (redb's commit is atomic and durable).
//!
//! A snapshot's record is keyed by its name (active/view: the key
//! containerd chose; committed: the name it committed to) and carries a
//! numeric id that names its directory; commit keeps the id, as
//! containerd's own storage does.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use ringstar_core::Digest;

use crate::error::{
    AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, SnapError,
};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A remote layer a committed snapshot is served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRef {
    /// The layer blob's digest (stored as its string).
    #[serde(with = "digest_string")]
    pub digest: Digest,
    /// Its directory in the layer filesystem.
    pub layer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Disk usage stored at commit (bytes, inodes).
    pub size: i64,
    pub inodes: i64,
    pub remote: Option<RemoteRef>,
}

/// What a new snapshot is.
#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    pub key: &'a str,
    pub parent: &'a str,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
}

/// What a commit turns an active snapshot into.
#[derive(Debug, Clone)]
pub struct CommitAs<'a> {
    pub name: &'a str,
    pub key: &'a str,
    pub labels: BTreeMap<String, String>,
    pub size: i64,
    pub inodes: i64,
    pub remote: Option<RemoteRef>,
}

#[derive(Debug)]
pub struct Metadata {
    db: Database,
}

/// A digest in a record: its string, as records always stored it.
mod digest_string {
    use ringstar_core::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn db_err(e: impl Into<redb::Error>) -> SnapError {
    SnapError::from(Internal::Database(e.into()))
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapError> {
    serde_json::from_slice(bytes).map_err(|cause| {
        SnapError::from(Internal::Record {
            key: key.to_string(),
            cause,
        })
    })
}

fn not_found(key: &str) -> SnapError {
    SnapError::NotFound(NotFound::Snapshot {
        key: key.to_string(),
    })
}

fn already_exists(key: &str) -> SnapError {
    SnapError::AlreadyExists(AlreadyExists::Snapshot {
        key: key.to_string(),
    })
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("records serialize")
}

impl Metadata {
    pub fn open(path: &Path) -> Result<Metadata, SnapError> {
        let db = Database::create(path).map_err(db_err)?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(SNAPSHOTS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Metadata { db })
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn stat(&self, key: &str) -> Result<Record, SnapError> {
        self.get(key)?.ok_or_else(|| not_found(key))
    }

    /// Every snapshot, by name.
    pub fn all(&self) -> Result<Vec<(String, Record)>, SnapError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The snapshot and its ancestors, nearest first.
    pub fn chain(&self, key: &str) -> Result<Vec<(String, Record)>, SnapError> {
        let mut out = Vec::new();
        let mut name = key.to_string();
        while !name.is_empty() {
            let rec = self.stat(&name)?;
            let parent = rec.parent.clone();
            out.push((name, rec));
            if out.len() > 4096 {
                return Err(SnapError::from(Internal::ChainLoops {
                    key: key.to_string(),
                }));
            }
            name = parent;
        }
        Ok(out)
    }

    /// Adds an active or view snapshot; its parent must be committed.
    /// `before_commit` runs inside the transaction with the new record
    /// (the caller puts its directory in place): if it fails, nothing is
    /// stored.
    pub fn create(
        &self,
        new: NewSnapshot<'_>,
        before_commit: impl FnOnce(&Record) -> Result<(), SnapError>,
    ) -> Result<Record, SnapError> {
        if new.key.is_empty() {
            return Err(SnapError::InvalidArgument(InvalidArgument::EmptyKey));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if table.get(new.key).map_err(db_err)?.is_some() {
                return Err(already_exists(new.key));
            }
            if !new.parent.is_empty() {
                let parent = match table.get(new.parent).map_err(db_err)? {
                    Some(v) => decode(new.parent, v.value())?,
                    None => {
                        return Err(SnapError::NotFound(NotFound::Parent {
                            parent: new.parent.to_string(),
                        }));
                    }
                };
                if parent.kind != Kind::Committed {
                    return Err(SnapError::InvalidArgument(
                        InvalidArgument::ParentNotCommitted {
                            parent: new.parent.to_string(),
                        },
                    ));
                }
            }
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let id = counters
                .get(NEXT_ID)
                .map_err(db_err)?
                .map_or(1, |v| v.value());
            counters.insert(NEXT_ID, id + 1).map_err(db_err)?;
            let now = SystemTime::now();
            let record = Record {
                id,
                kind: new.kind,
                parent: new.parent.to_string(),
                labels: new.labels,
                created: now,
                updated: now,
                size: 0,
                inodes: 0,
                remote: None,
            };
            table
                .insert(new.key, encode(&record).as_slice())
                .map_err(db_err)?;
            record
        };
        before_commit(&record)?;
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Turns active snapshot `key` into committed snapshot `name` (same
    /// id, same parent).
    pub fn commit(&self, c: CommitAs<'_>) -> Result<Record, SnapError> {
        if c.name.is_empty() {
            return Err(SnapError::InvalidArgument(InvalidArgument::EmptyName));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let active = match table.get(c.key).map_err(db_err)? {
                Some(v) => decode(c.key, v.value())?,
                None => {
                    return Err(not_found(c.key));
                }
            };
            if active.kind != Kind::Active {
                return Err(SnapError::FailedPrecondition(
                    FailedPrecondition::NotActive {
                        key: c.key.to_string(),
                        kind: active.kind.as_str(),
                    },
                ));
            }
            if table.get(c.name).map_err(db_err)?.is_some() {
                return Err(already_exists(c.name));
            }
            let now = SystemTime::now();
            let record = Record {
                kind: Kind::Committed,
                labels: c.labels,
                created: now,
                updated: now,
                size: c.size,
                inodes: c.inodes,
                remote: c.remote,
                ..active
            };
            table.remove(c.key).map_err(db_err)?;
            table
                .insert(c.name, encode(&record).as_slice())
                .map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Removes `key`, refused while another snapshot names it as parent.
    pub fn remove(&self, key: &str) -> Result<Record, SnapError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let record = match table.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => {
                    return Err(not_found(key));
                }
            };
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                if decode(k.value(), v.value())?.parent == key {
                    return Err(SnapError::FailedPrecondition(
                        FailedPrecondition::HasChild {
                            key: key.to_string(),
                            child: k.value().to_string(),
                        },
                    ));
                }
            }
            table.remove(key).map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Replaces `key`'s labels with what `f` makes of them.
    pub fn update_labels(
        &self,
        key: &str,
        f: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<Record, SnapError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut record = match table.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => {
                    return Err(not_found(key));
                }
            };
            f(&mut record.labels);
            record.updated = SystemTime::now();
            table
                .insert(key, encode(&record).as_slice())
                .map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(key: &'a str, parent: &'a str) -> NewSnapshot<'a> {
        NewSnapshot {
            key,
            parent,
            kind: Kind::Active,
            labels: BTreeMap::new(),
        }
    }

    fn commit<'a>(name: &'a str, key: &'a str) -> CommitAs<'a> {
        CommitAs {
            name,
            key,
            labels: BTreeMap::from([("l".to_string(), "v".to_string())]),
            size: 10,
            inodes: 2,
            remote: None,
        }
    }

    #[test]
    fn lifecycle_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let m = Metadata::open(&path).unwrap();
        let a = m.create(new("a", ""), |_| Ok(())).unwrap();
        assert!(matches!(
            m.create(new("a", ""), |_| Ok(())),
            Err(SnapError::AlreadyExists(_))
        ));
        assert!(matches!(
            m.create(new("b", "nope"), |_| Ok(())),
            Err(SnapError::NotFound(_))
        ));
        assert!(matches!(
            m.create(new("b", "a"), |_| Ok(())),
            Err(SnapError::InvalidArgument(_))
        ));
        let c = m.commit(commit("base", "a")).unwrap();
        assert_eq!(c.id, a.id);
        assert_eq!(c.kind, Kind::Committed);
        assert!(m.get("a").unwrap().is_none());
        let b = m.create(new("b", "base"), |_| Ok(())).unwrap();
        assert!(b.id > a.id);
        assert!(matches!(
            m.commit(commit("base", "b")),
            Err(SnapError::AlreadyExists(_))
        ));
        assert!(matches!(
            m.remove("base"),
            Err(SnapError::FailedPrecondition(_))
        ));
        let chain = m.chain("b").unwrap();
        assert_eq!(
            chain.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["b", "base"]
        );
        m.update_labels("b", |l| {
            l.insert("x".into(), "y".into());
        })
        .unwrap();
        drop(m);
        // Reopened: everything is still there.
        let m = Metadata::open(&path).unwrap();
        assert_eq!(m.stat("b").unwrap().labels["x"], "y");
        m.remove("b").unwrap();
        m.remove("base").unwrap();
        assert!(m.all().unwrap().is_empty());
        // A failure before commit stores nothing.
        assert!(
            m.create(new("z", ""), |_| Err(Internal::ChainLoops {
                key: "no".into()
            }
            .into()))
                .is_err()
        );
        assert!(m.get("z").unwrap().is_none());
        // Ids are never reused.
        assert!(m.create(new("c", ""), |_| Ok(())).unwrap().id > b.id);
    }
}
