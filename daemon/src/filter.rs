//! containerd's filter syntax, as List receives it: selectors joined by
//! `,` (all must hold) — `fieldpath`, `fieldpath==value`, `!=`, `~=`
//! (regular expression) — where a field is a word or a quoted string and a
//! value is quoted or runs to the next `,`. Several filter strings match
//! when any one does. Snapshot fields: `kind`, `name`, `parent`,
//! `labels.<key>`.

use regex::Regex;

use crate::error::{FilterError, InvalidArgument, SnapError};

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// One filter string: all its selectors must match.
#[derive(Debug, Clone)]
pub struct Filter(Vec<Selector>);

/// Several filter strings: any may match; none at all matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Filter>);

/// What a filter sees of a snapshot.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters, SnapError> {
        let mut out = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            out.push(Filter::parse(f).map_err(|cause| {
                SnapError::InvalidArgument(InvalidArgument::Filter {
                    filter: f.clone(),
                    cause,
                })
            })?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, item: &impl Fields) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(item))
    }
}

impl Filter {
    fn matches(&self, item: &impl Fields) -> bool {
        self.0.iter().all(|s| {
            let value = item.field(&s.path);
            match (&s.op, value) {
                (Op::Present, v) => v.is_some(),
                (Op::Equal(want), Some(v)) => &v == want,
                (Op::NotEqual(want), Some(v)) => &v != want,
                (Op::Matches(re), Some(v)) => re.is_match(&v),
                (_, None) => false,
            }
        })
    }

    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let mut p = Parser {
            s: s.as_bytes(),
            at: 0,
        };
        let mut selectors = Vec::new();
        loop {
            p.skip_space();
            let mut path = vec![p.field()?];
            while p.eat(b".") {
                path.push(p.field()?);
            }
            p.skip_space();
            let op = if p.eat(b"==") {
                Op::Equal(p.value()?)
            } else if p.eat(b"!=") {
                Op::NotEqual(p.value()?)
            } else if p.eat(b"~=") {
                let v = p.value()?;
                Op::Matches(Regex::new(&v)?)
            } else {
                Op::Present
            };
            selectors.push(Selector { path, op });
            p.skip_space();
            if p.at == p.s.len() {
                break;
            }
            if !p.eat(b",") {
                return Err(FilterError::Unexpected {
                    rest: p.rest(),
                    at: p.at,
                });
            }
        }
        Ok(Filter(selectors))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.at..]).into_owned()
    }

    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, tok: &[u8]) -> bool {
        if self.s[self.at..].starts_with(tok) {
            self.at += tok.len();
            true
        } else {
            false
        }
    }

    fn field(&mut self) -> Result<String, FilterError> {
        if self.at < self.s.len() && self.s[self.at] == b'"' {
            return self.quoted(b'"');
        }
        let start = self.at;
        while self.at < self.s.len()
            && (self.s[self.at].is_ascii_alphanumeric() || self.s[self.at] == b'_')
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(FilterError::ExpectedField { at: self.at });
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.s.get(self.at) {
            Some(b'"') => self.quoted(b'"'),
            Some(b'/') => self.quoted(b'/'),
            _ => {
                let start = self.at;
                while self.at < self.s.len() && self.s[self.at] != b',' {
                    self.at += 1;
                }
                let v = String::from_utf8_lossy(&self.s[start..self.at])
                    .trim()
                    .to_string();
                if v.is_empty() {
                    return Err(FilterError::ExpectedValue { at: start });
                }
                Ok(v)
            }
        }
    }

    /// A string between `q`s, with backslash escapes (`\n`, `\t`, `\\`,
    /// `\"`, `\/`).
    fn quoted(&mut self, q: u8) -> Result<String, FilterError> {
        let start = self.at;
        self.at += 1;
        let mut out = Vec::new();
        while self.at < self.s.len() {
            let c = self.s[self.at];
            self.at += 1;
            if c == q {
                return String::from_utf8(out).map_err(|_| FilterError::NotUtf8 { at: start });
            }
            if c == b'\\' && self.at < self.s.len() {
                let e = self.s[self.at];
                self.at += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    other => other,
                });
            } else {
                out.push(c);
            }
        }
        Err(FilterError::Unterminated { at: start })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Snap {
        kind: &'static str,
        name: &'static str,
        parent: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Fields for Snap {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first()?.as_str() {
                "kind" => Some(self.kind.into()),
                "name" => Some(self.name.into()),
                "parent" => Some(self.parent.into()),
                "labels" => self.labels.get(&path[1..].join(".")).cloned(),
                _ => None,
            }
        }
    }

    fn snap() -> Snap {
        Snap {
            kind: "committed",
            name: "sha256:abc",
            parent: "default/3/sha256:def",
            labels: BTreeMap::from([
                ("containerd.io/snapshot.ref".into(), "sha256:abc".into()),
                ("a.b".into(), "x".into()),
            ]),
        }
    }

    fn m(filters: &[&str]) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(&snap())
    }

    #[test]
    fn containerd_remote_snapshot_filter() {
        // What containerd's metadata layer sends after ALREADY_EXISTS.
        assert!(m(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/sha256:def""#
        ]));
        assert!(!m(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/4/sha256:def""#
        ]));
    }

    #[test]
    fn operators_presence_and_or() {
        assert!(m(&[]));
        assert!(m(&["kind==committed"]));
        assert!(!m(&["kind==active"]));
        assert!(m(&["kind==active", "name==sha256:abc"]));
        assert!(m(&["kind!=active"]));
        assert!(m(&["name~=/^sha256:a/"]));
        assert!(!m(&["name~=^sha256:b"]));
        assert!(m(&["labels.a.b"]));
        assert!(m(&["labels.a.b==x"]));
        assert!(!m(&["labels.nope"]));
        assert!(!m(&["unknown==1"]));
        assert!(m(&[" kind == committed , labels.\"a.b\" "]));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for bad in ["==x", "kind==", "labels.\"open", "kind==a,,", "name~=("] {
            assert!(
                matches!(
                    Filters::parse(&[bad.to_string()]),
                    Err(SnapError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn arbitrary_input_is_an_error_or_a_filter_never_a_panic() {
        let alphabet = b"abkindlabels.=!~,\"/\\ :_0123456789(*";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()] as char)
                .collect();
            if let Ok(f) = Filters::parse(&[s]) {
                let _ = f.matches(&snap());
            }
        }
    }
}
