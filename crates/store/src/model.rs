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
    /// Store-wide order of versions: increases with every stored version. On SQLite (one
    /// writer) it is also commit order; on PostgreSQL it is allocation order, so two
    /// overlapping transactions may commit in the opposite order of their `seq`s.
    pub seq: i64,
}

impl VersionRecord {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }
}

/// The latest version of a resource, without its body (see [`crate::StoreTx::heads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: u64,
    /// Microseconds since the Unix epoch (UTC).
    pub last_updated: i64,
    pub deleted: bool,
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
    /// Full-text of the version, replacing the previous one's (ignored for deletions;
    /// `None`: not indexed for `_text`/`_content`).
    pub fulltext: Option<FullText>,
    /// Index rows of the resources contained in this one (`_contained` searches),
    /// replacing the previous version's (ignored for deletions).
    pub contained: Vec<ContainedIndex>,
}

/// The index rows of one contained resource (R4 references.html#contained), found by
/// `_contained=true|both` searches and never by ordinary ones.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainedIndex {
    pub rtype: String,
    /// The contained resource's local id (without `#`).
    pub id: String,
    pub index: Vec<IndexRow>,
}

/// Whether a search looks at contained resources (R4 search.html#contained, `_contained`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainedMode {
    /// `false` (the default): only resources that are not contained.
    #[default]
    Exclude,
    /// `true`: only contained resources.
    Only,
    /// `both`.
    Both,
}

/// What a search that matches contained resources returns (`_containedType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainedType {
    /// `container` (the default): the resources that contain the matches, once each.
    #[default]
    Container,
    /// `contained`: the matched contained resources themselves.
    Contained,
}

/// A page of [`crate::Store::scan_current`].
#[derive(Debug, Clone)]
pub struct ScanPage {
    pub records: Vec<VersionRecord>,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<u64>,
    /// Current resources in all (for progress).
    pub total: u64,
}

/// The text a resource is found by in full-text search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullText {
    /// The narrative (`text.div`) as plain text: `_text`.
    pub narrative: String,
    /// Every textual value of the resource: `_content`.
    pub content: String,
}

/// Which text a full-text criterion looks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Narrative,
    Content,
}

/// A full-text criterion: any of the alternatives, each a list of terms that must all
/// occur (case- and accent-insensitive words). A term with a space is a phrase; a term
/// ending in `*` matches words starting with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextQuery {
    pub any: Vec<Vec<String>>,
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
    /// Only versions still current at or after this instant (micros): with `before`,
    /// the versions current at some point of an `_at` period.
    pub current_from: Option<i64>,
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

/// Comparison prefix of a date, number or quantity search (R4 search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A date/number/quantity criterion: the search value's implicit range `[low, high]`
/// (from its precision) compared with each indexed value's range by `prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeMatch<T> {
    pub prefix: Prefix,
    pub low: T,
    pub high: T,
}

/// A quantity criterion: a number range plus optional unit system and code.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityMatch {
    pub range: RangeMatch<f64>,
    /// `None`: any system.
    pub system: Option<String>,
    /// `None`: any unit.
    pub code: Option<String>,
}

/// How a string criterion matches the normalised (lower-case, accent-free) value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// Default: the value starts with the criterion.
    Prefix,
    /// `:contains`.
    Contains,
    /// `:exact`: compared with the original text, case- and accent-sensitive.
    Exact,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch {
    /// Normalised for `Prefix`/`Contains`, original for `Exact`.
    pub value: String,
    pub mode: StringMode,
}

/// A reference criterion. Relative references are indexed as `target_type` + `target_id`;
/// absolute URLs and canonicals as `target_id` = the URL with no type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMatch {
    /// `None`: any type.
    pub target_type: Option<String>,
    pub target_id: String,
    /// `None`: any version.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Exact,
    /// `:above`: the indexed URI is the criterion or one of its ancestors.
    Above,
    /// `:below`: the indexed URI is the criterion or below it.
    Below,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriMatch {
    pub value: String,
    pub mode: UriMode,
}

/// The index table a parameter lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    Token,
    String,
    Reference,
    Date,
    Number,
    Uri,
}

/// One condition of a search; conditions are ANDed, values inside one are ORed.
///
/// A clause's `param` names the index rows it looks at; a name ending in `|*` stands
/// for every name that starts with the part before the `*` (a composite parameter
/// searched without a system: `code-value-quantity$8480-6|*`).
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// Full-text search (`_text`, `_content`).
    Text {
        field: TextField,
        query: TextQuery,
    },
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
    /// `_lastUpdated` with a prefix, against the resource's own timestamp.
    LastUpdatedRange {
        any: Vec<RangeMatch<i64>>,
    },
    String {
        param: String,
        any: Vec<StringMatch>,
    },
    Reference {
        param: String,
        any: Vec<RefMatch>,
    },
    /// Dates in micros since the epoch.
    Date {
        param: String,
        any: Vec<RangeMatch<i64>>,
    },
    Number {
        param: String,
        any: Vec<RangeMatch<f64>>,
    },
    Quantity {
        param: String,
        any: Vec<QuantityMatch>,
    },
    Uri {
        param: String,
        any: Vec<UriMatch>,
    },
    /// `:missing`: whether the resource has no index row for the parameter.
    Missing {
        param: String,
        kind: IndexKind,
        missing: bool,
    },
    /// Negation (`:not`, `ne`).
    Not(Box<Clause>),
    /// Any of several clauses (OR across parameters, e.g. compartment membership).
    Any(Vec<Clause>),
    /// Every one of several clauses (an AND group inside an [`Clause::Any`], e.g. one of
    /// several access grants, each a compartment plus criteria). Empty: always true.
    All(Vec<Clause>),
    /// Chaining: the resource references (through `param`) a resource of one of
    /// `target_types` (any type when empty) that satisfies every inner clause.
    Chain {
        param: String,
        target_types: Vec<String>,
        inner: Vec<Clause>,
    },
    /// Reverse chaining (`_has`): some `source_type` resource references this one
    /// through `param` and satisfies every inner clause.
    Has {
        source_type: String,
        param: String,
        inner: Vec<Clause>,
    },
    /// Resource types allowed (system-level search; `_type`).
    Types(Vec<String>),
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortField {
    Id,
    LastUpdated,
    /// Relevance to a full-text criterion, best first (ascending).
    Relevance {
        field: TextField,
        query: TextQuery,
    },
    /// An indexed parameter; ascending uses the smallest value of a resource,
    /// descending the largest. Resources without a value sort last either way.
    Param {
        param: String,
        kind: IndexKind,
    },
    /// A quantity parameter: by its values in canonical (base) units where they have
    /// them (rows under `canonical`), else by the values as written (rows under `param`).
    Quantity {
        param: String,
        canonical: String,
    },
    /// The smaller (ascending) or larger (descending) of two keys' values, where either
    /// may be absent: a parameter defined as the union of two others (R4's
    /// `Observation` `combo-*`, see `salus_search::parse::union_parts`).
    Either(Box<SortField>, Box<SortField>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// A sort value as kept in a paging cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// A position between two results in sort order: the sort values of a result, then
/// its type and id (the tie-breaker that makes the order total).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub values: Vec<SortValue>,
    pub rtype: String,
    pub id: String,
}

/// Which page of a search to fetch: keyset paging that stays correct while data
/// changes between requests.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Page {
    /// From the start.
    #[default]
    First,
    /// The results after this position.
    After(Cursor),
    /// The results before this position (a "previous" link).
    Before(Cursor),
    /// The final page.
    Last,
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The resource type; empty for a system-level search (see [`Clause::Types`]).
    pub rtype: String,
    pub clauses: Vec<Clause>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    /// Offset paging (kept for simple callers); ignored unless `page` is `First`.
    pub offset: usize,
    pub page: Page,
    pub with_total: bool,
    pub contained: ContainedMode,
    pub contained_type: ContainedType,
}

impl SearchQuery {
    pub fn new(rtype: impl Into<String>) -> Self {
        SearchQuery {
            rtype: rtype.into(),
            clauses: vec![],
            sort: vec![],
            count: 100,
            offset: 0,
            page: Page::First,
            with_total: false,
            contained: ContainedMode::Exclude,
            contained_type: ContainedType::Container,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub entries: Vec<VersionRecord>,
    /// For each entry, the local id of the matched contained resource when the search
    /// returns contained resources themselves (`_containedType=contained`): the entry
    /// is then its container's current version. Empty, or as long as `entries`.
    pub contained_ids: Vec<Option<String>>,
    pub total: Option<u64>,
    /// Whether more results exist after this page (in sort order).
    pub more: bool,
    /// Whether results exist before this page.
    pub before: bool,
    /// Positions of the first and last entry, for `previous`/`next` links.
    pub first_cursor: Option<Cursor>,
    pub last_cursor: Option<Cursor>,
}

/// What [`crate::Store::snapshot_scan`] reads: the resources of one type as they were at
/// a past point of the store (`at_seq`), for exports that must not see later writes.
#[derive(Debug, Clone)]
pub struct SnapshotQuery {
    pub rtype: String,
    /// The snapshot: per resource, the latest version with `seq <= at_seq`.
    pub at_seq: i64,
    /// ... and with `last_updated <= until` (micros), when given (`_until`).
    pub until: Option<i64>,
    /// Only versions with `last_updated >= since` (micros), when given (`_since`).
    pub since: Option<i64>,
    /// Whether resources deleted at the snapshot are returned (as records without
    /// a body); otherwise they are skipped.
    pub include_deleted: bool,
    /// Only these ids, when given (a compartment or `_typeFilter` selection).
    pub ids: Option<Vec<String>>,
    /// Continue after this id (exclusive); results are ordered by id (byte order).
    pub after_id: Option<String>,
    pub limit: usize,
}

impl SnapshotQuery {
    pub fn new(rtype: impl Into<String>, at_seq: i64) -> Self {
        SnapshotQuery {
            rtype: rtype.into(),
            at_seq,
            until: None,
            since: None,
            include_deleted: false,
            ids: None,
            after_id: None,
            limit: 1000,
        }
    }
}

/// A page of [`crate::Store::snapshot_scan`].
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    pub records: Vec<VersionRecord>,
    /// The id to continue after (`None`: this was the last page).
    pub next: Option<String>,
}
