//! Retained messages: the last retained message of each topic, capped like every other store of
//! client data, and found by filter without looking at every topic.
//!
//! Topics are kept in order, so a filter's literal levels before its first wildcard name a
//! range: `status/+/temp` reads only topics under `status/`, and a device's downlink
//! `/sys/{pk}/{dn}/#` only its own. Only a filter that starts with a wildcard reads them all.
//! A device connects with its downlink subscribed, so a connect storm costs one short range
//! read per device instead of a scan of every retained topic per device.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use meridian_registry::ids::AccountId;

use crate::acl::Origin;
use crate::session::Message;
use crate::topic;

/// Why a retained message was not stored. It is still delivered to current subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the retained store is full")]
pub struct RetainedFull;

#[derive(Debug)]
pub struct Retained {
    by_topic: BTreeMap<Arc<str>, Entry>,
    /// Topic and payload bytes of every stored message.
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Stamped on each stored message, so a [`RetainedCursor`] can tell what was stored after
    /// its subscription was made.
    sequence: u64,
    /// Stored messages per sending application account (never a zero count), so forgetting
    /// what an account left behind costs nothing when it left nothing ([`Retained::sent_by`]).
    by_account: HashMap<AccountId, usize>,
    /// Stored messages sent by application clients of any account.
    applications: usize,
}

#[derive(Debug)]
struct Entry {
    message: Arc<Message>,
    sequence: u64,
}

/// Where the retained messages owed to one new subscription are read next: a filter and the
/// last topic read, so a subscription owed a million messages costs two strings until they
/// are sent, a page at a time, as its connection drains ([`Retained::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedCursor {
    pub filter: String,
    /// The subscription's granted QoS.
    pub qos: u8,
    /// The last topic read; `None` before the first page.
    after: Option<Arc<str>>,
    /// Messages stored after the subscription was made are not sent from here: the
    /// subscription already received them as they were published.
    upto: u64,
    /// A device's implicit downlink: only messages it carries are sent (see
    /// [`crate::acl::carries_downlink`]).
    downlink_only: bool,
}

impl RetainedCursor {
    /// The same cursor, for a device's implicit downlink.
    pub fn for_downlink(self) -> RetainedCursor {
        RetainedCursor { downlink_only: true, ..self }
    }

    /// Whether only the messages a device's implicit downlink carries are due.
    pub fn downlink_only(&self) -> bool {
        self.downlink_only
    }
}

/// Topics one [`Retained::page`] looks at, matching or not, so a filter that matches little of
/// a large store holds the store's lock for a bounded time per page.
const SCAN: usize = 4096;

impl Retained {
    pub fn new(max_messages: usize, max_bytes: usize) -> Retained {
        Retained {
            by_topic: BTreeMap::new(),
            bytes: 0,
            max_messages,
            max_bytes,
            sequence: 0,
            by_account: HashMap::new(),
            applications: 0,
        }
    }

    /// Stored messages sent by application clients of `account`.
    pub fn sent_by(&self, account: &AccountId) -> usize {
        self.by_account.get(account).copied().unwrap_or(0)
    }

    /// Stored messages sent by application clients of any account.
    pub fn sent_by_applications(&self) -> usize {
        self.applications
    }

    fn count(&mut self, message: &Message) {
        if let Origin::Application(account) = &message.origin {
            *self.by_account.entry(account.clone()).or_default() += 1;
            self.applications += 1;
        }
    }

    fn uncount(&mut self, message: &Message) {
        if let Origin::Application(account) = &message.origin {
            if let Some(count) = self.by_account.get_mut(account) {
                *count -= 1;
                if *count == 0 {
                    self.by_account.remove(account);
                }
            }
            self.applications -= 1;
        }
    }

    /// Removes `topic`'s entry, keeping the byte and origin counts.
    fn remove(&mut self, topic: &str) -> Option<Entry> {
        let entry = self.by_topic.remove(topic)?;
        self.bytes -= size(&entry.message);
        self.uncount(&entry.message);
        Some(entry)
    }

    /// Stores `message` as its topic's retained message, or deletes it when the payload is
    /// empty. A message that would take the store past either cap is refused; replacing a
    /// topic's message with one no larger always fits.
    pub fn update(&mut self, message: &Arc<Message>) -> Result<(), RetainedFull> {
        let existing = self.by_topic.get(&message.topic).map(|old| size(&old.message));
        if message.payload.is_empty() {
            self.remove(&message.topic);
            return Ok(());
        }
        let new = size(message);
        let messages = self.by_topic.len() + usize::from(existing.is_none());
        let bytes = self.bytes - existing.unwrap_or(0) + new;
        if messages > self.max_messages || bytes > self.max_bytes {
            return Err(RetainedFull);
        }
        self.sequence += 1;
        let entry = Entry { message: message.clone(), sequence: self.sequence };
        self.count(message);
        if let Some(old) = self.by_topic.insert(message.topic.clone(), entry) {
            self.uncount(&old.message);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// A cursor over the messages `filter` matches now, for a subscription granted `qos`.
    pub fn cursor(&self, filter: String, qos: u8) -> RetainedCursor {
        RetainedCursor { filter, qos, after: None, upto: self.sequence, downlink_only: false }
    }

    /// The next messages for `cursor`: at most `max_messages`, adding up to at most
    /// `max_bytes` of payload (but always at least one message when one is due), from at most
    /// [`SCAN`] topics. Returns them and whether the cursor is done.
    pub fn page(
        &self,
        cursor: &mut RetainedCursor,
        max_messages: usize,
        max_bytes: usize,
    ) -> (Vec<Arc<Message>>, bool) {
        let filter = cursor.filter.as_str();
        let levels: Vec<&str> = filter.split('/').collect();
        let Some(wildcard) = levels.iter().position(|level| *level == "+" || *level == "#") else {
            // No wildcard: one topic, read once.
            let found = match (&cursor.after, self.by_topic.get(filter)) {
                (None, Some(entry)) if entry.sequence <= cursor.upto => {
                    vec![entry.message.clone()]
                }
                _ => Vec::new(),
            };
            return (found, true);
        };
        // Literal levels before the first wildcard name a range: `status/+/temp` reads only
        // topics under `status/`, and a device's downlink `/sys/{pk}/{dn}/#` only its own.
        // `a/#` also matches `a` itself, which sorts before the `a/` range.
        let (parent, prefix) = if wildcard == 0 {
            (None, String::new())
        } else {
            let parent = levels[..wildcard].join("/");
            let prefix = format!("{parent}/");
            (Some(parent), prefix)
        };
        let mut found = Vec::new();
        let mut bytes = 0;
        if let (None, Some(parent)) = (&cursor.after, &parent) {
            if let Some(entry) = self.by_topic.get(parent.as_str())
                && entry.sequence <= cursor.upto
                && topic::matches(filter, parent)
            {
                bytes += entry.message.payload.len();
                found.push(entry.message.clone());
            }
            cursor.after = Some(parent.as_str().into());
        }
        let start = match &cursor.after {
            Some(after) if **after >= *prefix => Bound::Excluded(after.as_ref()),
            _ => Bound::Included(prefix.as_str()),
        };
        let mut range = self
            .by_topic
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(topic, _)| topic.starts_with(&prefix));
        for _ in 0..SCAN {
            if found.len() >= max_messages || (bytes >= max_bytes && !found.is_empty()) {
                return (found, false);
            }
            let Some((topic, entry)) = range.next() else {
                return (found, true);
            };
            cursor.after = Some(topic.clone());
            if entry.sequence <= cursor.upto && topic::matches(filter, topic) {
                bytes += entry.message.payload.len();
                found.push(entry.message.clone());
            }
        }
        (found, false)
    }

    /// Retained messages whose topic `filter` matches.
    #[cfg(test)]
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut cursor = self.cursor(filter.to_owned(), 0);
        let mut all = Vec::new();
        loop {
            let (page, done) = self.page(&mut cursor, usize::MAX, usize::MAX);
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    /// The topics of the stored messages `pick` picks among at most `limit` topics after
    /// `after` (from the first when `None`), and the last topic looked at (`None` once the
    /// store is read to its end). Forgetting is this under a read lock, then [`Retained::forget`]
    /// under a write lock, a page at a time, so a scan of a large store never holds the write
    /// lock for long.
    pub fn picked(
        &self,
        after: Option<&str>,
        limit: usize,
        mut pick: impl FnMut(&Message) -> bool,
    ) -> (Vec<Arc<str>>, Option<Arc<str>>) {
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let (mut picked, mut looked, mut last) = (Vec::new(), 0, None);
        for (topic, entry) in self.by_topic.range::<str, _>((start, Bound::Unbounded)).take(limit) {
            if pick(&entry.message) {
                picked.push(topic.clone());
            }
            looked += 1;
            last = Some(topic);
        }
        // Fewer than `limit` topics left means the end was reached.
        let next = if looked < limit { None } else { last.cloned() };
        (picked, next)
    }

    /// Deletes those of `topics` whose stored message `pick` still picks (it may have been
    /// replaced since it was picked); returns how many.
    pub fn forget(&mut self, topics: &[Arc<str>], mut pick: impl FnMut(&Message) -> bool) -> usize {
        let mut forgotten = 0;
        for topic in topics {
            if self.by_topic.get(topic).is_some_and(|entry| pick(&entry.message)) {
                self.remove(topic);
                forgotten += 1;
            }
        }
        forgotten
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
        from(Origin::Broker, topic, payload)
    }

    fn from(origin: Origin, topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(payload.to_owned()),
            qos: 1,
            retain: true,
            origin,
            properties: None,
            sender: 0,
        })
    }

    fn account(name: &str) -> AccountId {
        name.parse().unwrap()
    }

    /// Every picked topic, a page of `limit` topics at a time.
    fn pick_all(
        retained: &Retained,
        limit: usize,
        mut pick: impl FnMut(&Message) -> bool,
    ) -> (Vec<Arc<str>>, usize) {
        let (mut all, mut pages, mut after) = (Vec::new(), 0, None);
        loop {
            let (picked, next) = retained.picked(after.as_deref(), limit, &mut pick);
            pages += 1;
            all.extend(picked);
            match next {
                Some(next) => after = Some(next),
                None => return (all, pages),
            }
        }
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

    /// A cursor resumes after the last topic it read, skips what was stored after it was made
    /// (the subscription got those live), and looks at a bounded number of topics per page.
    #[test]
    fn cursors_page_from_a_snapshot_of_sequence_numbers() {
        let mut retained = Retained::new(100_000, 1 << 30);
        for n in 0..10 {
            retained.update(&message(&format!("a/{n}"), "v")).unwrap();
        }
        retained.update(&message("a", "parent")).unwrap();
        retained.update(&message("a!", "sibling")).unwrap();
        let mut cursor = retained.cursor("a/#".into(), 1);
        let (first, done) = retained.page(&mut cursor, 4, usize::MAX);
        assert!(!done);
        let topics = |page: &[Arc<Message>]| -> Vec<String> {
            page.iter().map(|m| m.topic.to_string()).collect()
        };
        assert_eq!(topics(&first), ["a", "a/0", "a/1", "a/2"]);
        // After the cursor was made: a new topic, a replaced one, a deleted one.
        retained.update(&message("a/99", "new")).unwrap();
        retained.update(&message("a/5", "replaced")).unwrap();
        retained.update(&message("a/6", "")).unwrap();
        let (rest, done) = retained.page(&mut cursor, 100, usize::MAX);
        assert!(done);
        assert_eq!(topics(&rest), ["a/3", "a/4", "a/7", "a/8", "a/9"]);

        // The byte bound ends a page, but a page holds at least one message.
        let mut cursor = retained.cursor("a/+".into(), 0);
        let (page, _) = retained.page(&mut cursor, 100, 1);
        assert_eq!(page.len(), 1);

        // A filter matching nothing of a large store reads it a bounded slice at a time.
        for n in 0..SCAN + 10 {
            retained.update(&message(&format!("b/{n}"), "v")).unwrap();
        }
        let mut cursor = retained.cursor("+/none".into(), 0);
        assert_eq!(retained.page(&mut cursor, 10, usize::MAX), (Vec::new(), false));
        let (_, done) = retained.page(&mut cursor, 10, usize::MAX);
        assert!(done);
        // An exact filter is one look-up.
        let mut cursor = retained.cursor("a/1".into(), 0);
        assert_eq!(topics(&retained.page(&mut cursor, 10, usize::MAX).0), ["a/1"]);
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
        let (picked, _) = pick_all(&retained, 100, |m| m.topic.starts_with("a/"));
        assert_eq!(retained.forget(&picked, |_| true), 2);
        assert_eq!(topics(&retained, "#"), ["b/1"]);
        assert_eq!(retained.bytes(), "b/1".len() + "value".len());
        assert_eq!(retained.forget(&picked, |_| true), 0, "already gone");
    }

    /// Each stored message counts once for the application account that sent it, through
    /// replacement (by another origin too), deletion and forgetting.
    #[test]
    fn messages_are_counted_per_sending_account() {
        let (a, b) = (account("a"), account("b"));
        let mut retained = Retained::new(100, 10_000);
        retained.update(&from(Origin::Application(a.clone()), "t/1", "v")).unwrap();
        retained.update(&from(Origin::Application(a.clone()), "t/2", "v")).unwrap();
        retained.update(&from(Origin::Application(b.clone()), "t/3", "v")).unwrap();
        retained.update(&from(Origin::Device("pk.dn".into()), "t/4", "v")).unwrap();
        retained.update(&message("t/5", "v")).unwrap();
        assert_eq!((retained.sent_by(&a), retained.sent_by(&b)), (2, 1));
        assert_eq!(retained.sent_by_applications(), 3);
        // Replaced by the same account, by another, by a device; deleted.
        retained.update(&from(Origin::Application(a.clone()), "t/1", "w")).unwrap();
        assert_eq!(retained.sent_by(&a), 2);
        retained.update(&from(Origin::Application(b.clone()), "t/1", "w")).unwrap();
        assert_eq!((retained.sent_by(&a), retained.sent_by(&b)), (1, 2));
        retained.update(&from(Origin::Device("pk.dn".into()), "t/3", "w")).unwrap();
        assert_eq!(retained.sent_by(&b), 1);
        retained.update(&from(Origin::Application(a.clone()), "t/2", "")).unwrap();
        assert_eq!((retained.sent_by(&a), retained.sent_by_applications()), (0, 1));
        assert!(!retained.by_account.contains_key(&a), "no zero counts are kept");
        // A refused message is not counted.
        let mut full = Retained::new(1, 10_000);
        full.update(&message("x", "v")).unwrap();
        assert!(full.update(&from(Origin::Application(a.clone()), "y", "v")).is_err());
        assert_eq!(full.sent_by_applications(), 0);
        // Forgetting uncounts.
        let (picked, _) = pick_all(&retained, 100, |_| true);
        retained.forget(&picked, |_| true);
        assert_eq!(
            (retained.sent_by(&b), retained.sent_by_applications(), retained.bytes()),
            (0, 0, 0)
        );
    }

    /// A paged scan looks at `limit` topics per page, picks exactly what its predicate picks,
    /// and forgetting skips a picked topic whose message was replaced between the pages.
    #[test]
    fn paged_forget_removes_exactly_the_picked_messages() {
        let a = account("a");
        let mut retained = Retained::new(1_000, 100_000);
        for n in 0..25 {
            let origin = if n % 2 == 0 { Origin::Application(a.clone()) } else { Origin::Broker };
            retained.update(&from(origin, &format!("t/{n:02}"), "v")).unwrap();
        }
        let pick = |m: &Message| matches!(&m.origin, Origin::Application(x) if *x == a);
        let (picked, pages) = pick_all(&retained, 10, pick);
        assert_eq!(pages, 3);
        assert_eq!(picked.len(), 13);
        let (_, pages) = pick_all(&retained, 30, pick);
        assert_eq!(pages, 1, "a page that reaches the end says so");
        // t/00 is replaced by a standard client after it was picked: it stays.
        retained.update(&message("t/00", "new")).unwrap();
        assert_eq!(retained.forget(&picked, pick), 12);
        let left = topics(&retained, "#");
        assert_eq!(left.len(), 13);
        assert!(left.contains(&"t/00".to_owned()) && left.contains(&"t/01".to_owned()));
        assert_eq!(retained.sent_by(&a), 0);
        assert_eq!(retained.bytes(), 12 * ("t/01".len() + 1) + "t/00".len() + 3);
        assert_eq!(pick_all(&Retained::new(1, 1), 10, |_| true), (Vec::new(), 1));
    }
}
