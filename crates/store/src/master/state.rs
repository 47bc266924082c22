//! The masters' state and how each operation changes it.

use super::access::{FileAccess, Reader};
use super::ops::{
    check_shape, packets_for, Begin, Commit, RefreshBegin, RefreshCommit, Repair, StoreOp,
};
use super::{
    check_name, Kind, MasterError, ObjectKey, MAX_GARBAGE, MAX_HOUSES_PER_MAILBOX,
    MAX_LIFETIME_SECS, MAX_MESSAGES_PER_RECIPIENT, MAX_OBJECTS, MAX_RECORDS, MAX_VERSIONS,
    MIN_LIFETIME_SECS, REFRESH_DIVISOR, WRITE_DEADLINE_MS,
};
use crate::packet::{Cipher, KeySecret, PacketRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A committed version of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u32,
    pub id: u64,
    pub len: u64,
    pub packet_bytes: u32,
    pub replicas: u8,
    pub sources: Vec<u8>,
    pub records: Vec<PacketRecord>,
    /// Key secrets in use, oldest first.
    pub keys: Vec<KeySecret>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub lifetime_secs: u64,
    /// A refresh under way: the packets it rewrites, its new secret and AEADs, its deadline.
    pub refresh: Option<(RefreshBegin, u64)>,
}

/// A write between `Begin` and `Commit`, with its deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub begin: Begin,
    pub deadline_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Object {
    versions: Vec<Version>,
    pending: Option<Pending>,
    next_version: u32,
    access: FileAccess,
    /// A message's sender.
    from: Option<Reader>,
}

/// Copies that must be deleted from their sources: the secret names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    pub seq: u64,
    pub file: u64,
    pub secret: KeySecret,
    pub records: Vec<PacketRecord>,
    /// The packet size of a write that was never recorded (abandoned before its commit):
    /// its records name sub-packet 0 only, and a source that takes only small blobs may hold
    /// more sub-packets of each packet.
    pub unrecorded_packet_bytes: Option<u32>,
}

impl Garbage {
    /// Each copy's (source, blob name). `subs` gives the most sub-packets a packet of that
    /// many bytes may have been split into (it names the rest of an unrecorded write's).
    pub fn blobs(&self, subs: impl Fn(u32) -> usize) -> Vec<(u8, String)> {
        let subs = self.unrecorded_packet_bytes.map_or(1, subs).clamp(1, 256);
        self.records
            .iter()
            .flat_map(|r| {
                let first = usize::from(r.sub);
                let last = if self.unrecorded_packet_bytes.is_some() {
                    subs
                } else {
                    first + 1
                };
                (first..last).map(move |sub| {
                    let record = PacketRecord {
                        sub: sub as u8,
                        ..*r
                    };
                    (
                        r.source,
                        record.place(self.file).blob_name(&self.secret, r.source),
                    )
                })
            })
            .collect()
    }
}

/// What a reader sees of an object in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    /// (number, bytes, created, expires) of each committed version, oldest first.
    pub versions: Vec<(u32, u64, u64, u64)>,
    pub access: FileAccess,
    pub from: Option<Reader>,
}

/// The masters' whole state, as every replica holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Masters {
    objects: BTreeMap<ObjectKey, Object>,
    mailbox_keys: BTreeMap<String, [u8; 32]>,
    /// House → the owner whose mailbox takes alerts about it.
    house_owners: BTreeMap<u32, String>,
    garbage: BTreeMap<u64, Garbage>,
    next_garbage: u64,
}

fn not_found(key: &ObjectKey) -> MasterError {
    MasterError::NotFound(match key.kind {
        Kind::File => format!("file {:?} of {}", key.name, key.owner),
        Kind::Message => format!("message {} for {}", key.name, key.owner),
    })
}

impl Masters {
    /// Applies `op` at the log's time `now_ms`; a refused op changes nothing.
    pub fn apply(&mut self, op: &StoreOp, now_ms: u64) -> Result<(), MasterError> {
        match op {
            StoreOp::Begin(b) => self.begin(b, now_ms),
            StoreOp::Commit(c) => self.commit(c, now_ms),
            StoreOp::RefreshBegin(r) => self.refresh_begin(r, now_ms),
            StoreOp::RefreshCommit(r) => self.refresh_commit(r, now_ms),
            StoreOp::Repair(r) => self.repair(r, now_ms),
            StoreOp::Delete { key, by } => self.delete(key, by),
            StoreOp::SetMailboxKey {
                user,
                public_key,
                houses,
            } => {
                check_name("user", user)?;
                if !self.mailbox_keys.contains_key(user) && self.mailbox_keys.len() >= MAX_OBJECTS {
                    return Err(MasterError::Full("too many mailboxes".into()));
                }
                if houses.len() > MAX_HOUSES_PER_MAILBOX {
                    return Err(MasterError::BadPlan(format!(
                        "{} houses; a mailbox takes alerts about at most {MAX_HOUSES_PER_MAILBOX}",
                        houses.len()
                    )));
                }
                let new = houses
                    .iter()
                    .filter(|h| self.house_owners.get(h) != Some(user))
                    .count();
                if self.house_owners.len() + new > MAX_OBJECTS {
                    return Err(MasterError::Full("too many houses with an owner".into()));
                }
                self.mailbox_keys.insert(user.clone(), *public_key);
                self.house_owners.retain(|_, owner| owner != user);
                for house in houses {
                    self.house_owners.insert(*house, user.clone());
                }
                Ok(())
            }
            StoreOp::Expire => {
                self.expire(now_ms);
                Ok(())
            }
            StoreOp::Freed(seqs) => {
                for seq in seqs {
                    self.garbage.remove(seq);
                }
                Ok(())
            }
        }
    }

    fn check_writer(&self, key: &ObjectKey, writer: &Reader) -> Result<(), MasterError> {
        check_name("owner", &key.owner)?;
        check_name("name", &key.name)?;
        check_name("user", &writer.user)?;
        if let Some(app) = &writer.app {
            check_name("app", app)?;
        }
        if key.kind == Kind::Message {
            return Ok(());
        }
        let access = self
            .objects
            .get(key)
            .map(|o| o.access.clone())
            .unwrap_or_default();
        if access.may_write(&key.owner, writer) {
            Ok(())
        } else {
            Err(MasterError::Forbidden(format!(
                "{} may not write {}'s files",
                describe(writer),
                key.owner
            )))
        }
    }

    fn throw_away(&mut self, file: u64, secret: &KeySecret, records: Vec<PacketRecord>) {
        self.throw(file, secret, records, None);
    }

    fn throw(
        &mut self,
        file: u64,
        secret: &KeySecret,
        records: Vec<PacketRecord>,
        unrecorded_packet_bytes: Option<u32>,
    ) {
        if records.is_empty() {
            return;
        }
        let seq = self.next_garbage;
        self.next_garbage += 1;
        self.garbage.insert(
            seq,
            Garbage {
                seq,
                file,
                secret: secret.clone(),
                records,
                unrecorded_packet_bytes,
            },
        );
    }

    /// Frees every copy of a version.
    fn throw_version(&mut self, v: &Version) {
        for secret in &v.keys {
            let records = v
                .records
                .iter()
                .filter(|r| r.key == secret.id)
                .copied()
                .collect();
            self.throw_away(v.id, secret, records);
        }
        if let Some((refresh, _)) = &v.refresh {
            self.throw_unrecorded(
                v.id,
                v.packet_bytes,
                &refresh.secret,
                &refresh.packets,
                &refresh.ciphers,
                &v.sources,
            );
        }
    }

    /// Frees copies a writer may have written but never recorded: every packet on every
    /// source it could use, every sub-packet it may have been split into there.
    fn throw_unrecorded(
        &mut self,
        file: u64,
        packet_bytes: u32,
        secret: &KeySecret,
        packets: &[u32],
        ciphers: &[u8],
        sources: &[u8],
    ) {
        let records = packets
            .iter()
            .zip(ciphers)
            .flat_map(|(&packet, &cipher)| {
                sources.iter().map(move |&source| PacketRecord {
                    packet,
                    sub: 0,
                    source,
                    cipher,
                    key: secret.id,
                })
            })
            .collect();
        self.throw(file, secret, records, Some(packet_bytes));
    }

    fn begin(&mut self, b: &Begin, now: u64) -> Result<(), MasterError> {
        self.check_writer(&b.key, &b.writer)?;
        b.access.check()?;
        let n = check_shape(b.len, b.packet_bytes, b.replicas, &b.sources)?;
        let mut order = b.order.clone();
        order.sort_unstable();
        if order != (0..n).collect::<Vec<_>>() || b.ciphers.len() != n as usize {
            return Err(MasterError::BadPlan(format!(
                "the write order and the ciphers must cover the {n} packets once each"
            )));
        }
        for &c in &b.ciphers {
            Cipher::from_id(c).map_err(|e| MasterError::BadPlan(e.to_string()))?;
        }
        if !(MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(&b.lifetime_secs) {
            return Err(MasterError::BadPlan(format!(
                "lifetime {} s is outside {MIN_LIFETIME_SECS}..={MAX_LIFETIME_SECS} s",
                b.lifetime_secs
            )));
        }
        if self.garbage.len() >= MAX_GARBAGE {
            return Err(MasterError::Full(
                "the sources have not been emptied of freed packets yet; retry later".into(),
            ));
        }
        match self.objects.get(&b.key) {
            Some(o) => {
                // A writer that gave up on its write may begin again at once (what it wrote
                // is freed below); anyone else waits for that write to end.
                if o.pending
                    .as_ref()
                    .is_some_and(|p| p.deadline_ms > now && p.begin.writer != b.writer)
                {
                    return Err(MasterError::Conflict(format!(
                        "{} is being written; retry after that write ends",
                        b.key.name
                    )));
                }
                if b.key.kind == Kind::Message {
                    return Err(MasterError::Conflict("that message id is taken".into()));
                }
            }
            None => {
                if self.objects.len() >= MAX_OBJECTS {
                    return Err(MasterError::Full(format!(
                        "the masters keep at most {MAX_OBJECTS} objects"
                    )));
                }
                if b.key.kind == Kind::Message {
                    let waiting = self
                        .objects
                        .range(ObjectKey::message(&b.key.owner, 0)..)
                        .take_while(|(k, _)| k.kind == Kind::Message && k.owner == b.key.owner)
                        .count();
                    if waiting >= MAX_MESSAGES_PER_RECIPIENT {
                        return Err(MasterError::Full(format!(
                            "{} has {waiting} messages waiting; at most {MAX_MESSAGES_PER_RECIPIENT}",
                            b.key.owner
                        )));
                    }
                }
            }
        }
        let stale = self.objects.get_mut(&b.key).and_then(|o| o.pending.take());
        if let Some(p) = stale {
            self.throw_pending(&p);
        }
        let object = self.objects.entry(b.key.clone()).or_default();
        if b.key.kind == Kind::File {
            object.access = b.access.clone();
        } else {
            object.from = Some(b.writer.clone());
        }
        object.pending = Some(Pending {
            begin: b.clone(),
            deadline_ms: now.saturating_add(WRITE_DEADLINE_MS),
        });
        Ok(())
    }

    fn throw_pending(&mut self, p: &Pending) {
        let b = &p.begin;
        self.throw_unrecorded(
            b.id,
            b.packet_bytes,
            &b.secret,
            &b.order,
            &ciphers_in_order(b),
            &b.sources,
        );
    }

    fn commit(&mut self, c: &Commit, now: u64) -> Result<(), MasterError> {
        self.check_writer(&c.key, &c.writer)?;
        let object = self.objects.get(&c.key).ok_or_else(|| not_found(&c.key))?;
        let pending = object
            .pending
            .as_ref()
            .filter(|p| p.begin.id == c.id)
            .ok_or_else(|| {
                MasterError::NotFound(format!("write {:016x} of {}", c.id, c.key.name))
            })?;
        if pending.deadline_ms <= now {
            return Err(MasterError::Expired("the write's deadline passed".into()));
        }
        let b = &pending.begin;
        // A message's recipient is not its writer: only who began a write may finish it.
        if b.writer != c.writer {
            return Err(MasterError::Forbidden(format!(
                "write {:016x} was begun by {}, not {}",
                c.id,
                describe(&b.writer),
                describe(&c.writer)
            )));
        }
        let all: Vec<u32> = (0..b.ciphers.len() as u32).collect();
        let key = b.secret.id;
        check_records(
            &c.records,
            &all,
            |p| b.ciphers.get(p as usize).map(|c| (*c, key)),
            b.replicas,
            &b.sources,
        )?;
        let mut records = c.records.clone();
        records.sort_unstable();
        let version = Version {
            number: object.next_version,
            id: b.id,
            len: b.len,
            packet_bytes: b.packet_bytes,
            replicas: b.replicas,
            sources: b.sources.clone(),
            records,
            keys: vec![b.secret.clone()],
            created_ms: now,
            expires_ms: now.saturating_add(b.lifetime_secs.saturating_mul(1000)),
            lifetime_secs: b.lifetime_secs,
            refresh: None,
        };
        let Some(object) = self.objects.get_mut(&c.key) else {
            return Err(not_found(&c.key));
        };
        object.pending = None;
        object.next_version = object.next_version.saturating_add(1);
        object.versions.push(version);
        let dropped: Vec<Version> = if object.versions.len() > MAX_VERSIONS {
            let extra = object.versions.len() - MAX_VERSIONS;
            object.versions.drain(..extra).collect()
        } else {
            Vec::new()
        };
        for v in &dropped {
            self.throw_version(v);
        }
        Ok(())
    }

    /// The packets a refresh of `version` must rewrite and the key id it gets: the tenth of
    /// the packets (at least one) under the oldest keys, so every packet is rewritten once
    /// every ten refreshes and a version never holds more than a dozen live keys.
    pub fn refresh_choice(
        &self,
        key: &ObjectKey,
        number: u32,
    ) -> Result<(u64, Vec<u32>, u8), MasterError> {
        let v = self.version(key, Some(number))?;
        let age: BTreeMap<u8, usize> = v.keys.iter().enumerate().map(|(i, k)| (k.id, i)).collect();
        let mut packets: Vec<(usize, u32)> = v
            .records
            .iter()
            .map(|r| (age.get(&r.key).copied().unwrap_or(0), r.packet))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        packets.sort_unstable();
        let n = packets_for(v.len, v.packet_bytes) as u32;
        let take = n.div_ceil(REFRESH_DIVISOR).max(1) as usize;
        let mut chosen: Vec<u32> = packets.into_iter().take(take).map(|(_, p)| p).collect();
        chosen.sort_unstable();
        let used: BTreeSet<u8> = v.keys.iter().map(|k| k.id).collect();
        let key_id = (0..=u8::MAX)
            .find(|id| !used.contains(id))
            .ok_or_else(|| MasterError::Full("every key id of the version is in use".into()))?;
        Ok((v.id, chosen, key_id))
    }

    fn version_mut(&mut self, key: &ObjectKey, id: u64) -> Result<&mut Version, MasterError> {
        self.objects
            .get_mut(key)
            .and_then(|o| o.versions.iter_mut().find(|v| v.id == id))
            .ok_or_else(|| MasterError::NotFound(format!("version {id:016x} of {}", key.name)))
    }

    fn refresh_begin(&mut self, r: &RefreshBegin, now: u64) -> Result<(), MasterError> {
        self.check_writer(&r.key, &r.writer)?;
        let v = self.version_mut(&r.key, r.id)?;
        if v.refresh
            .as_ref()
            .is_some_and(|(_, deadline)| *deadline > now)
        {
            return Err(MasterError::Conflict(
                "a refresh of this version is under way".into(),
            ));
        }
        let n = packets_for(v.len, v.packet_bytes) as u32;
        let mut distinct = r.packets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != r.packets.len()
            || r.packets.iter().any(|&p| p >= n)
            || (r.packets.len() as u32) < n.div_ceil(REFRESH_DIVISOR).max(1)
            || r.ciphers.len() != r.packets.len()
        {
            return Err(MasterError::BadPlan(format!(
                "a refresh rewrites at least a tenth of the {n} packets, each once, with one cipher each"
            )));
        }
        for &c in &r.ciphers {
            Cipher::from_id(c).map_err(|e| MasterError::BadPlan(e.to_string()))?;
        }
        if v.keys.iter().any(|k| k.id == r.secret.id) {
            return Err(MasterError::BadPlan(format!(
                "key id {} is in use",
                r.secret.id
            )));
        }
        let stale = v.refresh.take();
        let (id, bytes, sources) = (v.id, v.packet_bytes, v.sources.clone());
        v.refresh = Some((r.clone(), now.saturating_add(WRITE_DEADLINE_MS)));
        if let Some((old, _)) = stale {
            self.throw_unrecorded(id, bytes, &old.secret, &old.packets, &old.ciphers, &sources);
        }
        Ok(())
    }

    fn refresh_commit(&mut self, c: &RefreshCommit, now: u64) -> Result<(), MasterError> {
        self.check_writer(&c.key, &c.writer)?;
        let v = self.version_mut(&c.key, c.id)?;
        let Some((r, deadline)) = v.refresh.clone() else {
            return Err(MasterError::NotFound(
                "no refresh under way for this version".into(),
            ));
        };
        if deadline <= now {
            return Err(MasterError::Expired("the refresh's deadline passed".into()));
        }
        let mut ciphers = vec![0u8; packets_for(v.len, v.packet_bytes) as usize];
        for (p, c) in r.packets.iter().zip(&r.ciphers) {
            ciphers[*p as usize] = *c;
        }
        let key = r.secret.id;
        check_records(
            &c.records,
            &r.packets,
            |p| ciphers.get(p as usize).map(|c| (*c, key)),
            v.replicas,
            &v.sources,
        )?;
        let rewritten: BTreeSet<u32> = r.packets.iter().copied().collect();
        let (old, mut kept): (Vec<PacketRecord>, Vec<PacketRecord>) = v
            .records
            .iter()
            .partition(|rec| rewritten.contains(&rec.packet));
        kept.extend(c.records.iter().copied());
        kept.sort_unstable();
        v.records = kept;
        v.keys.push(r.secret.clone());
        let live: BTreeSet<u8> = v.records.iter().map(|rec| rec.key).collect();
        let (keys, retired): (Vec<KeySecret>, Vec<KeySecret>) =
            v.keys.drain(..).partition(|k| live.contains(&k.id));
        v.keys = keys;
        v.refresh = None;
        v.expires_ms = now.saturating_add(v.lifetime_secs.saturating_mul(1000));
        let id = v.id;
        let all_keys: Vec<KeySecret> = v.keys.iter().chain(&retired).cloned().collect();
        for secret in all_keys {
            let records: Vec<PacketRecord> = old
                .iter()
                .filter(|rec| rec.key == secret.id)
                .copied()
                .collect();
            self.throw_away(id, &secret, records);
        }
        Ok(())
    }

    /// Replaces a version's records after a repair. The new copies may be on any source (a
    /// repair goes where there is room); the copies left out go to the garbage, so a source
    /// that comes back frees them.
    fn repair(&mut self, r: &Repair, now: u64) -> Result<(), MasterError> {
        self.check_writer(&r.key, &r.writer)?;
        let v = self.version_mut(&r.key, r.id)?;
        if v.refresh
            .as_ref()
            .is_some_and(|(_, deadline)| *deadline > now)
        {
            return Err(MasterError::Conflict(
                "a refresh of this version is under way".into(),
            ));
        }
        let expected: BTreeMap<u32, (u8, u8)> = v
            .records
            .iter()
            .map(|rec| (rec.packet, (rec.cipher, rec.key)))
            .collect();
        let all: Vec<u32> = (0..packets_for(v.len, v.packet_bytes) as u32).collect();
        let any_source: Vec<u8> = (0..=u8::MAX).collect();
        check_records(
            &r.records,
            &all,
            |p| expected.get(&p).copied(),
            v.replicas,
            &any_source,
        )?;
        let mut records = r.records.clone();
        records.sort_unstable();
        let kept: BTreeSet<PacketRecord> = records.iter().copied().collect();
        let dropped: Vec<PacketRecord> = v
            .records
            .iter()
            .filter(|rec| !kept.contains(rec))
            .copied()
            .collect();
        for rec in &records {
            if !v.sources.contains(&rec.source) {
                v.sources.push(rec.source);
            }
        }
        v.records = records;
        let (id, keys) = (v.id, v.keys.clone());
        for secret in keys {
            let records: Vec<PacketRecord> = dropped
                .iter()
                .filter(|rec| rec.key == secret.id)
                .copied()
                .collect();
            self.throw_away(id, &secret, records);
        }
        Ok(())
    }

    fn delete(&mut self, key: &ObjectKey, by: &Reader) -> Result<(), MasterError> {
        let object = self.objects.get(key).ok_or_else(|| not_found(key))?;
        let allowed = match key.kind {
            Kind::File => object.access.may_write(&key.owner, by),
            Kind::Message => by.user == key.owner,
        };
        if !allowed {
            return Err(MasterError::Forbidden(format!(
                "{} may not delete {}",
                describe(by),
                key.name
            )));
        }
        if let Some(object) = self.objects.remove(key) {
            self.throw_object(object);
        }
        Ok(())
    }

    fn throw_object(&mut self, object: Object) {
        for v in &object.versions {
            self.throw_version(v);
        }
        if let Some(p) = &object.pending {
            self.throw_pending(p);
        }
    }

    /// Whether an `Expire` at `now_ms` would change anything.
    pub fn due(&self, now_ms: u64) -> bool {
        self.objects.values().any(|o| {
            o.pending.as_ref().is_some_and(|p| p.deadline_ms <= now_ms)
                || o.versions.iter().any(|v| {
                    v.expires_ms <= now_ms || v.refresh.as_ref().is_some_and(|(_, d)| *d <= now_ms)
                })
        })
    }

    fn expire(&mut self, now: u64) {
        let keys: Vec<ObjectKey> = self.objects.keys().cloned().collect();
        for key in keys {
            let Some(mut object) = self.objects.remove(&key) else {
                continue;
            };
            let (gone, kept): (Vec<Version>, Vec<Version>) =
                object.versions.drain(..).partition(|v| v.expires_ms <= now);
            object.versions = kept;
            for v in &gone {
                self.throw_version(v);
            }
            for v in &mut object.versions {
                if v.refresh.as_ref().is_some_and(|(_, d)| *d <= now) {
                    if let Some((r, _)) = v.refresh.take() {
                        let (id, bytes, sources) = (v.id, v.packet_bytes, v.sources.clone());
                        self.throw_unrecorded(
                            id, bytes, &r.secret, &r.packets, &r.ciphers, &sources,
                        );
                    }
                }
            }
            if object
                .pending
                .as_ref()
                .is_some_and(|p| p.deadline_ms <= now)
            {
                if let Some(p) = object.pending.take() {
                    self.throw_pending(&p);
                }
            }
            if !object.versions.is_empty() || object.pending.is_some() {
                self.objects.insert(key, object);
            }
        }
    }

    /// A version of an object (the newest when `number` is None).
    pub fn version(&self, key: &ObjectKey, number: Option<u32>) -> Result<&Version, MasterError> {
        let object = self.objects.get(key).ok_or_else(|| not_found(key))?;
        match number {
            None => object.versions.last(),
            Some(n) => object.versions.iter().find(|v| v.number == n),
        }
        .ok_or_else(|| not_found(key))
    }

    /// The version `reader` asks for, if it may read it.
    pub fn readable(
        &self,
        key: &ObjectKey,
        reader: &Reader,
        number: Option<u32>,
    ) -> Result<&Version, MasterError> {
        let object = self.objects.get(key).ok_or_else(|| not_found(key))?;
        let allowed = match key.kind {
            Kind::File => object.access.may_read(&key.owner, reader),
            Kind::Message => reader.user == key.owner,
        };
        if !allowed {
            // Not found rather than forbidden would hide that the file exists; the owner's
            // access rules are not secret from the reader, so say what stops it.
            return Err(MasterError::Forbidden(format!(
                "{} may not read {}",
                describe(reader),
                key.name
            )));
        }
        self.version(key, number)
    }

    /// The objects `reader` may read, of kind `kind`, owned by `owner` (every owner when None).
    pub fn list(&self, kind: Kind, owner: Option<&str>, reader: &Reader) -> Vec<ObjectInfo> {
        self.objects
            .iter()
            .filter(|(k, o)| {
                k.kind == kind
                    && owner.is_none_or(|owner| k.owner == owner)
                    && !o.versions.is_empty()
                    && match kind {
                        Kind::File => o.access.may_read(&k.owner, reader),
                        Kind::Message => k.owner == reader.user,
                    }
            })
            .take(MAX_LISTED)
            .map(|(k, o)| ObjectInfo {
                key: k.clone(),
                versions: o
                    .versions
                    .iter()
                    .map(|v| (v.number, v.len, v.created_ms, v.expires_ms))
                    .collect(),
                access: o.access.clone(),
                from: o.from.clone(),
            })
            .collect()
    }

    pub fn mailbox_key(&self, user: &str) -> Option<[u8; 32]> {
        self.mailbox_keys.get(user).copied()
    }

    /// The owners whose mailboxes take alerts about these houses (those that have one).
    pub fn house_owners(&self, houses: &[u32]) -> Vec<(u32, String)> {
        houses
            .iter()
            .filter_map(|h| self.house_owners.get(h).map(|u| (*h, u.clone())))
            .collect()
    }

    /// Garbage sets waiting to be freed, oldest first.
    pub fn garbage(&self, limit: usize) -> Vec<Garbage> {
        self.garbage.values().take(limit).cloned().collect()
    }

    pub fn garbage_len(&self) -> usize {
        self.garbage.len()
    }

    pub fn objects_len(&self) -> usize {
        self.objects.len()
    }

    /// Checks a state a peer sent in a snapshot against the bounds the operations keep, so
    /// a snapshot cannot install what no operation could have written.
    pub fn check(&self) -> Result<(), MasterError> {
        if self.objects.len() > MAX_OBJECTS
            || self.mailbox_keys.len() > MAX_OBJECTS
            || self.house_owners.len() > MAX_OBJECTS
            || self.garbage.len() > MAX_GARBAGE + MAX_OBJECTS
        {
            return Err(MasterError::Full(
                "storage metadata beyond its bounds".into(),
            ));
        }
        for (key, object) in &self.objects {
            check_name("owner", &key.owner)?;
            check_name("name", &key.name)?;
            object.access.check()?;
            if object.versions.len() > MAX_VERSIONS {
                return Err(MasterError::Full(format!(
                    "{} versions of {}",
                    object.versions.len(),
                    key.name
                )));
            }
            if object
                .versions
                .iter()
                .any(|v| v.records.len() > MAX_RECORDS || v.keys.len() > 256)
            {
                return Err(MasterError::Full(format!(
                    "a version of {} beyond its bounds",
                    key.name
                )));
            }
        }
        for user in self.mailbox_keys.keys() {
            check_name("user", user)?;
        }
        if let Some(user) = self
            .house_owners
            .values()
            .find(|u| !self.mailbox_keys.contains_key(*u))
        {
            return Err(MasterError::Full(format!(
                "houses owned by {user}, who has no mailbox"
            )));
        }
        Ok(())
    }
}

/// Most objects one listing returns.
pub const MAX_LISTED: usize = 10_000;

fn describe(r: &Reader) -> String {
    match &r.app {
        Some(app) => format!("app {app} of {}", r.user),
        None => r.user.clone(),
    }
}

/// A plan's ciphers in its write order (the plan lists them by packet id).
fn ciphers_in_order(b: &Begin) -> Vec<u8> {
    b.order.iter().map(|&p| b.ciphers[p as usize]).collect()
}

/// Checks that `records` place exactly `packets`, each on `replicas` distinct sources among
/// `sources`, every copy with all its sub-packets (0..k), under the (AEAD, key id) that
/// `expected` gives for its packet.
fn check_records(
    records: &[PacketRecord],
    packets: &[u32],
    expected: impl Fn(u32) -> Option<(u8, u8)>,
    replicas: u8,
    sources: &[u8],
) -> Result<(), MasterError> {
    let bad = |m: String| Err(MasterError::BadRecords(m));
    if records.len() > MAX_RECORDS {
        return bad(format!("{} records; at most {MAX_RECORDS}", records.len()));
    }
    let wanted: BTreeSet<u32> = packets.iter().copied().collect();
    let mut copies: BTreeMap<u32, BTreeMap<u8, BTreeSet<u8>>> = BTreeMap::new();
    for r in records {
        if !wanted.contains(&r.packet) {
            return bad(format!("packet {} is not part of this write", r.packet));
        }
        if expected(r.packet) != Some((r.cipher, r.key)) {
            return bad(format!(
                "packet {} is not under the key and AEAD the plan gave",
                r.packet
            ));
        }
        if !sources.contains(&r.source) {
            return bad(format!(
                "source {} is not one of the write's sources",
                r.source
            ));
        }
        if !copies
            .entry(r.packet)
            .or_default()
            .entry(r.source)
            .or_default()
            .insert(r.sub)
        {
            return bad(format!(
                "packet {}.{} on source {} twice",
                r.packet, r.sub, r.source
            ));
        }
    }
    for p in &wanted {
        let Some(on) = copies.get(p) else {
            return bad(format!("packet {p} has no copy"));
        };
        if on.len() != usize::from(replicas) {
            return bad(format!(
                "packet {p} has {} copies; the plan wants {replicas}",
                on.len()
            ));
        }
        for subs in on.values() {
            if subs.iter().copied().ne(0..subs.len() as u8) {
                return bad(format!("packet {p} misses sub-packets"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
