//! The subscription engine: reads the store's change feed, matches each change against
//! the live subscriptions, records the resulting events durably (an outbox in the store,
//! written in the same transaction as the feed cursor), and delivers them: rest-hook by
//! the process holding the lease, with retries, exponential backoff and the `error`
//! state; websocket by whichever process the client is connected to.

use crate::matcher::{self, Compiled};
use crate::notify::{self, Item, Kind, Status};
use crate::spec::{self, Channel, Content, EndpointPolicy, Mode, Spec};
use crate::state::{self, EngineState, Event, Grant, Loaded, SubState};
use crate::topic::{Interaction, Topics, Trigger};
use crate::ws::{self, WsSession};
use salus_access::Access;
use salus_service::{FhirError, FhirService};
use salus_store::{Clause, SearchQuery, Store, VersionRecord};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Settings (`[subscriptions]`, docs/subscriptions.md).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server's public base URL (references in notifications, the websocket URL).
    pub base_url: String,
    /// How often the change feed is read when nothing in this process wakes the engine.
    pub poll_interval: Duration,
    /// Consecutive failed deliveries after which a subscription goes to `error`.
    pub max_failures: u32,
    /// First retry delay; doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Delivered events kept for `$events`, per subscription.
    pub retained_events: u64,
    /// Undelivered events kept per subscription; older ones are dropped (counted as lost).
    pub max_backlog: u64,
    pub endpoints: EndpointPolicy,
    /// Authorization is on: notifications are read with the access grant recorded when
    /// the subscription was created or changed through the REST API.
    pub require_grants: bool,
    /// How long a websocket binding token is valid.
    pub ws_token_ttl: Duration,
    /// How long the matching and delivering process holds its lease.
    pub lease: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            base_url: "http://localhost:8080".into(),
            poll_interval: Duration::from_secs(1),
            max_failures: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            retained_events: 1000,
            max_backlog: 10_000,
            endpoints: EndpointPolicy::default(),
            require_grants: false,
            ws_token_ttl: Duration::from_secs(3600),
            lease: Duration::from_secs(30),
        }
    }
}

/// Errors of the Subscription operations (mapped to HTTP by the API's one error map).
pub type OperationError = FhirError;

/// Changes read from the feed per store round trip.
const FEED_PAGE: usize = 500;
/// Pages read per engine cycle before deliveries get their turn.
const PAGES_PER_CYCLE: usize = 20;
/// A `seq` not seen this long after a larger one is taken as never committed.
const GAP_WAIT_MICROS: i64 = 30_000_000;
/// Gaps tracked at most.
const MAX_GAPS: usize = 1000;
/// Event batches kept per subscription at most.
const MAX_BATCHES: usize = 200;

/// A loaded subscription.
#[derive(Clone)]
struct Sub {
    id: String,
    status: String,
    error: Option<String>,
    spec: Result<Spec, String>,
}

/// What a delivery task reports.
struct Outcome {
    sub: String,
    hash: String,
    kind: Kind,
    /// Events delivered through this number.
    through: u64,
    result: Result<(), String>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    svc: FhirService,
    store: Arc<dyn Store>,
    topics: Topics,
    config: EngineConfig,
    changed: Arc<Notify>,
    recorded: watch::Sender<u64>,
    owner: String,
    subs: Mutex<HashMap<String, Sub>>,
    loaded: Mutex<bool>,
    /// Sub states as last written by this process (the leader is their only writer).
    states: Mutex<HashMap<String, Loaded<SubState>>>,
    /// The feed position reached by this leader (bookkeeping-only changes advance it
    /// without a write).
    cursor: Mutex<Option<i64>>,
    last_cursor_write: Mutex<i64>,
    http: reqwest::Client,
    secret: tokio::sync::OnceCell<Vec<u8>>,
    /// Grants read recently (micros when read), so matching does not read one per event.
    grants: Mutex<HashMap<String, (i64, Option<Grant>)>>,
}

/// How long a grant read from the store is used before it is read again.
const GRANT_CACHE_MICROS: i64 = 5_000_000;

fn now() -> i64 {
    salus_fhir::instant::now_micros()
}

impl Engine {
    /// An engine over `svc` (the server's own service: no access guard). `changed` is
    /// the commit hook's signal ([`crate::NotifyingStore`]).
    pub fn new(
        svc: FhirService,
        topics: Topics,
        config: EngineConfig,
        changed: Arc<Notify>,
    ) -> Engine {
        let store = svc.unguarded_store().clone();
        Engine {
            inner: Arc::new(Inner {
                svc: svc.scoped(Access::Internal),
                store,
                topics,
                config,
                changed,
                recorded: watch::channel(0).0,
                owner: uuid::Uuid::new_v4().to_string(),
                subs: Mutex::default(),
                loaded: Mutex::new(false),
                states: Mutex::default(),
                cursor: Mutex::new(None),
                last_cursor_write: Mutex::new(0),
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .expect("HTTP client"),
                secret: tokio::sync::OnceCell::new(),
                grants: Mutex::default(),
            }),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Check a Subscription a client is writing: every problem is a 400 naming the
    /// element (`Subscription.channel.endpoint must use https …`).
    pub fn check(&self, sub: &Value) -> Result<Spec, FhirError> {
        spec::parse(sub, &self.inner.topics, &self.inner.config.endpoints)
            .map_err(|e| FhirError::invalid_at(salus_fhir::IssueCode::Invalid, "Subscription", e))
    }

    /// Record who created or changed a subscription (before the write, so the engine
    /// never sees the new content without it); see docs/subscriptions.md, Security.
    pub async fn record_grant(
        &self,
        sub_id: &str,
        spec: &Spec,
        who: &salus_access::Principal,
    ) -> Result<Option<Grant>, FhirError> {
        let id = state::grant_id(sub_id);
        let store = &self.inner.store;
        let mut tx = store.begin().await?;
        let old: Loaded<Option<Grant>> = state::read_tx(tx.as_mut(), &id).await?;
        state::write(
            tx.as_mut(),
            &id,
            &Some(Grant::of(who, &spec.hash)),
            old.head,
        )
        .await?;
        tx.commit().await?;
        Ok(old.value)
    }

    /// Put back the grant a failed write had replaced.
    pub async fn restore_grant(
        &self,
        sub_id: &str,
        previous: Option<Grant>,
    ) -> Result<(), FhirError> {
        let id = state::grant_id(sub_id);
        let mut tx = self.inner.store.begin().await?;
        let cur: Loaded<Option<Grant>> = state::read_tx(tx.as_mut(), &id).await?;
        state::write(tx.as_mut(), &id, &previous, cur.head).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Wake the engine (as a commit in this process does).
    pub fn wake(&self) {
        self.inner.changed.notify_one();
    }

    /// Run until `stop` completes.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        let mut inflight: HashSet<String> = HashSet::new();
        let poll = self.inner.config.poll_interval;
        loop {
            if let Err(e) = self.cycle(&tx, &mut inflight).await {
                tracing::warn!(error = %e, "subscription engine cycle failed; retrying");
            }
            tokio::select! {
                _ = &mut stop => {
                    // Hand the lease back so a restarted or other process takes over at once.
                    if let Err(e) = self.release_lease().await {
                        tracing::warn!(error = %e, "cannot release the subscription lease");
                    }
                    break;
                }
                _ = self.inner.changed.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(o) = rx.recv() => {
                    inflight.remove(&o.sub);
                    if let Err(e) = self.apply(o).await {
                        tracing::warn!(error = %e, "cannot record a delivery outcome");
                    }
                    while let Ok(o) = rx.try_recv() {
                        inflight.remove(&o.sub);
                        if let Err(e) = self.apply(o).await {
                            tracing::warn!(error = %e, "cannot record a delivery outcome");
                        }
                    }
                }
            }
        }
    }

    /// One pass: hold the lease, read the feed, record events, start deliveries.
    async fn cycle(
        &self,
        tx: &mpsc::UnboundedSender<Outcome>,
        inflight: &mut HashSet<String>,
    ) -> Result<(), FhirError> {
        if !self.hold_lease().await? {
            return Ok(());
        }
        self.ensure_loaded().await?;
        for _ in 0..PAGES_PER_CYCLE {
            if !self.feed_page().await? {
                break;
            }
        }
        self.transitions().await?;
        self.start_deliveries(tx, inflight).await?;
        Ok(())
    }

    // ---- lease and feed -------------------------------------------------------------

    /// Take or keep the lease; `false`: another process holds it.
    async fn hold_lease(&self) -> Result<bool, FhirError> {
        let inner = &self.inner;
        let cur: Loaded<EngineState> = state::read(inner.store.as_ref(), state::ENGINE_ID).await?;
        let t = now();
        let lease = inner.config.lease.as_micros() as i64;
        let mine = cur.value.owner == inner.owner;
        if !mine && cur.value.lease_until > t && cur.head.is_some() {
            *inner.cursor.lock().unwrap() = None;
            inner.states.lock().unwrap().clear();
            return Ok(false);
        }
        if mine && cur.value.lease_until - t > lease / 2 {
            return Ok(true);
        }
        let mut next = cur.value.clone();
        if cur.head.is_none() {
            // First start: nothing to do (and nothing written) until a Subscription
            // exists; then notify about changes from the oldest one's current version on.
            let mut q = SearchQuery::new("Subscription");
            q.count = 1000;
            let subs = inner.store.search(&q).await?;
            match subs.entries.iter().map(|r| r.seq).min() {
                None => return Ok(false),
                Some(first) => next.cursor = first - 1,
            }
        }
        if !mine {
            tracing::info!("this process now matches and delivers subscriptions");
            inner.states.lock().unwrap().clear();
            *inner.cursor.lock().unwrap() = None;
            // Another process ran meanwhile: its view of the subscriptions is newer.
            *inner.loaded.lock().unwrap() = false;
        }
        if let Some(c) = *inner.cursor.lock().unwrap() {
            next.cursor = next.cursor.max(c);
        }
        next.owner = inner.owner.clone();
        next.lease_until = t + lease;
        let mut txn = inner.store.begin().await?;
        state::write(txn.as_mut(), state::ENGINE_ID, &next, cur.head).await?;
        match txn.commit().await {
            Ok(()) => Ok(true),
            Err(salus_store::StoreError::VersionConflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn release_lease(&self) -> Result<(), FhirError> {
        let inner = &self.inner;
        let mut tx = inner.store.begin().await?;
        let cur: Loaded<EngineState> = state::read_tx(tx.as_mut(), state::ENGINE_ID).await?;
        if cur.value.owner != inner.owner {
            return Ok(());
        }
        let mut next = cur.value.clone();
        if let Some(c) = *inner.cursor.lock().unwrap() {
            next.cursor = next.cursor.max(c);
        }
        next.lease_until = 0;
        state::write(tx.as_mut(), state::ENGINE_ID, &next, cur.head).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Load every subscription once.
    async fn ensure_loaded(&self) -> Result<(), FhirError> {
        if *self.inner.loaded.lock().unwrap() {
            return Ok(());
        }
        let mut q = SearchQuery::new("Subscription");
        q.count = 500;
        let mut found = vec![];
        loop {
            let page = self.inner.store.search(&q).await?;
            found.extend(page.entries);
            match (page.more, page.last_cursor) {
                (true, Some(c)) => q.page = salus_store::Page::After(c),
                _ => break,
            }
        }
        for r in found {
            self.load_record(&r);
        }
        *self.inner.loaded.lock().unwrap() = true;
        Ok(())
    }

    fn load_record(&self, r: &VersionRecord) {
        let mut subs = self.inner.subs.lock().unwrap();
        let Some(body) = r.body.as_deref() else {
            subs.remove(&r.id);
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            return;
        };
        let parsed = spec::parse(&v, &self.inner.topics, &self.inner.config.endpoints);
        subs.insert(
            r.id.clone(),
            Sub {
                id: r.id.clone(),
                status: v["status"].as_str().unwrap_or("requested").to_string(),
                error: v["error"].as_str().map(str::to_string),
                spec: parsed,
            },
        );
    }

    /// Read one page of the feed and record its events; `true` if there may be more.
    async fn feed_page(&self) -> Result<bool, FhirError> {
        let inner = &self.inner;
        let persisted: Loaded<EngineState> =
            state::read(inner.store.as_ref(), state::ENGINE_ID).await?;
        if persisted.value.owner != inner.owner {
            return Ok(false);
        }
        let mut eng = persisted.value.clone();
        if let Some(c) = *inner.cursor.lock().unwrap() {
            eng.cursor = eng.cursor.max(c);
        }
        let mut records = inner.store.changes_after(eng.cursor, FEED_PAGE).await?;
        let full_page = records.len() == FEED_PAGE;
        // Late commits below the cursor (PostgreSQL): look at each gap once more.
        let t = now();
        eng.gaps.retain(|(_, seen)| t - seen < GAP_WAIT_MICROS);
        let mut filled = vec![];
        for (seq, _) in &eng.gaps {
            if let Some(r) = inner.store.changes_after(seq - 1, 1).await?.pop() {
                if r.seq == *seq {
                    filled.push(r);
                }
            }
        }
        eng.gaps
            .retain(|(s, _)| !filled.iter().any(|r| r.seq == *s));
        let mut prev = eng.cursor;
        // Where a missing seq stays missing (SQLite: versions purged, as the device-rule
        // state's are after every batch), there is nothing to wait for.
        let track_gaps = !inner.store.feed_gaps_are_final();
        for r in &records {
            if track_gaps && r.seq > prev + 1 && eng.gaps.len() < MAX_GAPS {
                for s in (prev + 1)..r.seq {
                    if eng.gaps.len() >= MAX_GAPS {
                        break;
                    }
                    eng.gaps.push((s, t));
                }
            }
            prev = prev.max(r.seq);
        }
        if let Some(last) = records.last() {
            eng.cursor = eng.cursor.max(last.seq);
        }
        records.extend(filled);
        let relevant: Vec<&VersionRecord> = records
            .iter()
            .filter(|r| !crate::is_bookkeeping(&r.rtype, &r.id))
            .collect();
        if records.is_empty() {
            return Ok(false);
        }
        for r in &relevant {
            if r.rtype == "Subscription" {
                // The subscription's latest version, whatever this one was.
                match inner.store.read("Subscription", &r.id).await? {
                    Some(cur) => self.load_record(&cur),
                    None => {
                        inner.subs.lock().unwrap().remove(&r.id);
                    }
                }
            }
        }
        let mut events: HashMap<String, Vec<Event>> = HashMap::new();
        let subs: Vec<Sub> = inner.subs.lock().unwrap().values().cloned().collect();
        for r in &relevant {
            let mut change = Change::new(r);
            for sub in &subs {
                let Ok(spec) = &sub.spec else { continue };
                if !matches!(sub.status.as_str(), "requested" | "active" | "error") {
                    continue;
                }
                if spec.end.is_some_and(|e| e < r.last_updated) {
                    continue;
                }
                if self.matches(spec, &mut change).await? && self.may_read(spec, r).await? {
                    events.entry(sub.id.clone()).or_default().push(Event {
                        n: 0,
                        at: r.last_updated,
                        rtype: r.rtype.clone(),
                        id: r.id.clone(),
                        version: r.version,
                        method: if r.is_deleted() {
                            "DELETE".into()
                        } else if change.interaction(inner.store.as_ref()).await?
                            == Interaction::Create
                        {
                            "POST".into()
                        } else {
                            "PUT".into()
                        },
                        seq: r.seq,
                    });
                }
            }
        }
        let write_cursor = !events.is_empty()
            || (!relevant.is_empty() && t - *inner.last_cursor_write.lock().unwrap() > 5_000_000)
            || persisted.value.gaps != eng.gaps && !relevant.is_empty();
        if write_cursor {
            self.commit_events(events, &eng, persisted.head).await?;
            *inner.last_cursor_write.lock().unwrap() = t;
        }
        *inner.cursor.lock().unwrap() = Some(eng.cursor);
        Ok(full_page)
    }

    /// Write the events, their subscriptions' states and the cursor in one transaction.
    async fn commit_events(
        &self,
        events: HashMap<String, Vec<Event>>,
        eng: &EngineState,
        head: Option<salus_store::Head>,
    ) -> Result<(), FhirError> {
        let inner = &self.inner;
        let mut tx = inner.store.begin().await?;
        let mut written: Vec<(String, SubState)> = vec![];
        let count = events.values().map(Vec::len).sum::<usize>();
        for (sub_id, mut evs) in events {
            let sid = state::state_id(&sub_id);
            let cur: Loaded<SubState> = state::read_tx(tx.as_mut(), &sid).await?;
            let mut st = cur.value;
            let first = st.count + 1;
            for (i, e) in evs.iter_mut().enumerate() {
                e.n = first + i as u64;
            }
            st.count += evs.len() as u64;
            let last = st.count;
            let ws_only = inner
                .subs
                .lock()
                .unwrap()
                .get(&sub_id)
                .and_then(|s| {
                    s.spec
                        .as_ref()
                        .ok()
                        .map(|sp| sp.channel == Channel::Websocket)
                })
                .unwrap_or(false);
            if ws_only {
                // Websocket clients get events live; `$events` replays the rest.
                st.delivered = st.count;
            }
            state::write(tx.as_mut(), &state::batch_id(&sub_id, first), &evs, None).await?;
            st.batches.push((first, last));
            // Retention: delivered events beyond `retained_events`, undelivered beyond
            // `max_backlog`, and never more than MAX_BATCHES batches.
            while let Some(&(f, l)) = st.batches.first() {
                let delivered = l <= st.delivered;
                let too_old = if delivered {
                    st.count - l >= inner.config.retained_events
                } else {
                    st.count - l >= inner.config.max_backlog
                };
                if !(too_old || st.batches.len() > MAX_BATCHES) || st.batches.len() == 1 {
                    break;
                }
                if !delivered {
                    st.lost += l - f.max(st.delivered + 1) + 1;
                    st.delivered = l;
                    tracing::warn!(subscription = %sub_id, "undelivered subscription events dropped: backlog limit reached");
                }
                tx.purge("Binary", &state::batch_id(&sub_id, f)).await?;
                st.batches.remove(0);
            }
            state::write(tx.as_mut(), &sid, &st, cur.head).await?;
            written.push((sub_id, st));
        }
        let persisted: Loaded<EngineState> = state::read_tx(tx.as_mut(), state::ENGINE_ID).await?;
        if persisted.value.owner != inner.owner || persisted.head != head {
            return Err(FhirError::Conflict(
                "the subscription lease moved to another process".into(),
            ));
        }
        let mut next = eng.clone();
        next.lease_until = next.lease_until.max(persisted.value.lease_until);
        state::write(tx.as_mut(), state::ENGINE_ID, &next, persisted.head).await?;
        tx.commit().await?;
        let mut states = inner.states.lock().unwrap();
        for (sub_id, _) in &written {
            states.remove(sub_id);
        }
        drop(states);
        if count > 0 {
            inner.recorded.send_modify(|n| *n += count as u64);
        }
        Ok(())
    }

    // ---- matching -------------------------------------------------------------------

    async fn matches(&self, spec: &Spec, c: &mut Change<'_>) -> Result<bool, FhirError> {
        let store = self.inner.store.as_ref();
        let rtype = c.rec.rtype.as_str();
        match &spec.mode {
            Mode::Criteria => {
                if c.rec.is_deleted() || spec.filters.iter().all(|f| f.rtype != rtype) {
                    return Ok(false);
                }
                for f in spec.filters.iter().filter(|f| f.rtype == rtype) {
                    if !self.eval(&f.compiled, c, false).await? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Mode::Topic(url) => {
                let Some(topic) = self.inner.topics.get(url) else {
                    return Ok(false);
                };
                if !topic
                    .triggers
                    .iter()
                    .any(|t| t.resource == "*" || t.resource == rtype)
                {
                    return Ok(false);
                }
                let interaction = c.interaction(store).await?;
                let mut fired = false;
                for t in topic
                    .triggers
                    .iter()
                    .filter(|t| t.covers(rtype, interaction))
                {
                    if self.trigger_fires(t, interaction, c).await? {
                        fired = true;
                        break;
                    }
                }
                if !fired {
                    return Ok(false);
                }
                if spec.filters.is_empty() {
                    return Ok(true);
                }
                let mine: Vec<_> = spec.filters.iter().filter(|f| f.rtype == rtype).collect();
                if mine.is_empty() {
                    return Ok(false);
                }
                let on_previous = interaction == Interaction::Delete;
                for f in mine {
                    if !self.eval(&f.compiled, c, on_previous).await? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    async fn trigger_fires(
        &self,
        t: &Trigger,
        interaction: Interaction,
        c: &mut Change<'_>,
    ) -> Result<bool, FhirError> {
        let mut results = vec![];
        if let Some(q) = &t.previous {
            results.push(if interaction == Interaction::Create {
                t.result_for_create
            } else {
                let compiled = matcher::compile(&c.rec.rtype, q).map_err(FhirError::invalid)?;
                self.eval(&compiled, c, true).await?
            });
        }
        if let Some(q) = &t.current {
            results.push(if interaction == Interaction::Delete {
                t.result_for_delete
            } else {
                let compiled = matcher::compile(&c.rec.rtype, q).map_err(FhirError::invalid)?;
                self.eval(&compiled, c, false).await?
            });
        }
        let query_ok = results.is_empty()
            || if t.require_both {
                results.iter().all(|b| *b)
            } else {
                results.iter().any(|b| *b)
            };
        if !query_ok {
            return Ok(false);
        }
        if let Some(expr) = &t.fhirpath {
            let store = self.inner.store.as_ref();
            let current = c.current_json().cloned();
            let previous = c.previous_json(store).await?.cloned();
            let empty = Value::Null;
            let env = salus_fhirpath::Env::new();
            let env = match &current {
                Some(v) => env.with_json_var("current", v),
                None => env.with_var("current", vec![]),
            };
            let env = match &previous {
                Some(v) => env.with_json_var("previous", v),
                None => env.with_var("previous", vec![]),
            };
            let focus = current.as_ref().or(previous.as_ref()).unwrap_or(&empty);
            return Ok(matches!(expr.evaluate_bool(focus, &env), Ok(Some(true))));
        }
        Ok(true)
    }

    /// Evaluate criteria on the change's version (`previous`: the version before it).
    async fn eval(
        &self,
        compiled: &Compiled,
        c: &mut Change<'_>,
        previous: bool,
    ) -> Result<bool, FhirError> {
        let store = self.inner.store.as_ref();
        let rtype = c.rec.rtype.clone();
        let id = c.rec.id.clone();
        let (json, lu, is_current) = if previous {
            match c.previous(store).await? {
                Some((v, lu)) => (Some(v.clone()), *lu, false),
                None => return Ok(false),
            }
        } else {
            match c.current_json() {
                Some(v) => (Some(v.clone()), c.rec.last_updated, true),
                None => return Ok(false),
            }
        };
        let Some(json) = json else { return Ok(false) };
        match compiled {
            Compiled::Plan(q) => {
                let rows = salus_search::extract::extract(&json);
                match matcher::matches(q, &rtype, &id, lu, &rows) {
                    Some(b) => Ok(b),
                    None => {
                        // Chains and full text: the store answers for the current version.
                        let latest = store.read(&rtype, &id).await?;
                        if !is_current || latest.is_none_or(|l| l.version != c.rec.version) {
                            tracing::debug!(%rtype, %id, "criteria with chains are evaluated on current versions only");
                            return Ok(false);
                        }
                        let mut q = q.clone();
                        q.clauses.push(Clause::Id(vec![id.clone()]));
                        q.count = 1;
                        Ok(!store.search(&q).await?.entries.is_empty())
                    }
                }
            }
            Compiled::Service(pairs) => {
                if !is_current {
                    return Ok(false);
                }
                let mut pairs = pairs.clone();
                pairs.push(("_id".into(), id.clone()));
                let found = self.inner.svc.search(&rtype, &pairs, true).await?;
                Ok(found
                    .page
                    .entries
                    .iter()
                    .any(|e| e.id == id && e.version == c.rec.version))
            }
        }
    }

    /// The service notifications for `spec` are read with: the grant recorded for its
    /// content, or the server's own when authorization is off.
    async fn reader(&self, spec: &Spec) -> Result<Option<FhirService>, FhirError> {
        if !self.inner.config.require_grants {
            return Ok(Some(self.inner.svc.clone()));
        }
        let t = now();
        let cached = self
            .inner
            .grants
            .lock()
            .unwrap()
            .get(&spec.id)
            // A grant for other content may just have been replaced: read it again.
            .filter(|(at, g)| {
                t - at < GRANT_CACHE_MICROS && g.as_ref().is_some_and(|g| g.hash == spec.hash)
            })
            .map(|(_, g)| g.clone());
        let grant = match cached {
            Some(g) => g,
            None => {
                let g: Loaded<Option<Grant>> =
                    state::read(self.inner.store.as_ref(), &state::grant_id(&spec.id)).await?;
                self.inner
                    .grants
                    .lock()
                    .unwrap()
                    .insert(spec.id.clone(), (t, g.value.clone()));
                g.value
            }
        };
        match grant {
            Some(g) if g.hash == spec.hash => match g.principal() {
                Ok(p) => Ok(Some(self.inner.svc.scoped(Access::Caller(Arc::new(p))))),
                Err(e) => {
                    tracing::warn!(subscription = %spec.id, error = %e, "unusable access grant");
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }

    /// Whether the subscriber may read the focus of this change.
    async fn may_read(&self, spec: &Spec, r: &VersionRecord) -> Result<bool, FhirError> {
        if !self.inner.config.require_grants {
            return Ok(true);
        }
        let Some(reader) = self.reader(spec).await? else {
            return Ok(false);
        };
        let version = if r.is_deleted() {
            if r.version <= 1 {
                return Ok(false);
            }
            r.version - 1
        } else {
            r.version
        };
        match reader.vread(&r.rtype, &r.id, &version.to_string()).await {
            Ok(_) => Ok(true),
            Err(FhirError::Forbidden(_) | FhirError::NotFound(_) | FhirError::Gone(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- status transitions and delivery --------------------------------------------

    async fn sub_state(&self, sub_id: &str) -> Result<Loaded<SubState>, FhirError> {
        if let Some(s) = self.inner.states.lock().unwrap().get(sub_id) {
            return Ok(Loaded {
                value: s.value.clone(),
                head: s.head,
            });
        }
        let s: Loaded<SubState> =
            state::read(self.inner.store.as_ref(), &state::state_id(sub_id)).await?;
        self.inner.states.lock().unwrap().insert(
            sub_id.to_string(),
            Loaded {
                value: s.value.clone(),
                head: s.head,
            },
        );
        Ok(s)
    }

    /// Change a sub's state (read, modify, version-checked write).
    async fn update_state(
        &self,
        sub_id: &str,
        f: impl Fn(&mut SubState),
    ) -> Result<SubState, FhirError> {
        let sid = state::state_id(sub_id);
        for _ in 0..10 {
            let mut tx = self.inner.store.begin().await?;
            let cur: Loaded<SubState> = state::read_tx(tx.as_mut(), &sid).await?;
            let mut st = cur.value;
            f(&mut st);
            state::write(tx.as_mut(), &sid, &st, cur.head).await?;
            match tx.commit().await {
                Ok(()) => {
                    self.inner.states.lock().unwrap().remove(sub_id);
                    return Ok(st);
                }
                Err(salus_store::StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FhirError::Conflict(format!(
            "subscription {sub_id}: state kept changing"
        )))
    }

    /// Set `Subscription.status` (and `error`) on the stored resource.
    async fn set_status(
        &self,
        sub_id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), FhirError> {
        for _ in 0..10 {
            let Some(cur) = self.inner.store.read("Subscription", sub_id).await? else {
                return Ok(());
            };
            let Some(body) = cur.body.as_deref() else {
                return Ok(());
            };
            let mut v: Value = serde_json::from_str(body)
                .map_err(|e| FhirError::Internal(format!("stored Subscription: {e}")))?;
            if v["status"] == status && v["error"].as_str() == error {
                return Ok(());
            }
            v["status"] = status.into();
            match error {
                Some(e) => v["error"] = e.into(),
                None => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("error");
                    }
                }
            }
            match self
                .inner
                .svc
                .update("Subscription", sub_id, v, Some(cur.version))
                .await
            {
                Ok(out) => {
                    self.load_record(&out.record);
                    tracing::info!(subscription = %sub_id, status, error, "subscription status changed");
                    return Ok(());
                }
                Err(FhirError::PreconditionFailed(_) | FhirError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Status changes the engine makes on its own: activation without handshake,
    /// problems found on load, ends reached.
    async fn transitions(&self) -> Result<(), FhirError> {
        let subs: Vec<Sub> = self.inner.subs.lock().unwrap().values().cloned().collect();
        let t = now();
        for sub in subs {
            if matches!(sub.status.as_str(), "off" | "entered-in-error") {
                continue;
            }
            let spec = match &sub.spec {
                Ok(s) => s,
                Err(e) => {
                    if sub.status != "error" || sub.error.as_deref() != Some(e) {
                        self.set_status(&sub.id, "error", Some(e)).await?;
                    }
                    continue;
                }
            };
            if spec.end.is_some_and(|e| e < t) {
                self.set_status(&sub.id, "off", None).await?;
                continue;
            }
            if self.inner.config.require_grants && self.reader(spec).await?.is_none() {
                let msg = "no access grant for this content: create or change Subscriptions through POST/PUT /Subscription";
                if sub.status != "error" || sub.error.as_deref() != Some(msg) {
                    self.set_status(&sub.id, "error", Some(msg)).await?;
                }
                continue;
            }
            let needs_handshake =
                spec.channel == Channel::RestHook && matches!(spec.mode, Mode::Topic(_));
            if sub.status == "requested" {
                let st = self.sub_state(&sub.id).await?;
                if st.value.failures >= self.inner.config.max_failures {
                    // Back from `error` (the client asked again): start retrying afresh.
                    self.update_state(&sub.id, |s| {
                        s.failures = 0;
                        s.next_attempt = 0;
                    })
                    .await?;
                }
                if !needs_handshake {
                    self.set_status(&sub.id, "active", None).await?;
                }
            }
        }
        Ok(())
    }

    async fn start_deliveries(
        &self,
        tx: &mpsc::UnboundedSender<Outcome>,
        inflight: &mut HashSet<String>,
    ) -> Result<(), FhirError> {
        let subs: Vec<Sub> = self.inner.subs.lock().unwrap().values().cloned().collect();
        let t = now();
        for sub in subs {
            let Ok(spec) = &sub.spec else { continue };
            if spec.channel != Channel::RestHook || inflight.contains(&sub.id) {
                continue;
            }
            if !matches!(sub.status.as_str(), "requested" | "active") {
                continue;
            }
            let st = self.sub_state(&sub.id).await?.value;
            if st.next_attempt > t {
                continue;
            }
            let topic = matches!(spec.mode, Mode::Topic(_));
            let job = if topic
                && (sub.status == "requested" || st.handshake_for.as_deref() != Some(&spec.hash))
            {
                Job::Handshake
            } else if sub.status != "active" {
                continue;
            } else if st.delivered < st.count {
                let upto = (st.delivered + spec.max_count as u64).min(st.count);
                let events = self
                    .load_events(&sub.id, &st, st.delivered + 1, upto)
                    .await?;
                if events.is_empty() {
                    // Dropped from retention meanwhile: move the watermark on.
                    self.update_state(&sub.id, |s| s.delivered = s.delivered.max(upto))
                        .await?;
                    continue;
                }
                Job::Events(events, st.count)
            } else if topic
                && spec
                    .heartbeat
                    .is_some_and(|h| t - st.last_sent >= h as i64 * 1_000_000)
            {
                Job::Heartbeat(st.count)
            } else {
                continue;
            };
            inflight.insert(sub.id.clone());
            let this = self.clone();
            let spec = spec.clone();
            let status = sub.status.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = this.deliver(&spec, &status, job).await;
                let _ = tx.send(outcome);
            });
        }
        Ok(())
    }

    /// Events `from..=to` of a subscription, from its retained batches.
    async fn load_events(
        &self,
        sub_id: &str,
        st: &SubState,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, FhirError> {
        let mut out = vec![];
        for &(f, l) in st.batches.iter().filter(|(f, l)| *l >= from && *f <= to) {
            let b: Loaded<Vec<Event>> =
                state::read(self.inner.store.as_ref(), &state::batch_id(sub_id, f)).await?;
            out.extend(b.value.into_iter().filter(|e| e.n >= from && e.n <= to));
            let _ = l;
        }
        out.sort_by_key(|e| e.n);
        Ok(out)
    }

    /// Send one notification; never fails, reports the outcome.
    async fn deliver(&self, spec: &Spec, status: &str, job: Job) -> Outcome {
        let (kind, through, count) = match &job {
            Job::Handshake => (Kind::Handshake, 0, 0),
            Job::Heartbeat(c) => (Kind::Heartbeat, 0, *c),
            Job::Events(evs, c) => (Kind::EventNotification, evs.last().map_or(0, |e| e.n), *c),
        };
        let result = match (&spec.mode, &job) {
            (Mode::Criteria, Job::Events(evs, _)) => self.deliver_classic(spec, evs).await,
            (Mode::Criteria, _) => Ok(()),
            (Mode::Topic(topic), _) => {
                let events: &[Event] = match &job {
                    Job::Events(evs, _) => evs,
                    _ => &[],
                };
                match self.items(spec, events, spec.content).await {
                    Ok(items) => {
                        let shown_status = if kind == Kind::Handshake {
                            "requested"
                        } else {
                            status
                        };
                        let bundle = notify::bundle(
                            &Status {
                                base: &self.inner.config.base_url,
                                sub_id: &spec.id,
                                topic: Some(topic),
                                status: shown_status,
                                kind,
                                events_since_start: count,
                                error: None,
                            },
                            &items
                                .iter()
                                .map(|(e, r, res)| Item {
                                    event: e,
                                    reference: *r,
                                    resource: res.clone(),
                                })
                                .collect::<Vec<_>>(),
                        );
                        // Every content level sends the Bundle (`empty`: the status only).
                        let endpoint = spec.endpoint.as_deref().unwrap_or("");
                        self.post(
                            spec,
                            endpoint,
                            Some(bundle.to_string()),
                            reqwest::Method::POST,
                        )
                        .await
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        Outcome {
            sub: spec.id.clone(),
            hash: spec.hash.clone(),
            kind,
            through,
            result,
        }
    }

    /// Per event: (event, include the reference, the resource when `full-resource` and
    /// readable by the subscriber).
    async fn items(
        &self,
        spec: &Spec,
        events: &[Event],
        content: Content,
    ) -> Result<Vec<(Event, bool, Option<Value>)>, FhirError> {
        let reader = if content == Content::FullResource {
            self.reader(spec).await?
        } else {
            None
        };
        let mut out = vec![];
        for e in events {
            let mut resource = None;
            if let (Some(reader), false) = (&reader, e.method == "DELETE") {
                match reader.vread(&e.rtype, &e.id, &e.version.to_string()).await {
                    Ok(r) => {
                        resource = r.body.as_deref().and_then(|b| serde_json::from_str(b).ok());
                    }
                    Err(FhirError::Forbidden(_) | FhirError::NotFound(_) | FhirError::Gone(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            out.push((e.clone(), content != Content::Empty, resource));
        }
        Ok(out)
    }

    /// R4 criteria subscriptions: an empty POST (a ping), or each resource PUT to
    /// `[endpoint]/[type]/[id]`.
    async fn deliver_classic(&self, spec: &Spec, events: &[Event]) -> Result<(), String> {
        let endpoint = spec.endpoint.as_deref().unwrap_or("").trim_end_matches('/');
        if spec.content == Content::Empty {
            return self.post(spec, endpoint, None, reqwest::Method::POST).await;
        }
        let items = self
            .items(spec, events, Content::FullResource)
            .await
            .map_err(|e| e.to_string())?;
        for (e, _, res) in items {
            let url = format!("{endpoint}/{}/{}", e.rtype, e.id);
            match res {
                Some(r) => {
                    self.post(spec, &url, Some(r.to_string()), reqwest::Method::PUT)
                        .await?
                }
                // Not readable by the subscriber (or gone): a ping without content.
                None => {
                    self.post(spec, endpoint, None, reqwest::Method::POST)
                        .await?
                }
            }
        }
        Ok(())
    }

    async fn post(
        &self,
        spec: &Spec,
        url: &str,
        body: Option<String>,
        method: reqwest::Method,
    ) -> Result<(), String> {
        let mut req = self
            .inner
            .http
            .request(method, url)
            .timeout(Duration::from_secs(spec.timeout));
        for (k, v) in &spec.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    spec.payload.as_deref().unwrap_or("application/fhir+json"),
                )
                .body(b);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the endpoint answered {}", r.status())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {} s", spec.timeout)),
            Err(e) => Err(format!("cannot reach the endpoint: {}", without_url(&e))),
        }
    }

    /// Record what a delivery did.
    async fn apply(&self, o: Outcome) -> Result<(), FhirError> {
        let t = now();
        let cfg = &self.inner.config;
        match o.result {
            Ok(()) => {
                let hash = o.hash.clone();
                self.update_state(&o.sub, |s| {
                    s.failures = 0;
                    s.next_attempt = 0;
                    s.last_error = None;
                    s.last_sent = t;
                    if o.kind == Kind::Handshake {
                        s.handshake_for = Some(hash.clone());
                    }
                    s.delivered = s.delivered.max(o.through);
                })
                .await?;
                if o.kind == Kind::Handshake {
                    self.set_status(&o.sub, "active", None).await?;
                }
            }
            Err(msg) => {
                let st = self
                    .update_state(&o.sub, |s| {
                        s.failures += 1;
                        let exp = cfg.retry_base.as_micros() as i64
                            * 2i64.saturating_pow(s.failures.saturating_sub(1).min(30));
                        s.next_attempt = t + exp.min(cfg.retry_max.as_micros() as i64);
                        s.last_error = Some(msg.clone());
                    })
                    .await?;
                tracing::warn!(subscription = %o.sub, failures = st.failures, error = %msg, "subscription delivery failed");
                if st.failures >= cfg.max_failures {
                    let text = format!(
                        "{} failed {} times in a row; last: {msg}",
                        if o.kind == Kind::Handshake {
                            "the handshake"
                        } else {
                            "delivery"
                        },
                        st.failures
                    );
                    self.set_status(&o.sub, "error", Some(&text)).await?;
                }
            }
        }
        Ok(())
    }

    // ---- operations -----------------------------------------------------------------

    /// Read a Subscription as the caller may (403/404 otherwise) and the engine's view.
    async fn visible(
        &self,
        caller: &FhirService,
        id: &str,
    ) -> Result<(Value, Result<Spec, String>), FhirError> {
        let r = caller.read("Subscription", id).await?;
        let v: Value = serde_json::from_str(r.body.as_deref().unwrap_or("{}"))
            .map_err(|e| FhirError::Internal(format!("stored Subscription: {e}")))?;
        let parsed = spec::parse(&v, &self.inner.topics, &self.inner.config.endpoints);
        Ok((v, parsed))
    }

    /// `Subscription/[id]/$status`.
    pub async fn status(&self, caller: &FhirService, id: &str) -> Result<Value, FhirError> {
        let (v, parsed) = self.visible(caller, id).await?;
        let st: Loaded<SubState> =
            state::read(self.inner.store.as_ref(), &state::state_id(id)).await?;
        let error = v["error"]
            .as_str()
            .map(str::to_string)
            .or(st.value.last_error.clone());
        let topic = parsed
            .as_ref()
            .ok()
            .and_then(|s| s.topic_url().map(str::to_string));
        let p = notify::status_parameters(
            &Status {
                base: &self.inner.config.base_url,
                sub_id: id,
                topic: topic.as_deref(),
                status: v["status"].as_str().unwrap_or("requested"),
                kind: Kind::QueryStatus,
                events_since_start: st.value.count,
                error: error.as_deref(),
            },
            &[],
        );
        Ok(notify::status_searchset(vec![p]))
    }

    /// `Subscription/[id]/$events`: replay retained events `since..=until`.
    pub async fn events(
        &self,
        caller: &FhirService,
        id: &str,
        since: Option<u64>,
        until: Option<u64>,
        content: Option<&str>,
    ) -> Result<Value, FhirError> {
        let (v, parsed) = self.visible(caller, id).await?;
        let spec = parsed
            .map_err(|e| FhirError::invalid(format!("this Subscription cannot be served: {e}")))?;
        let content = match content {
            None => spec.content,
            Some(c) => Content::parse(c).ok_or_else(|| {
                FhirError::invalid("content must be empty, id-only or full-resource")
            })?,
        };
        let st: Loaded<SubState> =
            state::read(self.inner.store.as_ref(), &state::state_id(id)).await?;
        let st = st.value;
        let oldest = st.batches.first().map_or(st.count + 1, |b| b.0);
        let from = since.unwrap_or(oldest).max(oldest).max(1);
        let to = until.unwrap_or(st.count).min(st.count);
        if let (Some(a), Some(b)) = (since, until) {
            if a > b {
                return Err(FhirError::invalid(
                    "eventsSinceNumber is after eventsUntilNumber",
                ));
            }
        }
        let events = if from <= to {
            self.load_events(id, &st, from, to.min(from + 999)).await?
        } else {
            vec![]
        };
        let items = self.items(&spec, &events, content).await?;
        Ok(notify::bundle(
            &Status {
                base: &self.inner.config.base_url,
                sub_id: id,
                topic: spec.topic_url(),
                status: v["status"].as_str().unwrap_or("requested"),
                kind: Kind::QueryEvent,
                events_since_start: st.count,
                error: None,
            },
            &items
                .iter()
                .map(|(e, r, res)| Item {
                    event: e,
                    reference: *r,
                    resource: res.clone(),
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// `Subscription/$get-ws-binding-token` (for `ids`, each readable by the caller and a
    /// websocket subscription).
    pub async fn ws_token(&self, caller: &FhirService, ids: &[String]) -> Result<Value, FhirError> {
        if ids.is_empty() {
            return Err(FhirError::invalid(
                "name the Subscription(s) with the id parameter",
            ));
        }
        for id in ids {
            let (_, parsed) = self.visible(caller, id).await?;
            match parsed {
                Ok(s) if s.channel == Channel::Websocket => {}
                Ok(_) => {
                    return Err(FhirError::invalid(format!(
                        "Subscription/{id} does not use the websocket channel"
                    )))
                }
                Err(e) => return Err(FhirError::invalid(format!("Subscription/{id}: {e}"))),
            }
        }
        let secret = self.secret().await?;
        let expires = now() + self.inner.config.ws_token_ttl.as_micros() as i64;
        let token = ws::sign(&secret, ids, expires);
        let base = &self.inner.config.base_url;
        let ws_url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/$subscription-ws")
        } else {
            format!(
                "ws://{}/$subscription-ws",
                base.trim_start_matches("http://")
            )
        };
        let mut params = vec![
            serde_json::json!({"name": "token", "valueString": token}),
            serde_json::json!({"name": "expiration", "valueDateTime": salus_fhir::instant::format_instant(expires)}),
        ];
        for id in ids {
            params.push(serde_json::json!({"name": "subscription", "valueString": format!("{base}/Subscription/{id}")}));
        }
        params.push(serde_json::json!({"name": "websocket-url", "valueUrl": ws_url}));
        Ok(serde_json::json!({"resourceType": "Parameters", "parameter": params}))
    }

    /// The key binding tokens are signed with, shared by every process on the store.
    async fn secret(&self) -> Result<Vec<u8>, FhirError> {
        let store = self.inner.store.clone();
        self.inner
            .secret
            .get_or_try_init(|| async move {
                for _ in 0..5 {
                    let cur: Loaded<Option<String>> =
                        state::read(store.as_ref(), state::SECRET_ID).await?;
                    if let Some(k) = cur.value {
                        return Ok(k.into_bytes());
                    }
                    let key = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    let mut tx = store.begin().await?;
                    state::write(tx.as_mut(), state::SECRET_ID, &Some(key.clone()), cur.head)
                        .await?;
                    match tx.commit().await {
                        Ok(()) => return Ok(key.into_bytes()),
                        Err(salus_store::StoreError::VersionConflict { .. }) => continue,
                        Err(e) => return Err(FhirError::from(e)),
                    }
                }
                Err(FhirError::Conflict(
                    "cannot create the websocket signing key".into(),
                ))
            })
            .await
            .cloned()
    }

    /// Bind a websocket connection (`bind-with-token <token>`).
    pub async fn ws_bind(&self, token: &str) -> Result<WsSession, String> {
        let secret = self.secret().await.map_err(|e| e.to_string())?;
        let ids = ws::verify(&secret, token, now())?;
        let mut subs = vec![];
        for id in ids {
            let r = self
                .inner
                .store
                .read("Subscription", &id)
                .await
                .map_err(|e| e.to_string())?
                .filter(|r| !r.is_deleted())
                .ok_or(format!("Subscription/{id} no longer exists"))?;
            let v: Value = serde_json::from_str(r.body.as_deref().unwrap_or("{}"))
                .map_err(|e| e.to_string())?;
            let spec = spec::parse(&v, &self.inner.topics, &self.inner.config.endpoints)?;
            let st: Loaded<SubState> =
                state::read(self.inner.store.as_ref(), &state::state_id(&id))
                    .await
                    .map_err(|e| e.to_string())?;
            subs.push(ws::Bound {
                spec,
                status: v["status"].as_str().unwrap_or("requested").to_string(),
                sent: st.value.count,
                last_sent: now(),
            });
        }
        Ok(WsSession::new(
            self.clone(),
            subs,
            self.inner.recorded.subscribe(),
        ))
    }

    /// For websocket sessions: a sub's state as stored, and events to send.
    pub(crate) async fn ws_poll(&self, b: &ws::Bound) -> Result<(SubState, Vec<Event>), FhirError> {
        let st: Loaded<SubState> =
            state::read(self.inner.store.as_ref(), &state::state_id(&b.spec.id)).await?;
        let st = st.value;
        if st.count <= b.sent {
            return Ok((st, vec![]));
        }
        let events = self
            .load_events(&b.spec.id, &st, b.sent + 1, st.count)
            .await?;
        Ok((st, events))
    }

    /// A notification's text for a websocket client.
    pub(crate) async fn ws_text(
        &self,
        b: &ws::Bound,
        kind: Kind,
        events: &[Event],
        count: u64,
    ) -> Result<String, FhirError> {
        if matches!(b.spec.mode, Mode::Criteria) {
            return Ok(format!("ping {}", b.spec.id));
        }
        let items = self.items(&b.spec, events, b.spec.content).await?;
        let bundle = notify::bundle(
            &Status {
                base: &self.inner.config.base_url,
                sub_id: &b.spec.id,
                topic: b.spec.topic_url(),
                status: if kind == Kind::Handshake {
                    &b.status
                } else {
                    "active"
                },
                kind,
                events_since_start: count,
                error: None,
            },
            &items
                .iter()
                .map(|(e, r, res)| Item {
                    event: e,
                    reference: *r,
                    resource: res.clone(),
                })
                .collect::<Vec<_>>(),
        );
        Ok(bundle.to_string())
    }

    /// The websocket channel activates without a handshake over HTTP.
    pub(crate) fn poll_interval(&self) -> Duration {
        self.inner.config.poll_interval
    }
}

enum Job {
    Handshake,
    Heartbeat(u64),
    Events(Vec<Event>, u64),
}

/// A reqwest error without its URL (which may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "the endpoint");
    }
    s
}

/// One change being matched, with what was looked up about it so far.
struct Change<'a> {
    rec: &'a VersionRecord,
    current: Option<Option<Value>>,
    previous: Option<Option<(Value, i64)>>,
}

impl<'a> Change<'a> {
    fn new(rec: &'a VersionRecord) -> Self {
        Change {
            rec,
            current: None,
            previous: None,
        }
    }

    fn current_json(&mut self) -> Option<&Value> {
        if self.current.is_none() {
            self.current = Some(
                self.rec
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str(b).ok()),
            );
        }
        self.current.as_ref().and_then(|c| c.as_ref())
    }

    async fn previous(&mut self, store: &dyn Store) -> Result<Option<&(Value, i64)>, FhirError> {
        if self.previous.is_none() {
            let p = if self.rec.version > 1 {
                store
                    .vread(&self.rec.rtype, &self.rec.id, self.rec.version - 1)
                    .await?
                    .and_then(|r| {
                        let lu = r.last_updated;
                        r.body
                            .as_deref()
                            .and_then(|b| serde_json::from_str::<Value>(b).ok())
                            .map(|v| (v, lu))
                    })
            } else {
                None
            };
            self.previous = Some(p);
        }
        Ok(self.previous.as_ref().and_then(|p| p.as_ref()))
    }

    async fn previous_json(&mut self, store: &dyn Store) -> Result<Option<&Value>, FhirError> {
        Ok(self.previous(store).await?.map(|(v, _)| v))
    }

    async fn interaction(&mut self, store: &dyn Store) -> Result<Interaction, FhirError> {
        let deleted = self.rec.is_deleted();
        let live = !deleted && self.previous(store).await?.is_some();
        Ok(Interaction::of(self.rec.method, deleted, live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A receiver that records notification bodies and fails while `failing` is set.
    async fn receiver(failing: Arc<AtomicBool>) -> (String, Arc<Mutex<Vec<Value>>>) {
        let got: Arc<Mutex<Vec<Value>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().fallback(axum::routing::post(move |body: String| {
            let (g, failing) = (g.clone(), failing.clone());
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let kind = v["entry"][0]["resource"]["parameter"]
                    .as_array()
                    .and_then(|p| p.iter().find(|x| x["name"] == "type"))
                    .and_then(|x| x["valueCode"].as_str())
                    .unwrap_or("")
                    .to_string();
                if kind != "handshake" && failing.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap().push(v);
                axum::http::StatusCode::OK
            }
        }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (url, got)
    }

    fn engine(svc: &FhirService) -> Engine {
        Engine::new(
            svc.clone(),
            Topics::builtin(),
            EngineConfig {
                poll_interval: Duration::from_millis(20),
                retry_base: Duration::from_millis(10),
                retry_max: Duration::from_millis(50),
                max_failures: 1000,
                ..Default::default()
            },
            Arc::new(Notify::new()),
        )
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undelivered_events_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            salus_store::sqlite::SqliteStore::open_dir(dir.path(), Default::default()).unwrap(),
        );
        let svc = FhirService::new(store, Default::default());
        let failing = Arc::new(AtomicBool::new(true));
        let (url, got) = receiver(failing.clone()).await;
        let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
            "criteria": "https://salus.dev/fhir/SubscriptionTopic/resource-created",
            "_criteria": {"extension": [{"url": crate::backport::FILTER_CRITERIA, "valueString": "Patient?family=restart"}]},
            "channel": {"type": "rest-hook", "endpoint": url, "payload": "application/fhir+json",
                "extension": [{"url": crate::backport::MAX_COUNT, "valuePositiveInt": 10}]}});
        let id = svc
            .create("Subscription", sub, None)
            .await
            .unwrap()
            .record
            .id;

        // first engine: handshake succeeds, events fail and stay in the outbox
        let first = engine(&svc);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(first.clone().run(async {
            let _ = stop_rx.await;
        }));
        until("active", || got.lock().unwrap().len() == 1).await;
        for name in ["restart", "other", "restart"] {
            svc.create(
                "Patient",
                json!({"resourceType": "Patient", "name": [{"family": name}]}),
                None,
            )
            .await
            .unwrap();
        }
        let store = svc.unguarded_store().clone();
        until("two events recorded and a failed attempt", || {
            let st = futures_lite(state::read::<SubState>(
                store.as_ref(),
                &state::state_id(&id),
            ));
            st.value.count == 2 && st.value.failures > 0
        })
        .await;
        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(got.lock().unwrap().len(), 1, "only the handshake arrived");

        // a new engine (a restarted server) delivers both, once the endpoint is back
        failing.store(false, Ordering::SeqCst);
        let second = engine(&svc);
        let task = tokio::spawn(second.run(std::future::pending()));
        until("the backlog delivered", || got.lock().unwrap().len() >= 2).await;
        let b = got.lock().unwrap()[1].clone();
        let params = b["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .clone();
        let numbers: Vec<&str> = params
            .iter()
            .filter(|p| p["name"] == "notification-event")
            .map(|p| p["part"][0]["valueString"].as_str().unwrap())
            .collect();
        assert_eq!(
            numbers,
            ["1", "2"],
            "both events, in order, in one notification"
        );
        assert_eq!(
            b["entry"].as_array().unwrap().len(),
            3,
            "id-only entries for both"
        );
        let st = state::read::<SubState>(svc.unguarded_store().as_ref(), &state::state_id(&id))
            .await
            .unwrap();
        assert_eq!((st.value.delivered, st.value.failures), (2, 0));
        task.abort();
    }

    fn kinds(got: &Mutex<Vec<Value>>) -> Vec<(String, Vec<String>)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|b| {
                let p = b["entry"][0]["resource"]["parameter"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let kind = p
                    .iter()
                    .find(|x| x["name"] == "type")
                    .and_then(|x| x["valueCode"].as_str())
                    .unwrap_or("")
                    .to_string();
                let foci = p
                    .iter()
                    .filter(|x| x["name"] == "notification-event")
                    .filter_map(|x| {
                        x["part"][2]["valueReference"]["reference"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .collect();
                (kind, foci)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_criteria_compare_versions_and_idle_subscriptions_get_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            salus_store::sqlite::SqliteStore::open_dir(dir.path(), Default::default()).unwrap(),
        );
        let svc = FhirService::new(store, Default::default());
        let (url, got) = receiver(Arc::new(AtomicBool::new(false))).await;
        let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
            "criteria": "https://salus.dev/fhir/SubscriptionTopic/encounter-start",
            "channel": {"type": "rest-hook", "endpoint": url, "payload": "application/fhir+json",
                "extension": [{"url": crate::backport::HEARTBEAT_PERIOD, "valueUnsignedInt": 1}]}});
        svc.create("Subscription", sub, None).await.unwrap();
        let task = tokio::spawn(engine(&svc).run(std::future::pending()));
        until("the handshake", || !got.lock().unwrap().is_empty()).await;
        let enc = |status: &str| {
            json!({"resourceType": "Encounter", "id": "e1", "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
        };
        // planned: no start; to in-progress: start; in-progress again: no new start;
        // a second encounter created in progress: start
        svc.update("Encounter", "e1", enc("planned"), None)
            .await
            .unwrap();
        svc.update("Encounter", "e1", enc("in-progress"), None)
            .await
            .unwrap();
        let mut again = enc("in-progress");
        again["class"]["code"] = json!("IMP");
        svc.update("Encounter", "e1", again, None).await.unwrap();
        let mut other = enc("in-progress");
        other["id"] = json!("e2");
        svc.update("Encounter", "e2", other, None).await.unwrap();
        until("two starts and a heartbeat", || {
            let k = kinds(&got);
            k.iter().filter(|(t, _)| t == "event-notification").count() >= 2
                && k.iter().any(|(t, _)| t == "heartbeat")
        })
        .await;
        let foci: Vec<String> = kinds(&got)
            .into_iter()
            .filter(|(t, _)| t == "event-notification")
            .flat_map(|(_, f)| f)
            .collect();
        assert_eq!(
            foci,
            [
                "http://localhost:8080/Encounter/e1/_history/2",
                "http://localhost:8080/Encounter/e2/_history/1"
            ]
        );
        task.abort();
    }

    /// Block on a future from a sync closure (the test polls state in `until`).
    fn futures_lite<T>(
        f: impl std::future::Future<Output = Result<T, salus_store::StoreError>>,
    ) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).unwrap()
    }
}
