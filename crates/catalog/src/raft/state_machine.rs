//! The flags table as a Raft state machine in redb. An entry runs its operations with the same
//! rules as the single-process store at the entry's time (the leader's clock when it proposed
//! it, never earlier than any entry before), and an entry without operations is the sweep that
//! turns every FALSE flag past its deadline into ERROR, so every replica reaches the same table
//! from the same log whatever its own clock says.
//!
//! Next to the flags, partition 0 keeps each cloud's bucket → worker map with its epoch (a map
//! replaces the stored one only under a greater epoch) and the revoked app tokens' ids.
//!
//! The applied table lives in memory; redb holds the last snapshot (written durably before the
//! log may be purged up to it). After a crash the node starts from that snapshot and openraft
//! applies the durable log after it again, so applying an entry costs no storage write at all.

use super::durable::DurableFile;
use super::types::{
    io_error, Batch, BatchResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig, WireError,
};
use super::types::{AccessRules, Assignment, Op};
use crate::rules::{check_request, check_ttls, Changes, Table};
use crate::store::{decode, encode};
use mcloud_core::BatchId;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: &str = "snapshot";

/// What replicas and readers see of the state machine.
#[derive(Default)]
pub struct SmState {
    pub table: Table,
    /// What partition 0 keeps besides flags.
    pub registers: Registers,
    /// The log's time: the largest proposal time applied so far.
    pub clock: u64,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Partition 0's registers next to the flags.
#[derive(Default)]
pub struct Registers {
    /// Each cloud's bucket → worker map, by party.
    pub assignments: BTreeMap<u16, Assignment>,
    /// Revocation ids of app tokens that no longer count.
    pub revoked: BTreeSet<String>,
    /// Sensors whose keys no longer count.
    pub revoked_sensors: BTreeSet<u32>,
    /// House owners' access rules, by user.
    pub access: BTreeMap<String, AccessRules>,
    /// Each cloud's settled time (see `Op::Settled`), by party.
    pub settled: BTreeMap<u16, u64>,
    /// The masters' storage and mailbox metadata.
    pub store: mcloud_store::master::Masters,
}

impl Registers {
    /// Before when decided flags may be forgotten: `keep_ms` before the earliest settled time
    /// of every cloud that stored a bucket map (and before `now`). None while some cloud has
    /// not reported: its stored batches may still need their flags.
    pub fn prune_before(&self, now: u64, keep_ms: u64) -> Option<u64> {
        let mut earliest = now;
        for party in self.assignments.keys() {
            earliest = earliest.min(*self.settled.get(party)?);
        }
        if self.assignments.is_empty() {
            return None;
        }
        Some(earliest.saturating_sub(keep_ms))
    }
}

pub type Shared = Arc<RwLock<SmState>>;

pub fn read(shared: &Shared) -> std::sync::RwLockReadGuard<'_, SmState> {
    // Memory is only changed after the redb commit, so a poisoned lock still holds a
    // consistent state.
    shared.read().unwrap_or_else(|p| p.into_inner())
}

fn write(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, SmState> {
    shared.write().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
    assignments: Vec<(u16, Assignment)>,
    revoked: Vec<String>,
    access: Vec<AccessRules>,
    revoked_sensors: Vec<u32>,
    settled: Vec<(u16, u64)>,
    store: mcloud_store::master::Masters,
}

/// A snapshot written before the catalog kept storage metadata.
#[derive(Deserialize)]
struct WithoutStore {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
    assignments: Vec<(u16, Assignment)>,
    revoked: Vec<String>,
    access: Vec<AccessRules>,
    revoked_sensors: Vec<u32>,
    settled: Vec<(u16, u64)>,
}

/// A snapshot written before the catalog kept the clouds' settled times.
#[derive(Deserialize)]
struct WithoutSettled {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
    assignments: Vec<(u16, Assignment)>,
    revoked: Vec<String>,
    access: Vec<AccessRules>,
    revoked_sensors: Vec<u32>,
}

/// A snapshot written before the catalog kept access rules.
#[derive(Deserialize)]
struct WithoutAccess {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
    assignments: Vec<(u16, Assignment)>,
    revoked: Vec<String>,
}

/// A snapshot written before the catalog kept revocations.
#[derive(Deserialize)]
struct WithoutRevocations {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
    assignments: Vec<(u16, Assignment)>,
}

/// A snapshot written before the catalog kept bucket maps.
#[derive(Deserialize)]
struct FlagsOnlySnapshot {
    clock: u64,
    flags: Vec<(u128, u8, u64)>,
}

/// What a snapshot restores.
struct Restored {
    table: Table,
    registers: Registers,
    clock: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

pub struct StateMachine {
    /// Holds the last snapshot; its writes retry until the disk takes them.
    file: DurableFile,
    shared: Shared,
}

fn enc<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(|e| io_error(what, e))
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(b).map_err(|e| io_error(what, e))
}

impl StateMachine {
    /// Opens the state machine in `dir`; its writes stop retrying once `closing` is set.
    pub fn open(dir: &Path, closing: Arc<AtomicBool>) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&dir.display().to_string(), e))?;
        let file = DurableFile::open(&dir.join("raft-state.redb"), "raft state", closing)?;
        let db = file.db()?;
        let txn = db.begin_write().map_err(|e| io_error("sm", e))?;
        txn.open_table(META).map_err(|e| io_error("sm", e))?;
        txn.commit().map_err(|e| io_error("sm", e))?;
        let mut state = SmState::default();
        let stored: Option<StoredSnapshot> = {
            let txn = db.begin_read().map_err(|e| io_error("sm", e))?;
            let meta = txn.open_table(META).map_err(|e| io_error("sm", e))?;
            let bytes = meta.get(SNAPSHOT).map_err(|e| io_error(SNAPSHOT, e))?;
            bytes.map(|b| dec(SNAPSHOT, b.value())).transpose()?
        };
        if let Some(stored) = stored {
            let restored = Self::decode_state(&stored.data)?;
            state.table = restored.table;
            state.registers = restored.registers;
            state.clock = restored.clock;
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership.clone();
        }
        drop(db);
        Ok(StateMachine {
            file,
            shared: Arc::new(RwLock::new(state)),
        })
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Runs one entry's operations on `table` at the entry's time, returning the answers and
    /// the changes (already applied to `table`).
    fn run_batch(
        table: &mut Table,
        registers: &mut Registers,
        clock: &mut u64,
        batch: &Batch,
    ) -> (BatchResult, Changes) {
        *clock = (*clock).max(batch.now_ms);
        let now = *clock;
        // Only the sweep entry writes ERROR; a SET that comes too late is told it missed the
        // deadline, as with the single-process store.
        let mut changes = if batch.ops.is_empty() {
            table.expired(now)
        } else {
            Vec::new()
        };
        table.apply(&changes);
        let mut answers = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            let result = match op {
                Op::Create(reqs) => check_request(reqs.iter().map(|r| r.id), reqs.len())
                    .and_then(|_| check_ttls(reqs))
                    .and_then(|_| table.create(reqs, now)),
                Op::Set(ids) => {
                    check_request(ids.iter().copied(), ids.len()).and_then(|_| table.set(ids, now))
                }
                Op::Verdict { ids, valid } => check_request(ids.iter().copied(), ids.len())
                    .and_then(|_| table.verdict(ids, *valid, now)),
                Op::Assign { party, assignment } => {
                    Self::assign(&mut registers.assignments, *party, assignment)
                        .map(|_| (Vec::new(), Vec::new()))
                }
                Op::Revoke(ids) => {
                    Self::revoke(&mut registers.revoked, ids).map(|_| (Vec::new(), Vec::new()))
                }
                Op::RevokeSensors(ids) => Self::revoke_sensors(&mut registers.revoked_sensors, ids)
                    .map(|_| (Vec::new(), Vec::new())),
                Op::SetAccess(rules) => {
                    Self::set_access(&mut registers.access, rules).map(|_| (Vec::new(), Vec::new()))
                }
                Op::Settled { party, before_ms } => {
                    let at = registers.settled.entry(*party).or_default();
                    *at = (*at).max(*before_ms);
                    Ok((Vec::new(), Vec::new()))
                }
                Op::ForgetCloud { party } => {
                    registers.assignments.remove(party);
                    registers.settled.remove(party);
                    Ok((Vec::new(), Vec::new()))
                }
                Op::Prune { before_ms } => {
                    table.prune(*before_ms);
                    Ok((Vec::new(), Vec::new()))
                }
                Op::Store(op) => registers
                    .store
                    .apply(op, now)
                    .map(|_| (Vec::new(), Vec::new()))
                    .map_err(crate::CatalogError::Store),
            };
            answers.push(match result {
                Ok((flags, c)) => {
                    table.apply(&c);
                    changes.extend(c);
                    Ok(flags)
                }
                Err(e) => Err(WireError::from(e)),
            });
        }
        (BatchResult(answers), changes)
    }

    fn assign(
        assignments: &mut BTreeMap<u16, Assignment>,
        party: u16,
        assignment: &Assignment,
    ) -> Result<(), crate::CatalogError> {
        assignment.check()?;
        if let Some(stored) = assignments.get(&party) {
            if assignment.epoch <= stored.epoch {
                return Err(crate::CatalogError::StaleEpoch {
                    party,
                    epoch: assignment.epoch,
                    stored: stored.epoch,
                });
            }
        }
        assignments.insert(party, assignment.clone());
        Ok(())
    }

    fn revoke(revoked: &mut BTreeSet<String>, ids: &[String]) -> Result<(), crate::CatalogError> {
        super::types::check_revocations(ids)?;
        let new = ids.iter().filter(|id| !revoked.contains(*id)).count();
        if revoked.len() + new > super::types::MAX_REVOCATIONS {
            return Err(crate::CatalogError::BadRevocation(format!(
                "the catalog keeps at most {} revocation ids",
                super::types::MAX_REVOCATIONS
            )));
        }
        revoked.extend(ids.iter().cloned());
        Ok(())
    }

    fn revoke_sensors(revoked: &mut BTreeSet<u32>, ids: &[u32]) -> Result<(), crate::CatalogError> {
        super::types::check_sensor_revocations(ids)?;
        let new = ids.iter().filter(|id| !revoked.contains(*id)).count();
        if revoked.len() + new > super::types::MAX_REVOCATIONS {
            return Err(crate::CatalogError::BadRevocation(format!(
                "the catalog keeps at most {} revoked sensors",
                super::types::MAX_REVOCATIONS
            )));
        }
        revoked.extend(ids.iter().copied());
        Ok(())
    }

    fn set_access(
        access: &mut BTreeMap<String, AccessRules>,
        rules: &AccessRules,
    ) -> Result<(), crate::CatalogError> {
        rules.check().map_err(crate::CatalogError::BadAccess)?;
        if !access.contains_key(&rules.user) && access.len() >= super::types::MAX_OWNERS {
            return Err(crate::CatalogError::BadAccess(format!(
                "the catalog keeps rules of at most {} owners",
                super::types::MAX_OWNERS
            )));
        }
        access.insert(rules.user.clone(), rules.clone());
        Ok(())
    }

    /// Writes `snapshot` durably: from now on the node restarts from it.
    async fn store_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = enc(SNAPSHOT, snapshot)?;
        self.file
            .write(SNAPSHOT, move |txn| {
                let mut meta = txn.open_table(META).map_err(|e| io_error(SNAPSHOT, e))?;
                meta.insert(SNAPSHOT, bytes.as_slice())
                    .map_err(|e| io_error(SNAPSHOT, e))?;
                Ok(())
            })
            .await
    }

    fn decode_state(data: &[u8]) -> Result<Restored, StorageError> {
        let decoded = Self::decode_data(data)?;
        let mut flags = Vec::with_capacity(decoded.flags.len());
        for (id, code, deadline_ms) in decoded.flags {
            let flag = decode(code, deadline_ms).map_err(|e| io_error(SNAPSHOT, e))?;
            flags.push((BatchId(id), flag));
        }
        let mut table = Table::default();
        table.apply(&flags);
        Ok(Restored {
            table,
            registers: Registers {
                assignments: decoded.assignments.into_iter().collect(),
                revoked: decoded.revoked.into_iter().collect(),
                revoked_sensors: decoded.revoked_sensors.into_iter().collect(),
                access: decoded
                    .access
                    .into_iter()
                    .map(|r| (r.user.clone(), r))
                    .collect(),
                settled: decoded.settled.into_iter().collect(),
                store: decoded.store,
            },
            clock: decoded.clock,
        })
    }

    /// Checks a snapshot a peer sent, received at `now_ms`, as the requests that built it
    /// were checked: a snapshot is installed whole and replaces every register, so without
    /// this a peer could install what no request could have written (an epoch at
    /// `u64::MAX`, a clock years ahead that expires every open flag at once).
    pub fn check_peer_snapshot(data: &[u8], now_ms: u64) -> Result<(), String> {
        let decoded = Self::decode_data(data).map_err(|e| format!("undecodable: {e}"))?;
        let ahead = |what: &'static str, t: u64| {
            super::bounds::clock(what, t, now_ms).map_err(|e| e.to_string())
        };
        ahead("snapshot clock", decoded.clock)?;
        for (id, code, deadline_ms) in &decoded.flags {
            decode(*code, *deadline_ms).map_err(|e| format!("flag {id:032x}: {e}"))?;
            ahead(
                "flag deadline",
                deadline_ms.saturating_sub(crate::rules::MAX_TTL_MS),
            )?;
        }
        if decoded.assignments.len() > usize::from(u16::MAX) {
            return Err(format!("{} bucket maps", decoded.assignments.len()));
        }
        for (party, a) in &decoded.assignments {
            a.check()
                .map_err(|e| format!("party {party}'s bucket map: {e}"))?;
        }
        if decoded.revoked.len() > super::types::MAX_REVOCATIONS
            || decoded.revoked_sensors.len() > super::types::MAX_REVOCATIONS
        {
            return Err(format!(
                "more than {} revocations",
                super::types::MAX_REVOCATIONS
            ));
        }
        for chunk in decoded
            .revoked
            .chunks(super::types::MAX_REVOCATIONS_PER_REQUEST)
        {
            super::types::check_revocations(chunk).map_err(|e| e.to_string())?;
        }
        if decoded.access.len() > super::types::MAX_OWNERS {
            return Err(format!(
                "rules of {} owners, more than {}",
                decoded.access.len(),
                super::types::MAX_OWNERS
            ));
        }
        for rules in &decoded.access {
            rules.check()?;
        }
        for (party, t) in &decoded.settled {
            ahead("settled time", *t).map_err(|e| format!("party {party}: {e}"))?;
        }
        decoded.store.check().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn decode_data(data: &[u8]) -> Result<SnapshotData, StorageError> {
        // Older formats fail to decode as the newer ones (they end earlier), so each is tried
        // after the ones that came later.
        let decoded: SnapshotData = match dec(SNAPSHOT, data) {
            Ok(d) => d,
            Err(e) => {
                if let Ok(old) = postcard::from_bytes::<WithoutStore>(data) {
                    SnapshotData {
                        clock: old.clock,
                        flags: old.flags,
                        assignments: old.assignments,
                        revoked: old.revoked,
                        access: old.access,
                        revoked_sensors: old.revoked_sensors,
                        settled: old.settled,
                        store: Default::default(),
                    }
                } else if let Ok(old) = postcard::from_bytes::<WithoutSettled>(data) {
                    SnapshotData {
                        clock: old.clock,
                        flags: old.flags,
                        assignments: old.assignments,
                        revoked: old.revoked,
                        access: old.access,
                        revoked_sensors: old.revoked_sensors,
                        settled: Vec::new(),
                        store: Default::default(),
                    }
                } else if let Ok(old) = postcard::from_bytes::<WithoutAccess>(data) {
                    SnapshotData {
                        clock: old.clock,
                        flags: old.flags,
                        assignments: old.assignments,
                        revoked: old.revoked,
                        access: Vec::new(),
                        revoked_sensors: Vec::new(),
                        settled: Vec::new(),
                        store: Default::default(),
                    }
                } else if let Ok(old) = postcard::from_bytes::<WithoutRevocations>(data) {
                    SnapshotData {
                        clock: old.clock,
                        flags: old.flags,
                        assignments: old.assignments,
                        revoked: Vec::new(),
                        access: Vec::new(),
                        revoked_sensors: Vec::new(),
                        settled: Vec::new(),
                        store: Default::default(),
                    }
                } else if let Ok(old) = postcard::from_bytes::<FlagsOnlySnapshot>(data) {
                    SnapshotData {
                        clock: old.clock,
                        flags: old.flags,
                        assignments: Vec::new(),
                        revoked: Vec::new(),
                        access: Vec::new(),
                        revoked_sensors: Vec::new(),
                        settled: Vec::new(),
                        store: Default::default(),
                    }
                } else {
                    return Err(e);
                }
            }
        };
        Ok(decoded)
    }

    fn encode_state(state: &SmState) -> Result<Vec<u8>, StorageError> {
        let flags = state
            .table
            .flags
            .iter()
            .map(|(id, f)| (id.0, encode(f), f.deadline_ms))
            .collect();
        enc(
            SNAPSHOT,
            &SnapshotData {
                clock: state.clock,
                flags,
                assignments: state
                    .registers
                    .assignments
                    .iter()
                    .map(|(p, a)| (*p, a.clone()))
                    .collect(),
                revoked: state.registers.revoked.iter().cloned().collect(),
                access: state.registers.access.values().cloned().collect(),
                revoked_sensors: state.registers.revoked_sensors.iter().copied().collect(),
                settled: state
                    .registers
                    .settled
                    .iter()
                    .map(|(p, t)| (*p, *t))
                    .collect(),
                store: state.registers.store.clone(),
            },
        )
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let state = read(&self.shared);
            let data = Self::encode_state(&state)?;
            let last = state.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: state.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    last.map(|l| l.leader_id.term).unwrap_or(0),
                    last.map(|l| l.index).unwrap_or(0)
                ),
            };
            (meta, data)
        };
        let stored = StoredSnapshot { meta, data };
        // Durable before openraft may purge the log up to it.
        self.store_snapshot(&stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = read(&self.shared);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = self.shared.clone();
        let mut guard = write(&shared);
        let mut results = Vec::new();
        let mut clock = guard.clock;
        let mut last_applied = guard.last_applied;
        let mut membership = guard.membership.clone();
        for entry in entries {
            last_applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => results.push(BatchResult::default()),
                EntryPayload::Normal(batch) => {
                    let state = &mut *guard;
                    let (answer, _) =
                        Self::run_batch(&mut state.table, &mut state.registers, &mut clock, batch);
                    results.push(answer);
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    results.push(BatchResult::default());
                }
            }
        }
        guard.clock = clock;
        guard.last_applied = last_applied;
        guard.membership = membership;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            file: self.file.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let restored = Self::decode_state(&data)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store_snapshot(&stored).await?;
        let shared = self.shared.clone();
        let mut guard = write(&shared);
        guard.table = restored.table;
        guard.registers = restored.registers;
        guard.clock = restored.clock;
        guard.last_applied = meta.last_log_id;
        guard.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(|e| io_error("snapshot", e))?;
        let meta = txn.open_table(META).map_err(|e| io_error("snapshot", e))?;
        let Some(bytes) = meta.get(SNAPSHOT).map_err(|e| io_error("snapshot", e))? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = dec(SNAPSHOT, bytes.value())?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcloud_core::wire::Flag;

    fn map(epoch: u64, owners: &[u32]) -> Assignment {
        Assignment {
            epoch,
            owners: owners.to_vec(),
        }
    }

    #[test]
    fn only_a_greater_epoch_replaces_a_map() {
        let mut maps = BTreeMap::new();
        StateMachine::assign(&mut maps, 1, &map(5, &[0, 1])).unwrap();
        for stale in [5, 4, 1] {
            match StateMachine::assign(&mut maps, 1, &map(stale, &[9])) {
                Err(crate::CatalogError::StaleEpoch {
                    party: 1,
                    epoch,
                    stored: 5,
                }) => assert_eq!(epoch, stale),
                other => panic!("epoch {stale}: {other:?}"),
            }
        }
        assert_eq!(maps[&1], map(5, &[0, 1]));
        // Another party's register is separate.
        StateMachine::assign(&mut maps, 2, &map(1, &[3])).unwrap();
        StateMachine::assign(&mut maps, 1, &map(6, &[1, 1])).unwrap();
        assert_eq!(maps[&1], map(6, &[1, 1]));
        let oversized = map(7, &vec![0; super::super::types::MAX_ASSIGNMENT_BUCKETS + 1]);
        assert!(matches!(
            StateMachine::assign(&mut maps, 1, &oversized),
            Err(crate::CatalogError::BadAssignment(_))
        ));
        assert_eq!(maps[&1].epoch, 6);
    }

    #[test]
    fn only_decided_flags_past_every_clouds_settled_time_are_pruned() {
        let mut registers = Registers::default();
        // No cloud known yet: nothing may be pruned.
        assert_eq!(registers.prune_before(10_000, 100), None);
        registers.assignments.insert(0, map(1, &[0]));
        registers.assignments.insert(1, map(1, &[0]));
        registers.settled.insert(0, 5_000);
        // Cloud 1 has not reported.
        assert_eq!(registers.prune_before(10_000, 100), None);
        registers.settled.insert(1, 7_000);
        assert_eq!(registers.prune_before(10_000, 100), Some(4_900));
        assert_eq!(registers.prune_before(3_000, 100), Some(2_900));

        let mut table = Table::default();
        let flag = |state, deadline_ms| Flag {
            state,
            deadline_ms,
            robust: false,
        };
        use mcloud_core::wire::FlagState::{Error, False, True};
        table.apply(&[
            (BatchId(1), flag(True, 1_000)),
            (BatchId(2), flag(Error, 2_000)),
            (BatchId(3), flag(False, 1_000)),
            (BatchId(4), flag(True, 6_000)),
        ]);
        assert!(table.has_prunable(4_900));
        assert_eq!(table.prune(4_900), 2);
        assert!(!table.has_prunable(4_900));
        // An open flag stays whatever its deadline; a newer decided one stays too.
        assert!(table.stored(&BatchId(3)).is_some());
        assert!(table.stored(&BatchId(4)).is_some());
        assert!(table.stored(&BatchId(1)).is_none());
    }

    #[test]
    fn a_peer_snapshot_is_checked_like_the_requests_that_built_it() {
        let now = 1_800_000_000_000;
        let honest = || {
            let mut state = SmState {
                clock: now - 5,
                ..SmState::default()
            };
            state.registers.assignments.insert(1, map(9, &[0, 1]));
            state.registers.settled.insert(1, now - 10);
            state
        };
        let check = |state: &SmState| {
            StateMachine::check_peer_snapshot(&StateMachine::encode_state(state).unwrap(), now)
        };
        assert_eq!(check(&honest()), Ok(()));
        let refused = |change: &dyn Fn(&mut SmState), needle: &str| {
            let mut state = honest();
            change(&mut state);
            let e = check(&state).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        refused(&|s| s.clock = u64::MAX, "snapshot clock");
        refused(
            &|s| {
                s.registers.assignments.insert(2, map(u64::MAX, &[0]));
            },
            "party 2's bucket map",
        );
        refused(
            &|s| {
                s.registers.revoked.insert("not hex".into());
            },
            "revocation id",
        );
        refused(
            &|s| {
                s.registers.settled.insert(3, u64::MAX);
            },
            "party 3",
        );
        refused(
            &|s| {
                s.table.apply(&[(
                    BatchId(7),
                    Flag {
                        state: mcloud_core::wire::FlagState::False,
                        deadline_ms: u64::MAX,
                        robust: false,
                    },
                )])
            },
            "flag deadline",
        );
        assert!(StateMachine::check_peer_snapshot(b"\xff\xff", now).is_err());
    }

    #[test]
    fn snapshots_carry_the_maps_and_older_snapshots_still_load() {
        let mut state = SmState {
            clock: 42,
            ..SmState::default()
        };
        state.registers.assignments.insert(3, map(9, &[2, 0, 1]));
        state.registers.revoked.insert("ab12".into());
        state.registers.revoked_sensors.insert(9);
        let rules = AccessRules {
            user: "alice".into(),
            houses: vec![3],
            friends: vec!["bob".into()],
            others: false,
            denied_apps: vec!["spy".into()],
        };
        state.registers.access.insert("alice".into(), rules);
        state.registers.settled.insert(3, 1_000);
        let restored =
            StateMachine::decode_state(&StateMachine::encode_state(&state).unwrap()).unwrap();
        assert_eq!(restored.registers.settled, state.registers.settled);
        assert_eq!(restored.clock, 42);
        assert_eq!(restored.registers.assignments, state.registers.assignments);
        assert_eq!(restored.registers.revoked, state.registers.revoked);
        assert_eq!(
            restored.registers.revoked_sensors,
            state.registers.revoked_sensors
        );
        assert_eq!(restored.registers.access, state.registers.access);

        // A snapshot of the format before access rules and sensor revocations.
        #[derive(Serialize)]
        struct WithRevocations {
            clock: u64,
            flags: Vec<(u128, u8, u64)>,
            assignments: Vec<(u16, Assignment)>,
            revoked: Vec<String>,
        }
        let bytes = postcard::to_stdvec(&WithRevocations {
            clock: 7,
            flags: Vec::new(),
            assignments: vec![(3, map(9, &[1]))],
            revoked: vec!["cd".into()],
        })
        .unwrap();
        let restored = StateMachine::decode_state(&bytes).unwrap();
        assert_eq!(restored.clock, 7);
        assert!(restored.registers.revoked.contains("cd"));
        assert!(restored.registers.access.is_empty());

        #[derive(Serialize)]
        struct Old {
            clock: u64,
            flags: Vec<(u128, u8, u64)>,
        }
        let old = postcard::to_stdvec(&Old {
            clock: 7,
            flags: Vec::new(),
        })
        .unwrap();
        let restored = StateMachine::decode_state(&old).unwrap();
        assert_eq!(restored.clock, 7);
        assert!(restored.registers.assignments.is_empty());
    }
}
