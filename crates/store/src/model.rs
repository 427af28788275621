//! Records exchanged between the service layer and a backend.

/// How a version came to be (`Bundle.entry.request.method` in history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    /// Microseconds since the Unix epoch (UTC).
    pub last_updated: i64,
    pub method: Method,
    /// Resource JSON as served (with `meta.versionId`/`meta.lastUpdated` set);
    /// `None` for a deletion.
    pub body: Option<String>,
    /// Store-wide commit order; increases with every stored version.
    pub seq: i64,
}

impl VersionRecord {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }
}

/// A version to store.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    /// The latest version the writer saw; `None` when the resource was never stored.
    pub expected_version: Option<u64>,
    pub last_updated: i64,
    pub method: Method,
    /// `None` deletes.
    pub body: Option<String>,
    /// Index rows replacing the resource's previous ones (ignored for deletions).
    pub index: Vec<IndexRow>,
}

/// A search index row extracted from a resource at write time.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRow {
    /// Token: `system|code` (identifier, coding, code, boolean, ...).
    Token {
        param: String,
        system: Option<String>,
        code: String,
    },
    /// String: normalised (lower-case, accents removed) plus the original text.
    String {
        param: String,
        normalized: String,
        exact: String,
    },
    /// Reference to another resource (`type/id`) or an absolute/canonical URL.
    Reference {
        param: String,
        target_type: Option<String>,
        target_id: String,
        version: Option<String>,
    },
    /// Date period in microseconds since the epoch, inclusive bounds.
    Date { param: String, low: i64, high: i64 },
    /// Number or quantity value, with optional system and code.
    Number {
        param: String,
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// URI.
    Uri { param: String, uri: String },
}

/// What a history request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions with `last_updated >= since` (micros).
    pub since: Option<i64>,
    /// Only versions with `last_updated <= at` (micros) — the `_at` upper bound.
    pub before: Option<i64>,
    /// Continue after this seq (exclusive; newest-first order means `seq < cursor`).
    pub cursor: Option<i64>,
    pub count: usize,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<VersionRecord>,
    pub total: u64,
    /// Cursor for the next page, if any.
    pub next: Option<i64>,
}

/// A token match: `system|code`, `|code` (no system), `system|` or `code` (any system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMatch {
    /// `None`: any system; `Some("")`: no system.
    pub system: Option<String>,
    /// `None`: any code in the system.
    pub code: Option<String>,
}

/// One condition of a search; conditions are ANDed, values inside one are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    Id(Vec<String>),
    Token {
        param: String,
        any: Vec<TokenMatch>,
    },
    /// `_lastUpdated` range in micros, inclusive.
    LastUpdated {
        low: Option<i64>,
        high: Option<i64>,
    },
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub rtype: String,
    pub clauses: Vec<Clause>,
    pub count: usize,
    pub offset: usize,
    pub with_total: bool,
}

impl SearchQuery {
    pub fn new(rtype: impl Into<String>) -> Self {
        SearchQuery {
            rtype: rtype.into(),
            clauses: vec![],
            count: 100,
            offset: 0,
            with_total: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub entries: Vec<VersionRecord>,
    pub total: Option<u64>,
    /// Whether more results exist after this page.
    pub more: bool,
}
