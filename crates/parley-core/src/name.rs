//! Account names and the wildcard patterns that search them.
//!
//! Rules (docs/PROTOCOL.md repeats them): 1 to 32 characters; ASCII letters,
//! digits, `.`, `_` and `-`; the first character is a letter. Uniqueness is
//! case-insensitive: the name keeps the case it was registered with for
//! display, and its lowercase form is the key. These rules make every name a
//! valid XMPP localpart and SCRAM username without escaping, and keep `*` and
//! `?` free for patterns.

use crate::error::{CoreError, ErrorKind};

/// Longest account name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest wildcard pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 64;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A valid account name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserName {
    display: String,
    key: String,
}

impl UserName {
    /// Checks `raw` against the name rules.
    pub fn parse(raw: &str) -> Result<UserName, CoreError> {
        let invalid = |why: &str| CoreError::new(ErrorKind::InvalidName, format!("invalid name {raw:?}: {why}"));
        if raw.is_empty() {
            return Err(invalid("it is empty"));
        }
        if raw.chars().count() > MAX_NAME_CHARS {
            return Err(invalid("longer than 32 characters"));
        }
        if !raw.chars().all(is_name_char) {
            return Err(invalid("only letters, digits, '.', '_' and '-' are allowed"));
        }
        if !raw.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(invalid("it must start with a letter"));
        }
        Ok(UserName {
            display: raw.to_owned(),
            key: raw.to_ascii_lowercase(),
        })
    }

    /// The name as registered.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The case-folded form that uniqueness and lookups use.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Folds a name-like string to its lookup key without validating it.
pub fn name_key(raw: &str) -> String {
    raw.to_ascii_lowercase()
}

/// A validated, case-folded wildcard pattern: `*` matches any run of
/// characters (also none), `?` exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern {
    folded: String,
}

impl NamePattern {
    /// Parses a pattern; empty means "everything".
    pub fn parse(raw: &str) -> Result<NamePattern, CoreError> {
        let invalid = |why: &str| CoreError::new(ErrorKind::InvalidPattern, format!("invalid pattern {raw:?}: {why}"));
        if raw.chars().count() > MAX_PATTERN_CHARS {
            return Err(invalid("longer than 64 characters"));
        }
        if !raw.chars().all(|c| is_name_char(c) || c == '*' || c == '?') {
            return Err(invalid("only name characters, '*' and '?' are allowed"));
        }
        let folded = if raw.is_empty() {
            "*".to_owned()
        } else {
            raw.to_ascii_lowercase()
        };
        Ok(NamePattern { folded })
    }

    /// The case-folded pattern text. It uses only name characters, `*` and
    /// `?`, so it is also a valid SQLite GLOB with the same meaning.
    pub fn as_str(&self) -> &str {
        &self.folded
    }

    /// The literal prefix before the first wildcard, for index range scans.
    pub fn literal_prefix(&self) -> &str {
        let end = self.folded.find(['*', '?']).unwrap_or(self.folded.len());
        &self.folded[..end]
    }

    /// Whether a name key (already case-folded) matches.
    pub fn matches(&self, key: &str) -> bool {
        glob_match(self.folded.as_bytes(), key.as_bytes())
    }
}

/// Iterative wildcard matcher with single-star backtracking: linear in the
/// common case and never worse than O(pattern × text).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in ["a", "Alice", "bob.smith", "x_1-2", &"a".repeat(32)] {
            assert!(UserName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "_x", "al ice", "al*", "a?", "émile", "a@b", &"a".repeat(33)] {
            let err = UserName::parse(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidName, "{bad}");
        }
        let n = UserName::parse("AlIce").unwrap();
        assert_eq!((n.as_str(), n.key()), ("AlIce", "alice"));
    }

    #[test]
    fn patterns_match_like_globs() {
        let cases = [
            ("", "anything", true),
            ("*", "", true),
            ("al*", "alice", true),
            ("al*", "bob", false),
            ("*bob?", "bigbobs", true),
            ("*bob?", "bigbob", false),
            ("a?c", "abc", true),
            ("a?c", "abbc", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("AL*", "alice", true),
        ];
        for (pat, key, want) in cases {
            assert_eq!(NamePattern::parse(pat).unwrap().matches(key), want, "{pat} ~ {key}");
        }
        assert_eq!(NamePattern::parse("ab*c?").unwrap().literal_prefix(), "ab");
        assert!(NamePattern::parse("a[b]").is_err());
    }
}
