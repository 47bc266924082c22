//! Access modifiers of a stored file: the owner's own apps always, friends' apps and other
//! users' apps when the owner says so, and never an app on the file's deny list (the owner's
//! own apps included). Who a caller is comes from its app token (user, and app when the token
//! was handed to one), checked by the node before the rules here are asked.

use super::{check_name, MasterError};
use serde::{Deserialize, Serialize};

/// Most friends or denied apps one file names.
pub const MAX_ACCESS_ENTRIES: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAccess {
    /// Users whose apps may read the file.
    pub friends: Vec<String>,
    /// Whether every other user's apps may read it.
    pub others: bool,
    /// Apps (by the name their token gives) that may not read it, whoever's they are.
    pub denied_apps: Vec<String>,
}

/// Who asks: the token's user, and the app it was handed to (none for the user's own token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    pub user: String,
    pub app: Option<String>,
}

impl FileAccess {
    pub fn check(&self) -> Result<(), MasterError> {
        for (what, list) in [
            ("friends", &self.friends),
            ("denied apps", &self.denied_apps),
        ] {
            if list.len() > MAX_ACCESS_ENTRIES {
                return Err(MasterError::BadPlan(format!(
                    "{} {what}; at most {MAX_ACCESS_ENTRIES}",
                    list.len()
                )));
            }
            for name in list {
                check_name(what, name)?;
            }
        }
        Ok(())
    }

    fn denies(&self, reader: &Reader) -> bool {
        reader
            .app
            .as_ref()
            .is_some_and(|app| self.denied_apps.contains(app))
    }

    /// Whether `reader` may read a file of `owner` under these modifiers.
    pub fn may_read(&self, owner: &str, reader: &Reader) -> bool {
        !self.denies(reader)
            && (reader.user == owner || self.others || self.friends.contains(&reader.user))
    }

    /// Whether `reader` may write, refresh or delete a file of `owner`: the owner's own apps
    /// that the file does not deny.
    pub fn may_write(&self, owner: &str, reader: &Reader) -> bool {
        !self.denies(reader) && reader.user == owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(user: &str, app: Option<&str>) -> Reader {
        Reader {
            user: user.into(),
            app: app.map(Into::into),
        }
    }

    #[test]
    fn each_modifier_and_the_deny_list() {
        let private = FileAccess::default();
        assert!(private.may_read("ann", &reader("ann", None)));
        assert!(private.may_read("ann", &reader("ann", Some("phone"))));
        assert!(!private.may_read("ann", &reader("bob", None)));

        let friends = FileAccess {
            friends: vec!["bob".into()],
            ..FileAccess::default()
        };
        assert!(friends.may_read("ann", &reader("bob", Some("tablet"))));
        assert!(!friends.may_read("ann", &reader("eve", None)));
        assert!(!friends.may_write("ann", &reader("bob", None)));

        let open = FileAccess {
            others: true,
            denied_apps: vec!["tracker".into()],
            ..FileAccess::default()
        };
        assert!(open.may_read("ann", &reader("eve", None)));
        assert!(!open.may_read("ann", &reader("eve", Some("tracker"))));
        // The deny list holds for the owner's own apps too, reading and writing.
        assert!(!open.may_read("ann", &reader("ann", Some("tracker"))));
        assert!(!open.may_write("ann", &reader("ann", Some("tracker"))));
        assert!(open.may_write("ann", &reader("ann", Some("phone"))));
    }

    #[test]
    fn oversized_or_odd_lists_are_refused() {
        let many = FileAccess {
            friends: (0..300).map(|i| format!("u{i}")).collect(),
            ..FileAccess::default()
        };
        assert_eq!(many.check().unwrap_err().code(), "bad_plan");
        let odd = FileAccess {
            denied_apps: vec!["a\nb".into()],
            ..FileAccess::default()
        };
        assert_eq!(odd.check().unwrap_err().code(), "bad_name");
    }
}
