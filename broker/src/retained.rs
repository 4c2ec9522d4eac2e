//! Retained messages: the last retained message of each topic, capped like every other store of
//! client data, and found by filter without looking at every topic.
//!
//! Topics are kept in order, so a filter's literal levels before its first wildcard name a
//! range: `status/+/temp` reads only topics under `status/`, and a device's downlink
//! `/sys/{pk}/{dn}/#` only its own. Only a filter that starts with a wildcard reads them all.
//! A device connects with its downlink subscribed, so a connect storm costs one short range
//! read per device instead of a scan of every retained topic per device.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::session::Message;
use crate::topic;

/// Why a retained message was not stored. It is still delivered to current subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the retained store is full")]
pub struct RetainedFull;

#[derive(Debug)]
pub struct Retained {
    by_topic: BTreeMap<Arc<str>, Arc<Message>>,
    /// Topic and payload bytes of every stored message.
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl Retained {
    pub fn new(max_messages: usize, max_bytes: usize) -> Retained {
        Retained { by_topic: BTreeMap::new(), bytes: 0, max_messages, max_bytes }
    }

    /// Stores `message` as its topic's retained message, or deletes it when the payload is
    /// empty. A message that would take the store past either cap is refused; replacing a
    /// topic's message with one no larger always fits.
    pub fn update(&mut self, message: &Arc<Message>) -> Result<(), RetainedFull> {
        let existing = self.by_topic.get(&message.topic).map(|old| size(old));
        if message.payload.is_empty() {
            if let Some(old) = existing {
                self.by_topic.remove(&message.topic);
                self.bytes -= old;
            }
            return Ok(());
        }
        let new = size(message);
        let messages = self.by_topic.len() + usize::from(existing.is_none());
        let bytes = self.bytes - existing.unwrap_or(0) + new;
        if messages > self.max_messages || bytes > self.max_bytes {
            return Err(RetainedFull);
        }
        self.by_topic.insert(message.topic.clone(), message.clone());
        self.bytes = bytes;
        Ok(())
    }

    /// Retained messages whose topic `filter` matches.
    pub fn matching(&self, filter: &str) -> Vec<&Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let Some(wildcard) = levels.iter().position(|level| *level == "+" || *level == "#") else {
            return self.by_topic.get(filter).into_iter().collect();
        };
        let mut found: Vec<&Arc<Message>> = if wildcard == 0 {
            self.by_topic.values().collect()
        } else {
            let parent = levels[..wildcard].join("/");
            // `a/#` also matches `a` itself, which sorts before the `a/` range.
            let mut found: Vec<_> = self.by_topic.get(parent.as_str()).into_iter().collect();
            let prefix = parent + "/";
            found.extend(
                self.by_topic
                    .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .take_while(|(topic, _)| topic.starts_with(&prefix))
                    .map(|(_, message)| message),
            );
            found
        };
        found.retain(|message| topic::matches(filter, &message.topic));
        found
    }

    /// Deletes every stored message `forget` picks; returns how many. Reads every topic, so it
    /// is for rare events (an ownership change), not per message.
    pub fn forget(&mut self, mut forget: impl FnMut(&Message) -> bool) -> usize {
        let (before, mut freed) = (self.by_topic.len(), 0);
        self.by_topic.retain(|_, message| {
            let keep = !forget(message);
            if !keep {
                freed += size(message);
            }
            keep
        });
        self.bytes -= freed;
        before - self.by_topic.len()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Topic and payload bytes stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn size(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(payload.to_owned()),
            qos: 1,
            retain: true,
            origin: Default::default(),
        })
    }

    fn topics(retained: &Retained, filter: &str) -> Vec<String> {
        let mut found: Vec<String> =
            retained.matching(filter).iter().map(|m| m.topic.to_string()).collect();
        found.sort();
        found
    }

    #[test]
    fn filters_find_exactly_what_they_match() {
        let mut retained = Retained::new(100, 10_000);
        for topic in [
            "a",
            "a/b",
            "a/b/c",
            "ab",
            "a/x/c",
            "/sys/pk/dn",
            "/sys/pk/dn/thing/x",
            "/sys/pk/dn2/y",
            "$SYS/up",
        ] {
            retained.update(&message(topic, "v")).unwrap();
        }
        assert_eq!(topics(&retained, "a"), ["a"]);
        assert_eq!(topics(&retained, "a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&retained, "a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(topics(&retained, "a/+"), ["a/b"]);
        assert_eq!(topics(&retained, "/sys/pk/dn/#"), ["/sys/pk/dn", "/sys/pk/dn/thing/x"]);
        assert_eq!(topics(&retained, "+/b"), ["a/b"]);
        assert_eq!(topics(&retained, "#").len(), 8, "everything but $SYS");
        assert_eq!(topics(&retained, "$SYS/#"), ["$SYS/up"]);
        assert!(topics(&retained, "nothing/#").is_empty());
        assert!(topics(&retained, "a/b/c/d").is_empty());
    }

    #[test]
    fn replace_and_delete_keep_the_byte_count() {
        let mut retained = Retained::new(10, 1_000);
        retained.update(&message("t", "12345")).unwrap();
        assert_eq!(retained.bytes(), 6);
        retained.update(&message("t", "12")).unwrap();
        assert_eq!((retained.len(), retained.bytes()), (1, 3));
        retained.update(&message("t", "")).unwrap();
        assert_eq!((retained.len(), retained.bytes()), (0, 0));
        // Deleting what is not there is harmless.
        retained.update(&message("none", "")).unwrap();
        assert_eq!(retained.len(), 0);
    }

    #[test]
    fn caps_refuse_new_topics_and_growth_but_not_replacement() {
        let mut retained = Retained::new(2, 20);
        retained.update(&message("a", "1234")).unwrap();
        retained.update(&message("b", "1234")).unwrap();
        assert_eq!(retained.update(&message("c", "1")), Err(RetainedFull), "message cap");
        retained.update(&message("a", "12")).unwrap();
        // 3 + 18 bytes would pass the cap of 20.
        assert_eq!(retained.update(&message("b", "x".repeat(17).as_str())), Err(RetainedFull));
        assert_eq!(
            retained.matching("b")[0].payload,
            "1234",
            "the refused update left the old one"
        );
        retained.update(&message("b", "x".repeat(16).as_str())).unwrap();
        assert_eq!(retained.bytes(), 20);
        // Deleting frees room.
        retained.update(&message("a", "")).unwrap();
        retained.update(&message("c", "1")).unwrap();
    }

    #[test]
    fn forget_deletes_what_it_picks_and_frees_its_bytes() {
        let mut retained = Retained::new(10, 1_000);
        for topic in ["a/1", "a/2", "b/1"] {
            retained.update(&message(topic, "value")).unwrap();
        }
        assert_eq!(retained.forget(|m| m.topic.starts_with("a/")), 2);
        assert_eq!(topics(&retained, "#"), ["b/1"]);
        assert_eq!(retained.bytes(), "b/1".len() + "value".len());
        assert_eq!(retained.forget(|_| false), 0);
    }
}
