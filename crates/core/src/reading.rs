//! A sensor reading and the keys it is grouped by.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// DEBS 2014 property: 0 = accumulated work (kWh), 1 = instantaneous load (W).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Work,
    Load,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::Work, Metric::Load];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Work => "work",
            Metric::Load => "load",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The finest group a reading belongs to: one plug. Coarser groups are projections of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub house: u32,
    pub household: u32,
    pub plug: u32,
}

impl GroupKey {
    pub const MIN: GroupKey = GroupKey {
        house: 0,
        household: 0,
        plug: 0,
    };
}

/// How finely the collector groups revealed aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupLevel {
    House,
    Household,
    Plug,
}

impl GroupLevel {
    /// Maps a plug key to the key of its group at this level; unused ids become `None`.
    pub fn project(self, key: GroupKey) -> GroupId {
        match self {
            GroupLevel::House => GroupId {
                house: key.house,
                household: None,
                plug: None,
            },
            GroupLevel::Household => GroupId {
                house: key.house,
                household: Some(key.household),
                plug: None,
            },
            GroupLevel::Plug => GroupId {
                house: key.house,
                household: Some(key.household),
                plug: Some(key.plug),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupLevel::House => "house",
            GroupLevel::Household => "household",
            GroupLevel::Plug => "plug",
        }
    }
}

impl FromStr for GroupLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "house" => Ok(GroupLevel::House),
            "household" => Ok(GroupLevel::Household),
            "plug" => Ok(GroupLevel::Plug),
            other => Err(format!(
                "unknown group level {other:?}: expected house, household or plug"
            )),
        }
    }
}

/// A group as revealed: the ids its level uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId {
    pub house: u32,
    pub household: Option<u32>,
    pub plug: Option<u32>,
}

/// One measurement, as a sensor holds it before sharing. `value` is fixed-point (see `fixed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub id: u64,
    pub ts: u64,
    pub value: u64,
    pub metric: Metric,
    pub group: GroupKey,
}
