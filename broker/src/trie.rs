//! The subscription index: a trie over topic levels, so matching a topic costs the depth of the
//! topic times the wildcard branches, not the number of subscriptions (every device holds its
//! own `/sys/{pk}/{dn}/#`, so a broker has at least as many filters as devices).

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct SubscriptionIndex {
    root: Node,
    filters: usize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Subscribers whose filter ends exactly here.
    exact: HashMap<Arc<str>, u8>,
    /// Subscribers of `<this level>/#`.
    multi: HashMap<Arc<str>, u8>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.multi.is_empty()
    }
}

impl SubscriptionIndex {
    /// Adds or updates one subscription (filters are validated by the caller).
    pub fn insert(&mut self, filter: &str, session: Arc<str>, qos: u8) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                if node.multi.insert(session, qos).is_none() {
                    self.filters += 1;
                }
                return;
            }
            node = node.children.entry(level.into()).or_default();
        }
        if node.exact.insert(session, qos).is_none() {
            self.filters += 1;
        }
    }

    /// Removes one subscription, pruning branches left empty.
    pub fn remove(&mut self, filter: &str, session: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        if remove_at(&mut self.root, &levels, session) {
            self.filters -= 1;
        }
    }

    /// Removes every subscription of `session`, pruning branches left empty. It walks the
    /// whole trie, so it is for rare events only: a takeover that replaced a connection whose
    /// filters the router cannot ask for (see [`crate::router::Router::connect`]).
    /// Returns the bytes of the filters removed, and how many.
    pub fn remove_session(&mut self, session: &str) -> (usize, usize) {
        let (removed, bytes) = remove_session_at(&mut self.root, session, None);
        self.filters -= removed;
        (bytes, removed)
    }

    /// Every session subscribed to a filter matching `topic`, each once, at the highest QoS
    /// among its matching filters.
    pub fn matches(&self, topic: &str) -> Vec<(Arc<str>, u8)> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found: HashMap<Arc<str>, u8> = HashMap::new();
        // MQTT §4.7.2: wildcards at the first level do not match `$` topics.
        let system = topic.starts_with('$');
        collect(&self.root, &levels, system, &mut found);
        found.into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.filters
    }
}

fn remove_at(node: &mut Node, levels: &[&str], session: &str) -> bool {
    match levels {
        [] => node.exact.remove(session).is_some(),
        ["#"] => node.multi.remove(session).is_some(),
        [level, rest @ ..] => {
            let Some(child) = node.children.get_mut(*level) else { return false };
            let removed = remove_at(child, rest, session);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

/// Removes `session` below `node`, whose filter prefix is `path_len` bytes long (`None` at the
/// root); returns how many filters went and their bytes.
fn remove_session_at(node: &mut Node, session: &str, path_len: Option<usize>) -> (usize, usize) {
    let (mut removed, mut bytes) = (0, 0);
    if node.exact.remove(session).is_some() {
        removed += 1;
        bytes += path_len.unwrap_or(0);
    }
    if node.multi.remove(session).is_some() {
        // `{path}/#`, or `#` at the root.
        removed += 1;
        bytes += path_len.map_or(1, |len| len + 2);
    }
    node.children.retain(|level, child| {
        let child_len = path_len.map_or(level.len(), |len| len + 1 + level.len());
        let (r, b) = remove_session_at(child, session, Some(child_len));
        removed += r;
        bytes += b;
        !child.is_empty()
    });
    (removed, bytes)
}

fn collect(node: &Node, levels: &[&str], skip_wildcards: bool, found: &mut HashMap<Arc<str>, u8>) {
    let mut add = |subscribers: &HashMap<Arc<str>, u8>| {
        for (session, qos) in subscribers {
            let best = found.entry(session.clone()).or_insert(*qos);
            *best = (*best).max(*qos);
        }
    };
    // `a/#` also matches `a` itself (§4.7.1.2).
    if !skip_wildcards {
        add(&node.multi);
    }
    let [level, rest @ ..] = levels else {
        add(&node.exact);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, false, found);
    }
    if !skip_wildcards && let Some(child) = node.children.get("+") {
        collect(child, rest, false, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(mut found: Vec<(Arc<str>, u8)>) -> Vec<(String, u8)> {
        found.sort();
        found.into_iter().map(|(id, qos)| (id.to_string(), qos)).collect()
    }

    #[test]
    fn matches_like_the_spec() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/b", "exact".into(), 0);
        index.insert("a/+", "plus".into(), 1);
        index.insert("a/#", "hash".into(), 2);
        index.insert("#", "all".into(), 0);
        index.insert("$SYS/#", "sys".into(), 0);
        index.insert("+/b", "plus-first".into(), 1);
        assert_eq!(index.len(), 6);

        assert_eq!(
            ids(index.matches("a/b")),
            vec![
                ("all".into(), 0),
                ("exact".into(), 0),
                ("hash".into(), 2),
                ("plus".into(), 1),
                ("plus-first".into(), 1)
            ]
        );
        assert_eq!(ids(index.matches("a")), vec![("all".into(), 0), ("hash".into(), 2)]);
        assert_eq!(ids(index.matches("$SYS/x")), vec![("sys".into(), 0)]);
        assert_eq!(ids(index.matches("$SYS")), vec![("sys".into(), 0)]);
        assert_eq!(ids(index.matches("x/y/z")), vec![("all".into(), 0)]);
    }

    #[test]
    fn one_delivery_per_session_at_highest_qos() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/+", "s".into(), 0);
        index.insert("a/#", "s".into(), 2);
        index.insert("a/b", "s".into(), 1);
        assert_eq!(ids(index.matches("a/b")), vec![("s".into(), 2)]);
    }

    #[test]
    fn remove_prunes() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/b/c", "s".into(), 0);
        index.insert("a/#", "s".into(), 0);
        index.insert("a/#", "t".into(), 0);
        index.remove("a/b/c", "s");
        index.remove("a/#", "s");
        index.remove("a/#", "nobody");
        assert_eq!(index.len(), 1);
        assert!(index.root.children["a"].children.is_empty(), "empty branch pruned");
        assert_eq!(ids(index.matches("a/b/c")), vec![("t".into(), 0)]);
        index.remove("a/#", "t");
        assert!(index.len() == 0 && index.root.is_empty());
    }

    #[test]
    fn remove_session_takes_every_filter_of_one_session() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/b/c", "s".into(), 0);
        index.insert("a/#", "s".into(), 1);
        index.insert("#", "s".into(), 1);
        index.insert("a/+", "t".into(), 0);
        // Their bytes too, for the session-state budget: "a/b/c", "a/#", "#".
        assert_eq!(index.remove_session("s"), (5 + 3 + 1, 3));
        assert_eq!(index.len(), 1);
        assert!(!index.root.children["a"].children.contains_key("b"), "empty branch pruned");
        assert_eq!(ids(index.matches("a/b")), vec![("t".into(), 0)]);
        index.remove_session("t");
        assert!(index.len() == 0 && index.root.is_empty());
    }
}
