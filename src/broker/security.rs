//! Who may connect, and what they may do where: ActiveMQ's
//! `simpleAuthenticationPlugin` and `authorizationPlugin`, protocol-free.
//!
//! Users have a password and groups. Authorization entries name, for a
//! queue or topic pattern (`.`-separated, `*` one part, `>` the rest), the
//! groups that may read (consume, browse), write (send) and admin (create a
//! destination that does not exist yet). A destination's permissions are the
//! union of every entry that covers it; once there is one entry, a
//! destination no entry covers is refused to everyone. Temporary
//! destinations have an entry of their own (anyone may use them without it).
//!
//! The messages are ActiveMQ's, word for word: clients and scripts match on them.

use crate::broker::destination::{Destination, DestinationKind};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// A refusal (ActiveMQ's `java.lang.SecurityException`).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// What a connection wants to do with a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Consume or browse.
    Read,
    /// Send.
    Write,
    /// Create (or remove) it.
    Admin,
}

impl Access {
    fn verb(self) -> &'static str {
        match self {
            Access::Read => "read from",
            Access::Write => "write to",
            Access::Admin => "create",
        }
    }
}

/// An authenticated connection's identity: its user and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    user: Arc<str>,
    groups: Arc<[Arc<str>]>,
}

impl Subject {
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Groups allowed one kind of access; `*` allows everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Acl {
    groups: Vec<Arc<str>>,
    anyone: bool,
}

impl Acl {
    /// `"admins,users"` (ActiveMQ's attribute form).
    fn parse(list: &str) -> Acl {
        let mut acl = Acl::default();
        for g in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if g == "*" {
                acl.anyone = true;
            } else {
                acl.groups.push(Arc::from(g));
            }
        }
        acl
    }

    fn allows(&self, subject: &Subject) -> bool {
        self.anyone || subject.groups.iter().any(|g| self.groups.contains(g))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    topic: bool,
    pattern: String,
    read: Acl,
    write: Acl,
    admin: Acl,
}

impl Entry {
    fn acl(&self, access: Access) -> &Acl {
        match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::Admin => &self.admin,
        }
    }
}

/// One user of the configuration (`[[security.users]]`).
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserSpec {
    pub name: String,
    pub password: String,
    /// Comma-separated group names.
    pub groups: String,
}

impl fmt::Debug for UserSpec {
    // Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// One authorization entry of the configuration (`[[security.authorization]]`):
/// a `queue` or `topic` pattern and comma-separated groups for each kind of access.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntrySpec {
    pub queue: Option<String>,
    pub topic: Option<String>,
    pub read: String,
    pub write: String,
    pub admin: String,
}

/// The security settings, checked once at start-up.
pub struct Security {
    /// User name -> (password, subject).
    users: HashMap<String, (String, Subject)>,
    /// Who a connection without credentials is; `None`: it is refused.
    anonymous: Option<Subject>,
    entries: Vec<Entry>,
    /// ACLs of temporary destinations (read, write, admin); `None`: anyone.
    temp: Option<[Acl; 3]>,
    authorizing: bool,
}

impl fmt::Debug for Security {
    // Never the passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous)
            .field("entries", &self.entries)
            .field("temp", &self.temp)
            .finish()
    }
}

impl Default for Security {
    /// No users (anyone connects) and no authorization entries.
    fn default() -> Self {
        Security::new(&[], false, "anonymous", "anonymous", &[], None)
    }
}

impl Security {
    /// `users` empty: authentication is off and every connection is
    /// `anonymous_user` in `anonymous_group`. Otherwise a connection must
    /// give a known user and its password, except that one giving neither
    /// is anonymous when `anonymous_access` is set (ActiveMQ's
    /// `anonymousAccessAllowed`). `entries` empty: authorization is off.
    pub fn new(
        users: &[UserSpec],
        anonymous_access: bool,
        anonymous_user: &str,
        anonymous_group: &str,
        entries: &[EntrySpec],
        temp: Option<&EntrySpec>,
    ) -> Security {
        let subject = |user: &str, groups: &str| Subject {
            user: Arc::from(user),
            groups: groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(Arc::from)
                .collect(),
        };
        let anonymous = (users.is_empty() || anonymous_access)
            .then(|| subject(anonymous_user, anonymous_group));
        let users = users
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    (u.password.clone(), subject(&u.name, &u.groups)),
                )
            })
            .collect();
        let entries: Vec<Entry> = entries
            .iter()
            .filter_map(|e| {
                let (topic, pattern) = match (&e.queue, &e.topic) {
                    (Some(q), _) => (false, q.clone()),
                    (None, Some(t)) => (true, t.clone()),
                    (None, None) => return None,
                };
                Some(Entry {
                    topic,
                    pattern,
                    read: Acl::parse(&e.read),
                    write: Acl::parse(&e.write),
                    admin: Acl::parse(&e.admin),
                })
            })
            .collect();
        let temp = temp.map(|t| {
            [
                Acl::parse(&t.read),
                Acl::parse(&t.write),
                Acl::parse(&t.admin),
            ]
        });
        Security {
            authorizing: !entries.is_empty() || temp.is_some(),
            users,
            anonymous,
            entries,
            temp,
        }
    }

    /// Whether any authorization applies (when not, every check passes and
    /// sessions skip them).
    pub fn authorizing(&self) -> bool {
        self.authorizing
    }

    /// The identity of a connection that gave `user` and `password` (either
    /// may be absent), or ActiveMQ's refusal.
    pub fn authenticate(
        &self,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Subject, SecurityError> {
        if self.users.is_empty() {
            let anonymous = self.anonymous.clone().expect("anonymous without users");
            return Ok(match user {
                Some(u) => Subject {
                    user: Arc::from(u),
                    ..anonymous
                },
                None => anonymous,
            });
        }
        if let (Some(anonymous), None, None) = (&self.anonymous, user, password) {
            return Ok(anonymous.clone());
        }
        match user.and_then(|u| self.users.get(u)) {
            Some((expected, subject)) if password.is_some_and(|p| same(expected, p)) => {
                Ok(subject.clone())
            }
            // ActiveMQ prints a missing user name as "null".
            _ => Err(SecurityError(format!(
                "User name [{}] or password is invalid.",
                user.unwrap_or("null")
            ))),
        }
    }

    /// Whether `subject` may have `access` to `destination` (a single one:
    /// composites are checked element by element by the caller).
    pub fn allows(&self, subject: &Subject, destination: &Destination, access: Access) -> bool {
        if !self.authorizing {
            return true;
        }
        let index = access as usize;
        if destination.kind.is_temporary() {
            return self
                .temp
                .as_ref()
                .is_none_or(|acls| acls[index].allows(subject));
        }
        let topic = destination.kind == DestinationKind::Topic;
        // For a wildcard (a subscription's), the entries of every
        // destination it may cover (ActiveMQ's DestinationMap lookup); the
        // topics it joins are each checked as well.
        self.entries.iter().any(|e| {
            e.topic == topic
                && overlap(&e.pattern, &destination.name)
                && e.acl(access).allows(subject)
        })
    }

    /// [`Security::allows`], as ActiveMQ's refusal.
    pub fn check(
        &self,
        subject: &Subject,
        destination: &Destination,
        access: Access,
    ) -> Result<(), SecurityError> {
        if self.allows(subject, destination, access) {
            Ok(())
        } else {
            Err(SecurityError(format!(
                "User {} is not authorized to {}: {destination}",
                subject.user,
                access.verb()
            )))
        }
    }
}

/// Whether some destination name matches both patterns (for a name without
/// wildcards: whether the pattern matches it).
fn overlap(a: &str, b: &str) -> bool {
    fn parts(a: &[&str], b: &[&str]) -> bool {
        match (a.split_first(), b.split_first()) {
            (Some((&">", _)), _) | (_, Some((&">", _))) => true,
            (None, None) => true,
            (Some((x, a)), Some((y, b))) => (*x == "*" || *y == "*" || x == y) && parts(a, b),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    parts(&a, &b)
}

/// Compares passwords in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, groups: &str) -> UserSpec {
        UserSpec {
            name: name.into(),
            password: password.into(),
            groups: groups.into(),
        }
    }

    fn entry(
        queue: Option<&str>,
        topic: Option<&str>,
        read: &str,
        write: &str,
        admin: &str,
    ) -> EntrySpec {
        EntrySpec {
            queue: queue.map(Into::into),
            topic: topic.map(Into::into),
            read: read.into(),
            write: write.into(),
            admin: admin.into(),
        }
    }

    fn secured() -> Security {
        Security::new(
            &[
                user("admin", "adminpw", "admins,users"),
                user("user", "userpw", "users"),
            ],
            false,
            "anonymous",
            "anonymous",
            &[
                entry(Some(">"), None, "admins", "admins", "admins"),
                entry(Some("USERS.>"), None, "users", "users", "users"),
                entry(Some("OPEN.*"), None, "*", "*", ""),
                entry(None, Some("ActiveMQ.Advisory.>"), "*", "*", "*"),
            ],
            None,
        )
    }

    #[test]
    fn users_need_their_password() {
        let s = secured();
        assert_eq!(
            s.authenticate(Some("admin"), Some("adminpw"))
                .unwrap()
                .user(),
            "admin"
        );
        let wrong = s.authenticate(Some("admin"), Some("nope")).unwrap_err();
        assert_eq!(wrong.0, "User name [admin] or password is invalid.");
        assert!(s.authenticate(Some("admin"), None).is_err());
        assert!(s.authenticate(Some("ghost"), Some("adminpw")).is_err());
        assert_eq!(
            s.authenticate(None, None).unwrap_err().0,
            "User name [null] or password is invalid."
        );
        assert!(!same("abc", "abd") && !same("abc", "ab") && same("abc", "abc"));
        // A user whose password is empty still has to give one.
        let s = Security::new(&[user("blank", "", "users")], false, "a", "a", &[], None);
        assert!(s.authenticate(Some("blank"), None).is_err());
        assert!(s.authenticate(Some("blank"), Some("")).is_ok());
    }

    #[test]
    fn anonymous_access_is_for_connections_without_credentials() {
        let s = Security::new(
            &[user("admin", "adminpw", "admins")],
            true,
            "guest",
            "guests",
            &[],
            None,
        );
        let anon = s.authenticate(None, None).unwrap();
        assert_eq!(anon.user(), "guest");
        assert_eq!(&*anon.groups, &[Arc::from("guests")]);
        // Credentials given are checked.
        assert!(s.authenticate(Some("admin"), Some("x")).is_err());
        // Without users, anyone connects, under the name given.
        let open = Security::default();
        assert_eq!(
            open.authenticate(Some("bob"), Some("?")).unwrap().user(),
            "bob"
        );
        assert_eq!(open.authenticate(None, None).unwrap().user(), "anonymous");
        assert!(!open.authorizing());
    }

    #[test]
    fn entries_are_unions_and_anything_uncovered_is_refused() {
        let s = secured();
        let admin = s.authenticate(Some("admin"), Some("adminpw")).unwrap();
        let user = s.authenticate(Some("user"), Some("userpw")).unwrap();
        let q = |n: &str| Destination::queue(n);
        assert!(s.allows(&admin, &q("ANY.THING"), Access::Write));
        assert!(!s.allows(&user, &q("ANY.THING"), Access::Read));
        assert!(s.allows(&user, &q("USERS.a.b"), Access::Read));
        assert!(s.allows(&user, &q("USERS"), Access::Admin), "a.> covers a");
        assert!(s.allows(&user, &q("OPEN.x"), Access::Write), "* is anyone");
        assert!(!s.allows(&user, &q("OPEN.x"), Access::Admin));
        assert!(!s.allows(&user, &q("OPEN.x.y"), Access::Write));
        // Queue entries do not cover topics: no topic entry but advisories.
        assert!(!s.allows(&admin, &Destination::topic("news"), Access::Read));
        assert!(s.allows(
            &user,
            &Destination::topic("ActiveMQ.Advisory.TempQueue"),
            Access::Read
        ));
        assert_eq!(
            s.check(&user, &q("ANY"), Access::Write).unwrap_err().0,
            "User user is not authorized to write to: queue://ANY"
        );
        assert_eq!(
            s.check(&user, &Destination::topic("t"), Access::Admin)
                .unwrap_err()
                .0,
            "User user is not authorized to create: topic://t"
        );
        // A wildcard is allowed where an entry of something it covers allows it.
        let t = |n: &str| Destination::topic(n);
        assert!(s.allows(&user, &t("ActiveMQ.Advisory.*"), Access::Read));
        assert!(
            s.allows(&user, &t(">"), Access::Read),
            "> covers the advisories"
        );
        assert!(!s.allows(&user, &q("ANY.*"), Access::Read));
        assert!(s.allows(&user, &q("USERS.*.x"), Access::Read));
        assert!(s.allows(&user, &q("*.a"), Access::Read), "USERS.a");
        assert!(overlap("a.>", "a") && overlap("a.*.c", "a.b.>") && !overlap("a.*", "b.>"));
        assert!(!overlap("a.b", "a.b.c") && overlap("*", "x") && !overlap("*", "x.y"));
        assert_eq!(
            s.check(&user, &q("ANY"), Access::Read).unwrap_err().0,
            "User user is not authorized to read from: queue://ANY"
        );
    }

    #[test]
    fn temporary_destinations_have_their_own_entry() {
        let tq = Destination::new(DestinationKind::TempQueue, "ID:x:1");
        let s = secured();
        let user = s.authenticate(Some("user"), Some("userpw")).unwrap();
        assert!(s.allows(&user, &tq, Access::Admin), "no entry: anyone");
        let s = Security::new(
            &[user_spec()],
            false,
            "anonymous",
            "anonymous",
            &[],
            Some(&entry(None, None, "users", "users", "admins")),
        );
        let user = s.authenticate(Some("user"), Some("userpw")).unwrap();
        assert!(s.authorizing());
        assert!(s.allows(&user, &tq, Access::Read));
        assert!(!s.allows(&user, &tq, Access::Admin));
        // No entry for ordinary destinations: they are refused.
        assert!(!s.allows(&user, &Destination::queue("q"), Access::Read));
    }

    fn user_spec() -> UserSpec {
        user("user", "userpw", "users")
    }
}
