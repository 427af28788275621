//! `salus migrate --from SRC --to DST`: move a whole store between the embedded SQLite
//! store (`sqlite:DIR`) and PostgreSQL (`postgres://…`), in any direction, then verify
//! the target against the source.
//!
//! Every version of every resource is copied — deletions included — with its version
//! id, `lastUpdated` and method, in the source's `seq` order ([`Store::changes_after`]),
//! so history reads back in the same order. Each batch is one target transaction
//! written with [`StoreTx::put_many`] (binary `COPY` on PostgreSQL); the target
//! extracts the search index of each resource itself, as `salus import` does, with the
//! source's custom SearchParameters live. Encryption at rest follows `[encryption]` on
//! both sides: the stores open and seal bodies below the traits, so what moves is
//! plaintext in this process only.
//!
//! Verification reads each side on its own: per resource type the number of versions
//! and of current resources, and a SHA-256 over every `(type, id, version, deleted,
//! body)` in canonical order ([`Store::scan_versions`]). Any difference is named and
//! the command fails.

use crate::config::Config;
use crate::serve::Backend;
use anyhow::{bail, Context, Result};
use salus_store::{HistoryQuery, HistoryScope, NewVersion, Store, VersionRecord};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Versions per target transaction.
const BATCH: usize = 1_000;

/// What `salus migrate` was asked to do.
#[derive(Debug, Clone)]
pub struct MigrateArgs {
    pub from: String,
    pub to: String,
    /// Continue into a non-empty target: versions already there are skipped.
    pub resume: bool,
    /// Erase everything in the target first.
    pub force_empty: bool,
    pub progress: bool,
}

/// One side of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An embedded data dir.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Endpoint {
    /// `sqlite:DIR` or `postgres://…` / `postgresql://…`.
    pub fn parse(s: &str) -> Result<Endpoint> {
        if let Some(dir) = s.strip_prefix("sqlite:") {
            if dir.is_empty() {
                bail!("'{s}': name the data dir after sqlite:, e.g. sqlite:./salus-data");
            }
            return Ok(Endpoint::Sqlite(PathBuf::from(dir)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Endpoint::Postgres(s.to_string()));
        }
        bail!(
            "'{}' is neither sqlite:DIR (an embedded data dir) nor a postgres:// URL",
            redact(s)
        )
    }

    /// For messages: the data dir, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Sqlite(d) => format!("sqlite:{}", d.display()),
            Endpoint::Postgres(u) => redact(u),
        }
    }

    /// The configuration that opens this side (everything else as configured).
    fn config(&self, base: &Config) -> Config {
        let mut c = base.clone();
        match self {
            Endpoint::Sqlite(d) => {
                c.data_dir = d.clone();
                c.storage.database = None;
            }
            Endpoint::Postgres(u) => c.storage.database = Some(u.clone()),
        }
        c
    }
}

/// A URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

async fn open(endpoint: &Endpoint, base: &Config, source: bool) -> Result<Backend> {
    if let (Endpoint::Sqlite(dir), true) = (endpoint, source) {
        if !dir.is_dir() {
            bail!("the source data dir {} does not exist", dir.display());
        }
        if !dir.join("salus.db").is_file() {
            bail!(
                "the source data dir {} holds no Salus database (salus.db)",
                dir.display()
            );
        }
    }
    let side = if source { "source" } else { "target" };
    Backend::open(&endpoint.config(base))
        .await
        .with_context(|| format!("cannot open the {side} {}", endpoint.describe()))
}

/// Per resource type: versions stored, and current (not deleted) resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeCounts {
    pub versions: u64,
    pub current: u64,
}

/// What verification compares, computed from one side alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDigest {
    pub types: BTreeMap<String, TypeCounts>,
    /// Versions in all.
    pub versions: u64,
    /// SHA-256 over every `(type, id, version, deleted, body)` in canonical order, hex.
    pub sha256: String,
}

fn hash_record(h: &mut Sha256, r: &VersionRecord) {
    // length-prefixed fields: no two different records hash the same bytes
    for part in [r.rtype.as_bytes(), r.id.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(r.version.to_le_bytes());
    match &r.body {
        None => h.update([1u8]),
        Some(b) => {
            h.update([0u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b.as_bytes());
        }
    }
}

/// Read one store's digest: every version in canonical order, and its own counts of
/// current resources.
pub async fn digest(store: &dyn Store) -> Result<StoreDigest> {
    let mut h = Sha256::new();
    let mut types: BTreeMap<String, TypeCounts> = BTreeMap::new();
    let mut versions = 0u64;
    let mut after = None;
    loop {
        let page = store.scan_versions(after.take(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.rtype.clone(), last.id.clone(), last.version));
        for r in &page {
            hash_record(&mut h, r);
            versions += 1;
            types.entry(r.rtype.clone()).or_default().versions += 1;
        }
    }
    for (rtype, n) in store.counts().await? {
        types.entry(rtype).or_default().current = n;
    }
    let sha256 = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(StoreDigest {
        types,
        versions,
        sha256,
    })
}

/// The differences between two digests, each as a line (empty: they agree).
pub fn compare(source: &StoreDigest, target: &StoreDigest) -> Vec<String> {
    let mut out = vec![];
    let empty = TypeCounts::default();
    let mut names: Vec<&String> = source.types.keys().chain(target.types.keys()).collect();
    names.sort();
    names.dedup();
    for t in names {
        let s = source.types.get(t).unwrap_or(&empty);
        let d = target.types.get(t).unwrap_or(&empty);
        if s.versions != d.versions {
            out.push(format!(
                "{t}: {} versions in the source, {} in the target",
                s.versions, d.versions
            ));
        }
        if s.current != d.current {
            out.push(format!(
                "{t}: {} current resources in the source, {} in the target",
                s.current, d.current
            ));
        }
    }
    if source.sha256 != target.sha256 {
        out.push(format!(
            "SHA-256 of all versions: {} in the source, {} in the target",
            source.sha256, target.sha256
        ));
    }
    out
}

/// The first versions (up to `limit`) that differ between the stores, walking both in
/// canonical order: to name what differs after the digests disagree.
pub async fn first_differences(
    source: &dyn Store,
    target: &dyn Store,
    limit: usize,
) -> Result<Vec<String>> {
    type Key = (String, String, u64);
    let key = |r: &VersionRecord| -> Key { (r.rtype.clone(), r.id.clone(), r.version) };
    let name = |k: &Key| format!("{}/{}/_history/{}", k.0, k.1, k.2);
    let mut out = vec![];
    let (mut sa, mut ta): (Option<Key>, Option<Key>) = (None, None);
    let (mut sp, mut tp) = (vec![].into_iter(), vec![].into_iter());
    let (mut s_next, mut t_next): (Option<VersionRecord>, Option<VersionRecord>) = (None, None);
    let (mut s_done, mut t_done) = (false, false);
    while out.len() < limit {
        if s_next.is_none() && !s_done {
            s_next = match sp.next() {
                Some(r) => Some(r),
                None => {
                    let page = source.scan_versions(sa.clone(), BATCH).await?;
                    sa = page.last().map(key);
                    sp = page.into_iter();
                    sp.next()
                }
            };
            s_done = s_next.is_none();
        }
        if t_next.is_none() && !t_done {
            t_next = match tp.next() {
                Some(r) => Some(r),
                None => {
                    let page = target.scan_versions(ta.clone(), BATCH).await?;
                    ta = page.last().map(key);
                    tp = page.into_iter();
                    tp.next()
                }
            };
            t_done = t_next.is_none();
        }
        match (&s_next, &t_next) {
            (None, None) => break,
            (Some(s), None) => {
                out.push(format!("{}: missing in the target", name(&key(s))));
                s_next = None;
            }
            (None, Some(t)) => {
                out.push(format!("{}: only in the target", name(&key(t))));
                t_next = None;
            }
            (Some(s), Some(t)) => {
                let (ks, kt) = (key(s), key(t));
                match ks.cmp(&kt) {
                    std::cmp::Ordering::Less => {
                        out.push(format!("{}: missing in the target", name(&ks)));
                        s_next = None;
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(format!("{}: only in the target", name(&kt)));
                        t_next = None;
                    }
                    std::cmp::Ordering::Equal => {
                        if s.body != t.body {
                            let what = match (&s.body, &t.body) {
                                (None, _) => "deleted in the source, not in the target",
                                (_, None) => "deleted in the target, not in the source",
                                _ => "bodies differ",
                            };
                            out.push(format!("{}: {what}", name(&ks)));
                        }
                        s_next = None;
                        t_next = None;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Versions stored in all (for progress).
async fn count_versions(store: &dyn Store) -> Result<u64> {
    let page = store
        .history(&HistoryQuery {
            scope: HistoryScope::System,
            since: None,
            before: None,
            current_from: None,
            cursor: None,
            count: 1,
        })
        .await?;
    Ok(page.total)
}

/// Erase every resource of a store (`--force-empty`).
async fn empty(store: &dyn Store, bar: &indicatif::ProgressBar) -> Result<u64> {
    let mut erased = 0;
    loop {
        let page = store.scan_versions(None, BATCH).await?;
        if page.is_empty() {
            break;
        }
        let mut keys: Vec<(String, String)> = page.into_iter().map(|r| (r.rtype, r.id)).collect();
        keys.dedup();
        let mut tx = store.begin().await?;
        for (rtype, id) in &keys {
            tx.purge(rtype, id).await?;
        }
        tx.commit().await?;
        erased += keys.len() as u64;
        bar.set_message(format!("emptied {erased} resources of the target"));
    }
    store.compact().await?;
    Ok(erased)
}

/// How a migration went.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    /// Versions written to the target.
    pub copied: u64,
    /// Versions found already there (`--resume`).
    pub skipped: u64,
    /// Resources erased first (`--force-empty`).
    pub emptied: u64,
    pub seconds: f64,
    pub source: StoreDigest,
    pub target: StoreDigest,
    /// Empty when the target matches the source.
    pub differences: Vec<String>,
}

impl MigrateReport {
    pub fn verified(&self) -> bool {
        self.differences.is_empty()
    }

    /// Versions copied per second.
    pub fn rate(&self) -> f64 {
        self.copied as f64 / self.seconds.max(1e-9)
    }
}

fn progress_bar(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} versions ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Copy every version of `source` into `target`, in `seq` order, skipping what the
/// target already holds. Returns (copied, skipped).
async fn copy(
    source: &dyn Store,
    target: &dyn Store,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, u64)> {
    let (mut copied, mut skipped) = (0u64, 0u64);
    let mut cursor = 0i64;
    loop {
        let records = source.changes_after(cursor, BATCH).await?;
        let Some(last) = records.last() else { break };
        cursor = last.seq;
        let n = records.len() as u64;
        let mut keys: Vec<(String, String)> = vec![];
        let mut slot: HashMap<(String, String), usize> = HashMap::new();
        for r in &records {
            let k = (r.rtype.clone(), r.id.clone());
            if !slot.contains_key(&k) {
                slot.insert(k.clone(), keys.len());
                keys.push(k);
            }
        }
        let mut tx = target.begin().await?;
        // the target's latest version of each, as the batch's writes advance it
        let mut head: Vec<Option<u64>> = tx
            .heads(&keys)
            .await?
            .into_iter()
            .map(|h| h.map(|h| h.version))
            .collect();
        // the batch's last write of each resource carries its index rows (earlier
        // versions' rows would be replaced at once)
        let mut last_of: Vec<Option<usize>> = vec![None; keys.len()];
        let mut writes: Vec<(usize, NewVersion)> = vec![];
        for r in records {
            let k = slot[&(r.rtype.clone(), r.id.clone())];
            if head[k].is_some_and(|v| v >= r.version) {
                skipped += 1; // already there (an interrupted migration)
                continue;
            }
            last_of[k] = Some(writes.len());
            writes.push((
                k,
                NewVersion {
                    expected_version: head[k],
                    rtype: r.rtype,
                    id: r.id,
                    version: r.version,
                    last_updated: r.last_updated,
                    method: r.method,
                    body: r.body,
                    index: vec![],
                    fulltext: None,
                    contained: vec![],
                },
            ));
            head[k] = Some(r.version);
        }
        let mut batch = Vec::with_capacity(writes.len());
        for (i, (k, mut w)) in writes.into_iter().enumerate() {
            if last_of[k] == Some(i) {
                if let Some(body) = &w.body {
                    let value: serde_json::Value =
                        serde_json::from_str(body).with_context(|| {
                            format!(
                                "{}/{} version {} in the source is not JSON",
                                w.rtype, w.id, w.version
                            )
                        })?;
                    let ix = salus_service::extract_index(&value);
                    w.index = ix.rows;
                    w.fulltext = Some(ix.text);
                    w.contained = ix.contained;
                }
            }
            batch.push(w);
        }
        let written = batch.len() as u64;
        if written > 0 {
            tx.put_many(batch).await?;
            tx.commit().await?;
        }
        copied += written;
        bar.inc(n);
    }
    Ok((copied, skipped))
}

/// Run a migration between two opened stores (the command's work, without opening).
pub async fn migrate_stores(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    args: &MigrateArgs,
    bar: &indicatif::ProgressBar,
) -> Result<MigrateReport> {
    let start = Instant::now();
    let occupied = !target.scan_versions(None, 1).await?.is_empty();
    let mut emptied = 0;
    if occupied {
        if args.force_empty {
            emptied = empty(target.as_ref(), bar).await?;
        } else if !args.resume {
            bail!(
                "the target {} is not empty: give --resume to continue an interrupted \
                 migration into it, or --force-empty to erase it first",
                Endpoint::parse(&args.to)
                    .map(|e| e.describe())
                    .unwrap_or_default()
            );
        }
    }
    // custom search parameters of the source index the target's resources too
    let svc = salus_service::FhirService::new(source.clone(), Default::default());
    svc.load_search_parameters().await?;
    bar.set_length(count_versions(source.as_ref()).await?);
    bar.set_message("");
    let (copied, skipped) = copy(source.as_ref(), target.as_ref(), bar).await?;
    target.analyze().await?;
    let seconds = start.elapsed().as_secs_f64();
    bar.set_message("verifying");
    let (s, t) = tokio::join!(digest(source.as_ref()), digest(target.as_ref()));
    let (s, t) = (
        s.context("verifying the source")?,
        t.context("verifying the target")?,
    );
    let mut differences = compare(&s, &t);
    if !differences.is_empty() && s.sha256 != t.sha256 {
        differences.extend(first_differences(source.as_ref(), target.as_ref(), 10).await?);
    }
    Ok(MigrateReport {
        copied,
        skipped,
        emptied,
        seconds,
        source: s,
        target: t,
        differences,
    })
}

/// `salus migrate`: returns whether the target verified equal to the source.
pub async fn run_cli(config: &Config, args: MigrateArgs) -> Result<bool> {
    let from = Endpoint::parse(&args.from).context("--from")?;
    let to = Endpoint::parse(&args.to).context("--to")?;
    if from == to {
        bail!("--from and --to name the same store ({})", from.describe());
    }
    if let (Endpoint::Sqlite(a), Endpoint::Sqlite(b)) = (&from, &to) {
        if same_dir(a, b) {
            bail!("--from and --to name the same data dir ({})", a.display());
        }
    }
    let source = open(&from, config, true).await?;
    let target = open(&to, config, false).await?;
    let bar = progress_bar(args.progress);
    let report = migrate_stores(source.store(), target.store(), &args, &bar).await;
    bar.finish_and_clear();
    let closed = target.close().await;
    source.close().await?;
    let report = report?;
    closed?;
    if report.emptied > 0 {
        println!(
            "emptied the target first: {} resources erased",
            report.emptied
        );
    }
    println!(
        "migrated {} versions from {} to {} in {:.2}s ({:.0} versions/s){}",
        report.copied,
        from.describe(),
        to.describe(),
        report.seconds,
        report.rate(),
        if report.skipped > 0 {
            format!("; {} already in the target", report.skipped)
        } else {
            String::new()
        }
    );
    if report.verified() {
        let current: u64 = report.source.types.values().map(|c| c.current).sum();
        println!(
            "verified: {} versions, {} current resources in {} types; SHA-256 {}",
            report.source.versions,
            current,
            report.source.types.len(),
            report.source.sha256
        );
    } else {
        eprintln!("verification FAILED: the target differs from the source:");
        for d in &report.differences {
            eprintln!("  {d}");
        }
    }
    Ok(report.verified())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_hide_passwords() {
        assert_eq!(
            Endpoint::parse("sqlite:./data").unwrap(),
            Endpoint::Sqlite("./data".into())
        );
        assert!(Endpoint::parse("sqlite:").is_err());
        let e = Endpoint::parse("mysql://u:secret@h/db")
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither sqlite:DIR"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let pg = Endpoint::parse("postgres://u:secret@h:5432/db").unwrap();
        assert_eq!(pg.describe(), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    fn digest_of(types: &[(&str, u64, u64)], sha: &str) -> StoreDigest {
        StoreDigest {
            types: types
                .iter()
                .map(|(t, v, c)| {
                    (
                        t.to_string(),
                        TypeCounts {
                            versions: *v,
                            current: *c,
                        },
                    )
                })
                .collect(),
            versions: types.iter().map(|t| t.1).sum(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn comparison_names_what_differs() {
        let a = digest_of(&[("Patient", 3, 2), ("Observation", 5, 5)], "aa");
        assert!(compare(&a, &a.clone()).is_empty());
        let b = digest_of(&[("Patient", 3, 1), ("Encounter", 1, 1)], "bb");
        let d = compare(&a, &b);
        assert!(d.contains(&"Patient: 2 current resources in the source, 1 in the target".into()));
        assert!(d.contains(&"Observation: 5 versions in the source, 0 in the target".into()));
        assert!(d.contains(&"Encounter: 0 versions in the source, 1 in the target".into()));
        assert!(d.iter().any(|l| l.starts_with("SHA-256")));
    }

    #[test]
    fn the_hash_covers_every_field() {
        let r = VersionRecord {
            rtype: "Patient".into(),
            id: "p1".into(),
            version: 1,
            last_updated: 0,
            method: salus_store::Method::Put,
            body: Some("{}".into()),
            seq: 1,
        };
        let h = |r: &VersionRecord| {
            let mut h = Sha256::new();
            hash_record(&mut h, r);
            h.finalize().to_vec()
        };
        let base = h(&r);
        let mut other = r.clone();
        other.version = 2;
        assert_ne!(h(&other), base);
        let mut other = r.clone();
        other.body = None;
        assert_ne!(h(&other), base);
        let mut other = r.clone();
        other.body = Some("{ }".into());
        assert_ne!(h(&other), base);
        // field boundaries count: "Patientp" + "1" is not "Patient" + "p1"
        let mut other = r.clone();
        other.rtype = "Patientp".into();
        other.id = "1".into();
        assert_ne!(h(&other), base);
    }
}
