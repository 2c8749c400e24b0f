//! Who may register and call which services.
//!
//! The only identity is the uid the kernel reported for the connection
//! (SO_PEERCRED). Services declared in the configuration (`[[service]]`,
//! names as glob patterns) say which uids may register them and which may
//! call them. A name no rule matches is a personal service: anyone may
//! register it, and it can be called by its owner's uid and by root.

/// A set of uids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uids {
    /// Everyone.
    Any,
    /// Just these.
    Only(Vec<u32>),
}

impl Uids {
    fn contains(&self, uid: u32) -> bool {
        match self {
            Uids::Any => true,
            Uids::Only(list) => list.contains(&uid),
        }
    }
}

/// One declared service (or family of services).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    /// Name pattern: `*` matches any run of characters, `?` one character.
    pub pattern: String,
    /// Who may register a matching name.
    pub register: Uids,
    /// Who may call a matching service.
    pub call: Uids,
}

/// The broker's access policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Declared services, first match wins.
    pub rules: Vec<ServiceRule>,
}

/// Root may do anything.
const ROOT: u32 = 0;

impl Policy {
    fn rule(&self, name: &str) -> Option<&ServiceRule> {
        self.rules.iter().find(|r| glob(&r.pattern, name))
    }

    /// May `uid` register `name`?
    pub fn may_register(&self, name: &str, uid: u32) -> Result<(), String> {
        match self.rule(name) {
            Some(r) if uid != ROOT && !r.register.contains(uid) => Err(format!(
                "uid {uid} may not register {name} (declared by rule {:?})",
                r.pattern
            )),
            _ => Ok(()),
        }
    }

    /// May `caller` call `name`, registered by `owner`?
    pub fn may_call(&self, name: &str, caller: u32, owner: u32) -> Result<(), String> {
        if caller == ROOT {
            return Ok(());
        }
        match self.rule(name) {
            Some(r) if r.call.contains(caller) => Ok(()),
            Some(r) => Err(format!(
                "uid {caller} may not call {name} (declared by rule {:?})",
                r.pattern
            )),
            None if caller == owner => Ok(()),
            None => Err(format!(
                "uid {caller} may not call {name}: it belongs to uid {owner} and is not declared system-wide"
            )),
        }
    }
}

pub use shmbus::glob::glob;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("org.example.*", "org.example.files"));
        assert!(glob("*", ""));
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("org.*.x", "org.a.y"));
        assert!(glob("org.*.x", "org.a.b.x"));
        assert!(!glob("abc", "abcd"));
    }

    #[test]
    fn personal_and_declared_services() {
        let p = Policy {
            rules: vec![
                ServiceRule {
                    pattern: "sys.*".into(),
                    register: Uids::Only(vec![100]),
                    call: Uids::Any,
                },
                ServiceRule {
                    pattern: "team.*".into(),
                    register: Uids::Any,
                    call: Uids::Only(vec![200, 201]),
                },
            ],
        };
        assert!(p.may_register("sys.log", 100).is_ok());
        assert!(p.may_register("sys.log", 101).is_err());
        assert!(p.may_register("sys.log", 0).is_ok());
        assert!(p.may_call("sys.log", 555, 100).is_ok());
        assert!(p.may_call("team.x", 200, 7).is_ok());
        assert!(
            p.may_call("team.x", 7, 7).is_err(),
            "declared rules override ownership"
        );
        assert!(p.may_call("mine", 1000, 1000).is_ok());
        assert!(p.may_call("mine", 1001, 1000).is_err());
        assert!(p.may_call("mine", 0, 1000).is_ok());
    }
}
