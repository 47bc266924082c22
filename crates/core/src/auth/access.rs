//! Access modifiers: besides an owner's own apps, whose apps may read an owner's houses. An
//! owner names friends (their apps may read the houses' aggregates), may open the houses'
//! aggregates to every other user's apps, and may deny apps by name (the owner's own
//! included). Friends and other users see aggregates (house and household level, COMPUTE)
//! only; what each scope may see beyond that is the disclosure policy's to decide.

use super::app::{Grant, HouseScope};
use crate::disclosure::Scope;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest user or app name in access rules.
pub const MAX_NAME_CHARS: usize = 64;
/// Most friends, denied apps or houses in one owner's rules.
pub const MAX_RULE_ENTRIES: usize = 256;

/// A house owner's access modifiers. The houses come from the owner's token when the rules
/// are set, never from the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRules {
    pub user: String,
    pub houses: Vec<u32>,
    /// Users whose apps may read the houses' aggregates.
    pub friends: Vec<String>,
    /// Whether any other user's apps may read them too.
    pub others: bool,
    /// Apps (by the name their token gives) that may read none of the owner's houses.
    pub denied_apps: Vec<String>,
}

impl AccessRules {
    /// Refuses rules a node will not store, naming why.
    pub fn check(&self) -> Result<(), String> {
        let names = std::iter::once(&self.user)
            .chain(&self.friends)
            .chain(&self.denied_apps);
        for name in names {
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                return Err(format!(
                    "name {:?} is not 1 to {MAX_NAME_CHARS} characters",
                    name.chars().take(40).collect::<String>()
                ));
            }
        }
        for (what, n) in [
            ("houses", self.houses.len()),
            ("friends", self.friends.len()),
            ("denied apps", self.denied_apps.len()),
        ] {
            if n > MAX_RULE_ENTRIES {
                return Err(format!("{n} {what}; at most {MAX_RULE_ENTRIES}"));
            }
        }
        Ok(())
    }
}

/// The houses a request may see, and in which scope of the disclosure policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The token's own houses (`All` for the deployment's collector, which owns none: it
    /// sees every house in the other-users scope).
    pub own: HouseScope,
    /// Other owners' houses whose owners name this user a friend.
    pub friend: BTreeSet<u32>,
    /// Other owners' houses open to every other user's apps.
    pub open: BTreeSet<u32>,
    /// Houses whose owners deny this app.
    pub denied: BTreeSet<u32>,
    /// The plugs the token is narrowed to: then only those plugs' own groups.
    pub plugs: Option<BTreeSet<u32>>,
    /// The metrics the token is narrowed to.
    pub metrics: Option<BTreeSet<crate::reading::Metric>>,
}

impl Reach {
    /// The scope in which the request sees `house`, if it sees it at all.
    pub fn scope(&self, house: u32) -> Option<Scope> {
        if self.denied.contains(&house) {
            return None;
        }
        match &self.own {
            HouseScope::Only(own) if own.contains(&house) => Some(Scope::Owner),
            HouseScope::All => Some(Scope::Other),
            _ if self.friend.contains(&house) => Some(Scope::Friend),
            _ if self.open.contains(&house) => Some(Scope::Other),
            _ => None,
        }
    }

    /// Whether the token's own narrowing (plugs, metrics) lets a group be seen: `plug` is the
    /// group's plug (`None` for a house or household aggregate, which a plug-narrowed token
    /// never sees).
    pub fn narrowed_to(&self, plug: Option<u32>, metric: crate::reading::Metric) -> bool {
        self.plugs
            .as_ref()
            .is_none_or(|set| plug.is_some_and(|p| set.contains(&p)))
            && self
                .metrics
                .as_ref()
                .is_none_or(|set| set.contains(&metric))
    }

    /// The scopes the request reaches any house in.
    pub fn scopes(&self) -> BTreeSet<Scope> {
        let mut scopes = BTreeSet::new();
        match &self.own {
            HouseScope::All => {
                scopes.insert(Scope::Other);
            }
            HouseScope::Only(own) if own.iter().any(|h| !self.denied.contains(h)) => {
                scopes.insert(Scope::Owner);
            }
            HouseScope::Only(_) => {}
        }
        if self
            .friend
            .iter()
            .any(|h| self.scope(*h) == Some(Scope::Friend))
        {
            scopes.insert(Scope::Friend);
        }
        if self
            .open
            .iter()
            .any(|h| self.scope(*h) == Some(Scope::Other))
        {
            scopes.insert(Scope::Other);
        }
        scopes
    }
}

/// What `grant` reaches under the owners' `rules`.
pub fn reach(grant: &Grant, rules: &BTreeMap<String, AccessRules>) -> Reach {
    let mut friend = BTreeSet::new();
    let mut open = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for owner in rules.values() {
        let app_denied = grant
            .app
            .as_ref()
            .is_some_and(|app| owner.denied_apps.contains(app));
        if app_denied {
            denied.extend(owner.houses.iter().copied());
        } else if owner.user != grant.user && owner.friends.contains(&grant.user) {
            friend.extend(owner.houses.iter().copied());
        } else if owner.user != grant.user && owner.others {
            open.extend(owner.houses.iter().copied());
        }
    }
    Reach {
        own: grant.houses.clone(),
        friend,
        open,
        denied,
        plugs: grant.plugs.clone(),
        metrics: grant.metrics.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(user: &str, app: Option<&str>, houses: &[u32]) -> Grant {
        Grant {
            user: user.into(),
            app: app.map(Into::into),
            houses: HouseScope::Only(houses.iter().copied().collect()),
            revocation_ids: Vec::new(),
            expires: None,
            plugs: None,
            metrics: None,
        }
    }

    fn rules(
        user: &str,
        houses: &[u32],
        friends: &[&str],
        others: bool,
        denied: &[&str],
    ) -> AccessRules {
        AccessRules {
            user: user.into(),
            houses: houses.to_vec(),
            friends: friends.iter().map(|f| f.to_string()).collect(),
            others,
            denied_apps: denied.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn friends_and_others_see_aggregates_and_denied_apps_see_nothing() {
        let mut all = BTreeMap::new();
        all.insert(
            "alice".into(),
            rules("alice", &[3], &["bob"], false, &["spy"]),
        );
        all.insert("carol".into(), rules("carol", &[5], &[], true, &[]));

        let bob = reach(&grant("bob", Some("plotter"), &[4]), &all);
        assert_eq!(bob.scope(4), Some(Scope::Owner));
        assert_eq!(bob.scope(3), Some(Scope::Friend));
        assert_eq!(bob.scope(5), Some(Scope::Other));
        assert_eq!(bob.scope(6), None);
        assert_eq!(bob.scopes().len(), 3);

        let spy = reach(&grant("bob", Some("spy"), &[4]), &all);
        assert_eq!(spy.scope(3), None);
        assert_eq!(spy.scope(4), Some(Scope::Owner));
        let alices_spy = reach(&grant("alice", Some("spy"), &[3]), &all);
        assert_eq!(
            alices_spy.scope(3),
            None,
            "the deny list binds the owner's own apps"
        );

        let dave = reach(&grant("dave", None, &[]), &all);
        assert_eq!(dave.scope(5), Some(Scope::Other));
        assert_eq!(dave.scope(3), None);

        let collector = Grant {
            houses: HouseScope::All,
            ..grant("collector", Some("spy"), &[])
        };
        let r = reach(&collector, &all);
        assert_eq!(r.scope(3), None);
        assert_eq!(
            r.scope(9),
            Some(Scope::Other),
            "the collector owns no house"
        );
    }

    #[test]
    fn oversized_or_unnamed_rules_are_refused() {
        assert!(rules("alice", &[1], &["bob"], false, &[]).check().is_ok());
        assert!(rules("", &[1], &[], false, &[]).check().is_err());
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(rules("alice", &[1], &[&long], false, &[]).check().is_err());
        let many: Vec<u32> = (0..=MAX_RULE_ENTRIES as u32).collect();
        assert!(rules("alice", &many, &[], false, &[]).check().is_err());
    }
}
