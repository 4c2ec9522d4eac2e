//! MQTT topic names and filters: validation (MQTT 3.1.1 §4.7) and matching.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must hold at least one character.
    #[error("empty topic")]
    Empty,
    /// U+0000 is forbidden in MQTT strings.
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name (as published) may not contain `+` or `#`.
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `#` must be the last level and stand alone; `+` must stand alone in its level.
    #[error("misplaced wildcard in filter")]
    BadWildcard,
    /// Longer than the connection's profile allows.
    #[error("topic longer than {0} bytes")]
    TooLong(usize),
}

/// Checks a topic name a client publishes to.
pub fn validate_name(topic: &str, max_len: usize) -> Result<(), TopicError> {
    check_common(topic, max_len)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a subscription filter.
pub fn validate_filter(filter: &str, max_len: usize) -> Result<(), TopicError> {
    check_common(filter, max_len)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

fn check_common(topic: &str, max_len: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > max_len {
        return Err(TopicError::TooLong(max_len));
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether `filter` (already validated) matches `topic` (already validated). Topics starting
/// with `$` are not matched by a filter starting with a wildcard (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b", 128).is_ok());
        assert!(validate_name("/", 128).is_ok());
        assert_eq!(validate_name("", 128), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+", 128), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#", 128), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b", 128), Err(TopicError::Nul));
        assert_eq!(validate_name(&"x".repeat(129), 128), Err(TopicError::TooLong(128)));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/+", "a//b", "$SYS/#"] {
            assert!(validate_filter(ok, 128).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a/b+", "#/a", "a/+b", ""] {
            assert!(validate_filter(bad, 128).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("+", "/x", false),
            ("/sys/pk/dn/#", "/sys/pk/dn/thing/bootstrap/notify", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }
}
