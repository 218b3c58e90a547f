//! Name expansion: objects are found by full name or by a unique short name (`web1` for
//! `web1.example.com`), as Ganeti's `ExpandNames` does. Callers turn `None` into their own error.

use super::model::{Config, Instance, Node};

pub fn instance<'a>(cfg: &'a Config, name: &str) -> Option<&'a Instance> {
    expand(cfg.instances.keys(), name).and_then(|full| cfg.instances.get(&full))
}

/// A node by name, short name or UUID.
pub fn node<'a>(cfg: &'a Config, name: &str) -> Option<&'a Node> {
    expand(cfg.nodes.keys(), name)
        .and_then(|full| cfg.nodes.get(&full))
        .or_else(|| cfg.node_by_uuid(name))
}

fn expand<'a>(names: impl Iterator<Item = &'a String>, name: &str) -> Option<String> {
    let prefix = format!("{name}.");
    let mut found = None;
    for n in names {
        if n == name {
            return Some(n.clone());
        }
        if n.starts_with(&prefix) {
            if found.is_some() {
                return None;
            }
            found = Some(n.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_when_unique() {
        let names = [
            "web1.example.com".to_string(),
            "web10.example.com".to_string(),
        ];
        assert_eq!(
            expand(names.iter(), "web1").as_deref(),
            Some("web1.example.com")
        );
        assert_eq!(expand(names.iter(), "web").as_deref(), None);
    }
}
