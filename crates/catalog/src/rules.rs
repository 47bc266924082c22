//! The flags table's rules, shared by the single-process store and the replicated state
//! machine: each operation validates every id against the table first and only then returns
//! the changes, so a rejected request changes nothing.

use crate::CatalogError;
use mcloud_core::wire::{CreateFlag, Flag, FlagState, MAX_FLAGS_PER_REQUEST};
use mcloud_core::BatchId;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Longest deadline a sensor may ask for.
pub const MAX_TTL_MS: u64 = 3_600_000;

/// Changes an operation wants to write.
pub type Changes = Vec<(BatchId, Flag)>;

#[derive(Default, Clone)]
pub struct Table {
    pub flags: HashMap<BatchId, Flag>,
    /// FALSE flags by deadline, for the sweep.
    open: BTreeSet<(u64, BatchId)>,
    /// TRUE and ERROR flags by deadline, for pruning.
    decided: BTreeSet<(u64, BatchId)>,
}

/// Counts by state, for status pages.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct FlagCounts {
    pub open: u64,
    pub committed: u64,
    pub errored: u64,
}

/// Rejects oversized requests and repeated ids before anything else is looked at.
pub fn check_request(ids: impl Iterator<Item = BatchId>, len: usize) -> Result<(), CatalogError> {
    if len > MAX_FLAGS_PER_REQUEST {
        return Err(CatalogError::TooMany(len));
    }
    let mut seen = HashSet::with_capacity(len);
    for id in ids {
        if !seen.insert(id) {
            return Err(CatalogError::DuplicateId(id));
        }
    }
    Ok(())
}

/// Validates the ttl of every CREATE, independent of the table.
pub fn check_ttls(requests: &[CreateFlag]) -> Result<(), CatalogError> {
    for r in requests {
        if r.ttl_ms == 0 || r.ttl_ms > MAX_TTL_MS {
            return Err(CatalogError::BadTtl {
                id: r.id,
                ttl_ms: r.ttl_ms,
                max: MAX_TTL_MS,
            });
        }
    }
    Ok(())
}

impl Table {
    /// The flag as it is at `now`: FALSE past its deadline is ERROR even before the sweep
    /// has written it, so no reader ever sees a flag that can still turn TRUE after that.
    pub fn effective(&self, id: &BatchId, now: u64) -> Option<Flag> {
        self.flags.get(id).map(|f| match f.state {
            FlagState::False if now > f.deadline_ms => Flag {
                state: FlagState::Error,
                ..*f
            },
            _ => *f,
        })
    }

    /// The stored flag, without looking at the clock.
    pub fn stored(&self, id: &BatchId) -> Option<Flag> {
        self.flags.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    pub fn apply(&mut self, changes: &[(BatchId, Flag)]) {
        for (id, flag) in changes {
            if let Some(old) = self.flags.insert(*id, *flag) {
                self.open.remove(&(old.deadline_ms, *id));
                self.decided.remove(&(old.deadline_ms, *id));
            }
            if flag.state == FlagState::False {
                self.open.insert((flag.deadline_ms, *id));
            } else {
                self.decided.insert((flag.deadline_ms, *id));
            }
        }
    }

    /// True when some TRUE or ERROR flag's deadline is before `before`.
    pub fn has_prunable(&self, before: u64) -> bool {
        self.decided
            .first()
            .is_some_and(|(deadline, _)| *deadline < before)
    }

    /// Forgets every TRUE and ERROR flag whose deadline is before `before`; FALSE flags are
    /// never dropped. Returns how many were.
    pub fn prune(&mut self, before: u64) -> usize {
        let kept = self.decided.split_off(&(before, BatchId(0)));
        let gone = std::mem::replace(&mut self.decided, kept);
        for (_, id) in &gone {
            self.flags.remove(id);
        }
        gone.len()
    }

    /// ERROR for every FALSE flag whose deadline is before `now`.
    pub fn expired(&self, now: u64) -> Changes {
        self.open
            .iter()
            .take_while(|(deadline, _)| *deadline < now)
            .filter_map(|&(_, id)| {
                let flag = self.flags.get(&id)?;
                Some((
                    id,
                    Flag {
                        state: FlagState::Error,
                        ..*flag
                    },
                ))
            })
            .collect()
    }

    /// True when some FALSE flag is past its deadline at `now`.
    pub fn has_expired(&self, now: u64) -> bool {
        self.open
            .first()
            .is_some_and(|(deadline, _)| *deadline < now)
    }

    pub fn counts(&self, now: u64) -> FlagCounts {
        let mut counts = FlagCounts::default();
        for id in self.flags.keys() {
            match self.effective(id, now).map(|f| f.state) {
                Some(FlagState::False) => counts.open += 1,
                Some(FlagState::True) => counts.committed += 1,
                _ => counts.errored += 1,
            }
        }
        counts
    }

    /// CREATE at `now`; the request was checked with `check_request` and `check_ttls`.
    pub fn create(
        &self,
        requests: &[CreateFlag],
        now: u64,
    ) -> Result<(Vec<Flag>, Changes), CatalogError> {
        let mut out = Vec::with_capacity(requests.len());
        let mut changes = Vec::new();
        for r in requests {
            match self.effective(&r.id, now) {
                Some(flag) if flag.state == FlagState::False => out.push(flag),
                Some(flag) => {
                    return Err(CatalogError::AlreadyFinal {
                        id: r.id,
                        state: flag.state,
                    })
                }
                None => {
                    // `now` is the entry's time, which a leader proposes: at the end of time
                    // the deadline stays there instead of overflowing (a panic every replica
                    // would meet again each time it replays the log).
                    let flag = Flag {
                        state: FlagState::False,
                        deadline_ms: now.saturating_add(r.ttl_ms),
                        robust: r.robust,
                    };
                    changes.push((r.id, flag));
                    out.push(flag);
                }
            }
        }
        Ok((out, changes))
    }

    /// SET at `now`; the request was checked with `check_request`.
    pub fn set(&self, ids: &[BatchId], now: u64) -> Result<(Vec<Flag>, Changes), CatalogError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut changes = Vec::new();
        for id in ids {
            let flag = self.stored(id).ok_or(CatalogError::Unknown(*id))?;
            if flag.robust {
                return Err(CatalogError::DecidedByClouds(*id));
            }
            match flag.state {
                FlagState::True => out.push(flag),
                // A plain flag's ERROR only ever comes from a missed deadline, whether or not
                // the sweep has written it yet, so both answers are the same.
                FlagState::Error => {
                    return Err(CatalogError::DeadlineMissed {
                        id: *id,
                        late_ms: now.saturating_sub(flag.deadline_ms),
                    })
                }
                FlagState::False if now > flag.deadline_ms => {
                    return Err(CatalogError::DeadlineMissed {
                        id: *id,
                        late_ms: now - flag.deadline_ms,
                    })
                }
                FlagState::False => {
                    let flag = Flag {
                        state: FlagState::True,
                        ..flag
                    };
                    changes.push((*id, flag));
                    out.push(flag);
                }
            }
        }
        Ok((out, changes))
    }

    /// A cloud's verdict at `now` on robust flags; the request was checked with
    /// `check_request`. `valid` turns FALSE into TRUE before the deadline (a verdict after it
    /// missed it, as a late SET does); an invalid batch's flag becomes ERROR at once. Repeating
    /// a verdict is idempotent; contradicting a final flag is refused.
    pub fn verdict(
        &self,
        ids: &[BatchId],
        valid: bool,
        now: u64,
    ) -> Result<(Vec<Flag>, Changes), CatalogError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut changes = Vec::new();
        for id in ids {
            let flag = self.stored(id).ok_or(CatalogError::Unknown(*id))?;
            if !flag.robust {
                return Err(CatalogError::NotRobust(*id));
            }
            let wanted = if valid {
                FlagState::True
            } else {
                FlagState::Error
            };
            match flag.state {
                state if state == wanted => out.push(flag),
                FlagState::False if valid && now > flag.deadline_ms => {
                    return Err(CatalogError::DeadlineMissed {
                        id: *id,
                        late_ms: now - flag.deadline_ms,
                    })
                }
                FlagState::False => {
                    let flag = Flag {
                        state: wanted,
                        ..flag
                    };
                    changes.push((*id, flag));
                    out.push(flag);
                }
                state => return Err(CatalogError::AlreadyFinal { id: *id, state }),
            }
        }
        Ok((out, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`catalog_requests`): a CREATE applied at a time near `u64::MAX` (the
    /// time of a Raft entry, which the leader sets) overflowed the deadline.
    #[test]
    fn a_create_at_the_end_of_time_keeps_its_deadline_there() {
        let id = BatchId(1);
        let request = [CreateFlag {
            id,
            ttl_ms: MAX_TTL_MS,
            robust: false,
        }];
        let (flags, changes) = Table::default().create(&request, u64::MAX - 1).unwrap();
        assert_eq!(flags[0].deadline_ms, u64::MAX);
        assert_eq!(changes, vec![(id, flags[0])]);
    }

    #[test]
    fn only_a_verdict_decides_a_robust_flag_and_only_a_robust_one() {
        let create = |id: u128, robust| CreateFlag {
            id: BatchId(id),
            ttl_ms: 1_000,
            robust,
        };
        let mut table = Table::default();
        let (_, changes) = table
            .create(&[create(1, true), create(2, true), create(3, false)], 0)
            .unwrap();
        table.apply(&changes);
        let (one, two, plain) = (BatchId(1), BatchId(2), BatchId(3));
        // The sensor cannot SET its robust flag; a cloud cannot give a plain one a verdict.
        assert!(matches!(
            table.set(&[one], 10),
            Err(CatalogError::DecidedByClouds(id)) if id == one
        ));
        assert!(matches!(
            table.verdict(&[plain], true, 10),
            Err(CatalogError::NotRobust(id)) if id == plain
        ));
        let (flags, changes) = table.verdict(&[one], true, 10).unwrap();
        assert_eq!(flags[0].state, FlagState::True);
        table.apply(&changes);
        let (flags, changes) = table.verdict(&[two], false, 10).unwrap();
        assert_eq!(flags[0].state, FlagState::Error);
        table.apply(&changes);
        // Repeating is idempotent; contradicting is refused and changes nothing.
        assert!(table.verdict(&[one], true, 20).unwrap().1.is_empty());
        assert!(table.verdict(&[two], false, 20).unwrap().1.is_empty());
        assert!(matches!(
            table.verdict(&[one], false, 20),
            Err(CatalogError::AlreadyFinal { .. })
        ));
        assert!(matches!(
            table.verdict(&[two], true, 20),
            Err(CatalogError::AlreadyFinal { .. })
        ));
        // A valid verdict after the deadline comes too late.
        let (_, changes) = table.create(&[create(4, true)], 0).unwrap();
        table.apply(&changes);
        assert!(matches!(
            table.verdict(&[BatchId(4)], true, 2_000),
            Err(CatalogError::DeadlineMissed { .. })
        ));
    }
}
