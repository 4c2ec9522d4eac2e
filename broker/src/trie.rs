//! The subscription index: a trie over topic levels, so matching a topic costs the depth of the
//! topic times the wildcard branches, not the number of subscriptions (every device holds its
//! own `/sys/{pk}/{dn}/#`, so a broker has at least as many filters as devices).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct SubscriptionIndex {
    root: Node,
    filters: usize,
    /// Shared subscriptions (MQTT 5.0 §4.8.2), by their full `$share/{group}/{filter}`: each
    /// matching message goes to one member, in turn. Matched by a walk over the groups, so
    /// they are for the few consumers that balance a stream, not for every device.
    shared: HashMap<Box<str>, SharedGroup>,
}

struct SharedGroup {
    /// The filter after `$share/{group}/`.
    filter: Box<str>,
    members: Vec<(Arc<str>, u8)>,
    /// The member the next message goes to.
    next: AtomicUsize,
}

/// The group and filter of a shared subscription `$share/{group}/{filter}` (MQTT 5.0 §4.8.2),
/// or `None` for an ordinary filter. The group is at least one character with no wildcard.
pub fn shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    let valid = !group.is_empty() && !group.contains(['+', '#']) && !filter.is_empty();
    valid.then_some((group, filter))
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
        if let Some((_, inner)) = shared(filter) {
            let group = self.shared.entry(filter.into()).or_insert_with(|| SharedGroup {
                filter: inner.into(),
                members: Vec::new(),
                next: AtomicUsize::new(0),
            });
            match group.members.iter_mut().find(|(member, _)| *member == session) {
                Some(member) => member.1 = qos,
                None => {
                    group.members.push((session, qos));
                    self.filters += 1;
                }
            }
            return;
        }
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
        if shared(filter).is_some() {
            if let Some(group) = self.shared.get_mut(filter) {
                let before = group.members.len();
                group.members.retain(|(member, _)| &**member != session);
                self.filters -= before - group.members.len();
                if group.members.is_empty() {
                    self.shared.remove(filter);
                }
            }
            return;
        }
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
        let (mut removed, mut bytes) = remove_session_at(&mut self.root, session, None);
        self.shared.retain(|filter, group| {
            let before = group.members.len();
            group.members.retain(|(member, _)| &**member != session);
            removed += before - group.members.len();
            bytes += (before - group.members.len()) * filter.len();
            !group.members.is_empty()
        });
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
        // One member of each matching group, in turn; a session that also matches otherwise
        // gets one delivery at the higher QoS.
        for group in self.shared.values() {
            if group.members.is_empty() || !crate::topic::matches(&group.filter, topic) {
                continue;
            }
            let turn = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
            let (member, qos) = &group.members[turn];
            let granted = found.entry(member.clone()).or_insert(*qos);
            *granted = (*granted).max(*qos);
        }
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
    fn shared_groups_take_turns() {
        let mut index = SubscriptionIndex::default();
        index.insert("$share/g/a/+", "s1".into(), 1);
        index.insert("$share/g/a/+", "s2".into(), 0);
        index.insert("$share/h/a/#", "s3".into(), 1);
        assert_eq!(index.len(), 3);
        let mut turns = Vec::new();
        for _ in 0..4 {
            let mut got: Vec<String> =
                index.matches("a/b").into_iter().map(|(s, _)| s.to_string()).collect();
            got.sort();
            turns.push(got);
        }
        assert_eq!(turns, [["s1", "s3"], ["s2", "s3"], ["s1", "s3"], ["s2", "s3"]]);
        assert!(index.matches("b/c").is_empty());
        index.remove("$share/g/a/+", "s1");
        assert_eq!(index.remove_session("s3").1, 1);
        let only: Vec<String> =
            index.matches("a/b").into_iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(only, ["s2"]);
        assert_eq!(shared("$share//a"), None);
        assert_eq!(shared("$share/g+/a"), None);
        assert_eq!(shared("$share/g/a/#"), Some(("g", "a/#")));
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
