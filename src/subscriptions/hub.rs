//! The running side of subscriptions: the log, the keys, the hook on
//! appends, wake events, webhook deliveries, and the lease sweeper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::client::WebhookClient;
use super::log::{ChangeError, Log};
use super::signing::SigningKey;
use super::state::{Appended, Delivery, Op, Refusal, Subscription};
use super::target::{check_url, Rejected};
use super::token::{Claims, TokenKey};
use super::SubscriptionOptions;
use crate::engine::{now_ms, AppendObserver, AppendRequest, BodyType, Engine, Key, StreamError};
use crate::protocol::Offset;

/// How long a webhook delivery may take, connection to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once.
const MAX_DELIVERIES: usize = 64;
/// How often leases and retries are looked at.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long a retry may be overdue before an instance other than the one
/// that scheduled it makes it.
const RETRY_TAKEOVER: Duration = Duration::from_secs(30);
/// How long a callback or claim token is valid.
const TOKEN_SECONDS: u64 = 3600;

/// The subscriptions of one service.
pub(crate) struct Hub {
    engine: Arc<Engine>,
    log: tokio::sync::OnceCell<Log>,
    /// The seed the host gave, if any.
    seed: Option<[u8; 32]>,
    /// The keys, once the log is open (from the host's seed, or the one
    /// recorded in the log).
    keys: std::sync::OnceLock<Keys>,
    allow_development: bool,
    /// This instance's name in the retry schedules it writes.
    instance: String,
    /// The most existing streams a new pattern may link.
    max_backfill: usize,
    /// The log length that sets off a compaction.
    compact_after: u64,
    client: WebhookClient,
    shutdown: CancellationToken,
    /// Append hook tasks running, and their signal when one ends.
    hooks: std::sync::atomic::AtomicUsize,
    hooks_done: tokio::sync::Notify,
    /// With shared storage, the appends this instance took that no
    /// subscription it knew of wanted, kept a few seconds: a subscription
    /// made on another instance just before may not have reached this one
    /// yet, and they are looked at again when it does.
    recent: Mutex<std::collections::VecDeque<Recent>>,
    /// The log version `recent` was last looked at against.
    replayed: std::sync::atomic::AtomicU64,
    /// Whether the background tasks run (cleared when their runtime drops
    /// them, so that the next request starts them on its own runtime).
    running: Arc<std::sync::atomic::AtomicBool>,
    deliveries: Arc<Semaphore>,
    /// Deliveries running here, by (subscription, generation).
    delivering: Mutex<HashSet<(String, u64)>>,
    me: Weak<Hub>,
}

/// Webhook signing and the tokens derived from the same seed.
struct Keys {
    signing: SigningKey,
    tokens: TokenKey,
}

impl Keys {
    fn from_seed(seed: &[u8; 32]) -> Keys {
        Keys {
            signing: SigningKey::from_seed(seed),
            tokens: TokenKey::derive(seed),
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("kid", &self.keys.get().map(|k| k.signing.kid()))
            .finish_non_exhaustive()
    }
}

/// Why a subscription request was refused.
#[derive(Debug)]
pub(crate) enum HubError {
    Refused(Refusal),
    Rejected(Rejected),
    Token(super::token::TokenError),
    Stream(StreamError),
}

impl From<ChangeError> for HubError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Refused(r) => HubError::Refused(r),
            ChangeError::Stream(e) => HubError::Stream(e),
        }
    }
}

impl From<StreamError> for HubError {
    fn from(e: StreamError) -> Self {
        HubError::Stream(e)
    }
}

impl From<Refusal> for HubError {
    fn from(r: Refusal) -> Self {
        HubError::Refused(r)
    }
}

fn wake_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_le_bytes()[..12]
            .try_into()
            .unwrap_or_default();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("w_{hex}")
}

/// The stream key of a name relative to the root.
fn key_of(path: &str) -> Key {
    Key::trusted(format!("/{path}"))
}

/// The offset text of a position.
pub(crate) fn offset(position: u64) -> String {
    Offset::new(position).to_string()
}

impl Hub {
    /// A hub over `engine`; its background work stops with `shutdown`.
    pub(crate) fn new(
        engine: Arc<Engine>,
        options: &SubscriptionOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Hub>> {
        let client = WebhookClient::new(&options.webhook_roots)?;
        let hub = Arc::new_cyclic(|me| Hub {
            engine: engine.clone(),
            log: tokio::sync::OnceCell::new(),
            seed: options.signing_seed,
            keys: std::sync::OnceLock::new(),
            allow_development: options.allow_development_webhooks,
            instance: wake_id().replacen("w_", "i_", 1),
            max_backfill: options.max_backfill_streams,
            compact_after: options.compact_log_after_bytes,
            client,
            shutdown,
            running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            recent: Mutex::new(std::collections::VecDeque::new()),
            replayed: std::sync::atomic::AtomicU64::new(0),
            hooks: std::sync::atomic::AtomicUsize::new(0),
            hooks_done: tokio::sync::Notify::new(),
            deliveries: Arc::new(Semaphore::new(MAX_DELIVERIES)),
            delivering: Mutex::new(HashSet::new()),
            me: me.clone(),
        });
        engine.observe(Arc::new(Observer(Arc::downgrade(&hub))));
        Ok(hub)
    }

    /// The log, opened (and the background tasks started) on first use.
    pub(crate) async fn log(&self) -> Result<&Log, StreamError> {
        let log = self
            .log
            .get_or_try_init(|| async {
                let log =
                    Log::open_compacting_after(self.engine.clone(), self.compact_after).await?;
                if self.keys.get().is_none() {
                    let keys = self.establish_keys(&log).await?;
                    let _ = self.keys.set(keys);
                }
                Ok::<Log, StreamError>(log)
            })
            .await?;
        self.ensure_running();
        Ok(log)
    }

    /// Starts the follower and the sweeper on the current runtime unless
    /// they run: at first use, and again if the runtime that ran them was
    /// shut down while the service lives on.
    fn ensure_running(&self) {
        if self.running.load(Ordering::Acquire) || self.shutdown.is_cancelled() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, shutdown) = (self.me.clone(), self.shutdown.clone());
        let running = Running(self.running.clone());
        runtime.spawn(async move {
            // They stop on shutdown or when the hub is dropped; the flag
            // clears once both have, or when their runtime drops them.
            let _running = running;
            tokio::join!(
                Hub::follow(me.clone(), shutdown.clone()),
                Hub::sweep(me, shutdown)
            );
        });
    }

    /// The keys: from the host's seed, or else the seed recorded in the log,
    /// recording a new one if there is none yet (the first instance to
    /// record one wins the version race; the others adopt it).
    async fn establish_keys(&self, log: &Log) -> Result<Keys, StreamError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if let Some(seed) = &self.seed {
            return Ok(Keys::from_seed(seed));
        }
        let fresh = SigningKey::generate().map_err(crate::storage::StorageError::Io)?;
        let fresh = b64.encode(fresh.seed());
        log.change(|subs| Ok((subs.keep_signing_seed(&fresh), ())))
            .await
            .map_err(|e| match e {
                ChangeError::Stream(e) => e,
                ChangeError::Refused(r) => {
                    StreamError::Storage(crate::storage::StorageError::Corrupt(format!("{r:?}")))
                }
            })?;
        let stored = log
            .read(|subs| subs.signing_seed().map(str::to_owned))
            .await?
            .unwrap_or(fresh);
        let seed: [u8; 32] = b64
            .decode(stored.as_bytes())
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                StreamError::Storage(crate::storage::StorageError::Corrupt(
                    "the subscription log's signing key is not a 32-byte seed".to_owned(),
                ))
            })?;
        Ok(Keys::from_seed(&seed))
    }

    /// The keys, opening the log first if needed.
    async fn keys(&self) -> Result<&Keys, StreamError> {
        self.log().await?;
        self.opened_keys()
    }

    /// The keys, once the log is open.
    fn opened_keys(&self) -> Result<&Keys, StreamError> {
        self.keys.get().ok_or_else(|| {
            StreamError::Unavailable(crate::storage::StorageError::Unavailable(
                "the subscription signing key is not loaded yet".into(),
            ))
        })
    }

    /// The key set served at `__ds/jwks.json`.
    pub(crate) async fn jwks(&self) -> Result<Vec<u8>, StreamError> {
        let keys = self.keys().await?;
        Ok(super::signing::jwks(&[&keys.signing]))
    }

    /// The signing key's id (empty before the log is open).
    pub(crate) fn kid(&self) -> &str {
        self.keys.get().map_or("", |k| k.signing.kid())
    }

    /// The log, once [`log`](Self::log) has opened it (what the background
    /// work uses: it only runs after that).
    fn opened(&self) -> Result<&Log, StreamError> {
        self.log.get().ok_or_else(|| {
            StreamError::Unavailable(crate::storage::StorageError::Unavailable(
                "the subscription log is not open yet".into(),
            ))
        })
    }

    /// Folds the log whenever it grows (other instances' changes), so the
    /// state the append hook looks at stays current; after a compaction it
    /// watches the new log. Holds the hub only while it works, so that
    /// dropping the service ends it.
    async fn follow(me: Weak<Hub>, shutdown: CancellationToken) {
        let mut watching: Option<(Key, tokio::sync::watch::Receiver<crate::engine::View>)> = None;
        loop {
            {
                let Some(hub) = me.upgrade() else { return };
                let Ok(log) = hub.opened() else { return };
                if let Err(e) = log.read(|_| ()).await {
                    tracing::warn!(error = %e, "the subscription log could not be read");
                }
                hub.look_at_recent(log);
                let key = log.current_key();
                if watching.as_ref().is_none_or(|(k, _)| *k != key) {
                    watching = match hub.engine.subscribe(&key).await {
                        Ok(rx) => Some((key, rx)),
                        Err(e) => {
                            tracing::warn!(error = %e, "the subscription log cannot be watched");
                            None
                        }
                    };
                }
            }
            let Some((_, rx)) = watching.as_mut() else {
                // Looked at again shortly (the sweeper covers wakes meanwhile).
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    // The log was compacted and deleted: follow the next one
                    // (after a pause, should the watch keep failing).
                    watching = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Ends leases that ran out and retries failed deliveries that are due;
    /// holds the hub only while it works.
    async fn sweep(me: Weak<Hub>, shutdown: CancellationToken) {
        /// Idle subscriptions are looked at every this many sweeps (their
        /// tails are read from storage).
        const IDLE_EVERY: u64 = 8;
        let mut rounds = 0u64;
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let Some(hub) = me.upgrade() else { return };
            rounds += 1;
            if let Err(e) = hub.sweep_once(rounds.is_multiple_of(IDLE_EVERY)).await {
                tracing::warn!(error = ?e, "subscription sweep failed");
            }
        }
    }

    async fn sweep_once(&self, look_for_idle_work: bool) -> Result<(), HubError> {
        let log = self.opened()?;
        let now = now_ms();
        // A first look without waiting on the log: most sweeps find nothing.
        let (expired, due, idle) = log.peek(|subs| {
            let mut expired = Vec::new();
            let mut due = Vec::new();
            let mut idle = Vec::new();
            for sub in subs.iter() {
                match &sub.wake {
                    Some(_)
                        if sub
                            .retry
                            .as_ref()
                            .is_some_and(|r| self.retry_is_mine(r, now)) =>
                    {
                        due.push((sub.id.clone(), sub.generation));
                    }
                    Some(_) if sub.lease_over(now) => expired.push(sub.id.clone()),
                    Some(_) => {}
                    None if look_for_idle_work && !sub.links.is_empty() => {
                        idle.push(sub.id.clone());
                    }
                    None => {}
                }
            }
            (expired, due, idle)
        });
        if !expired.is_empty() {
            let tails = self.tails_for(&expired).await?;
            let (_, ops) = log
                .change(|subs| Ok((subs.expired(now, |p| tails.get(p).copied(), wake_id), ())))
                .await?;
            self.effects(&ops).await;
        }
        // Work that no wake covers (a wake an instance decided against on a
        // state that was about to change): wake it.
        if !idle.is_empty() {
            let tails = self.tails_for(&idle).await?;
            let pending: Vec<String> = log.peek(|subs| {
                idle.iter()
                    .filter(|id| {
                        !subs
                            .rewake_idle(id, now, |p| tails.get(p).copied(), String::new)
                            .is_empty()
                    })
                    .cloned()
                    .collect()
            });
            for id in pending {
                self.look_again(&id).await;
            }
        }
        for (id, generation) in due {
            if self.take_retry(log, &id, generation, now).await {
                self.spawn_delivery(id, generation);
            }
        }
        Ok(())
    }

    /// Whether this instance makes the retry now: it is due, and this
    /// instance scheduled it, or the one that did has left it overdue (it
    /// stopped, say) for [`RETRY_TAKEOVER`].
    fn retry_is_mine(&self, retry: &super::state::Retry, now: u64) -> bool {
        let takeover = u64::try_from(RETRY_TAKEOVER.as_millis()).unwrap_or(u64::MAX);
        match &retry.by {
            _ if retry.at_ms > now => false,
            Some(by) if *by != self.instance => retry.at_ms.saturating_add(takeover) <= now,
            _ => true,
        }
    }

    /// Whether this instance makes `id`'s due retry: its own at once;
    /// another instance's overdue one only after recording that it took it
    /// over (the version race lets one instance do that, so the others do
    /// not all send it).
    async fn take_retry(&self, log: &Log, id: &str, generation: u64, now: u64) -> bool {
        let mine = log.peek(|subs| {
            subs.get(id)
                .and_then(|s| s.retry.as_ref())
                .is_some_and(|r| r.by.as_deref().is_none_or(|by| by == self.instance))
        });
        if mine {
            return true;
        }
        let taken = log
            .change(|subs| {
                let overdue = subs
                    .get(id)
                    .filter(|s| s.generation == generation && s.wake.is_some())
                    .and_then(|s| s.retry.as_ref())
                    .filter(|r| r.by.as_deref() != Some(&self.instance))
                    .filter(|r| self.retry_is_mine(r, now));
                let ops = overdue.map_or_else(Vec::new, |r| {
                    vec![Op::Retry {
                        id: id.to_owned(),
                        generation,
                        attempt: r.attempt,
                        at_ms: now,
                        by: Some(self.instance.clone()),
                    }]
                });
                Ok((ops, ()))
            })
            .await;
        matches!(taken, Ok((_, ops)) if !ops.is_empty())
    }

    /// The current tails of every stream linked to the subscriptions `ids`.
    async fn tails_for(&self, ids: &[String]) -> Result<HashMap<String, u64>, HubError> {
        let paths = self.linked_paths(ids).await?;
        Ok(tails_only(self.found(paths).await?))
    }

    /// The streams linked to the subscriptions `ids`.
    async fn linked_paths(&self, ids: &[String]) -> Result<Vec<String>, HubError> {
        let log = self.opened()?;
        Ok(log
            .read(|subs| {
                ids.iter()
                    .filter_map(|id| subs.get(id))
                    .flat_map(|s| s.links.keys().cloned())
                    .collect()
            })
            .await?)
    }

    /// The tails and incarnations of the streams that exist among `paths`.
    async fn found(
        &self,
        paths: impl IntoIterator<Item = String>,
    ) -> Result<HashMap<String, (u64, u64)>, StreamError> {
        let mut paths: Vec<String> = paths.into_iter().collect();
        paths.sort_unstable();
        paths.dedup();
        let keys: Vec<Key> = paths.iter().map(|p| key_of(p)).collect();
        let tails = self.engine.tails(&keys).await?;
        Ok(paths
            .into_iter()
            .zip(tails)
            .filter_map(|(path, tail)| Some((path, tail?)))
            .collect())
    }

    /// `PUT`: whether it was created, and the subscription.
    pub(crate) async fn put(
        &self,
        id: &str,
        config: super::state::Config,
        base_url: Option<String>,
    ) -> Result<(bool, Subscription), HubError> {
        let log = self.log().await?;
        let existing = log
            .read(|subs| subs.get(id).map(|s| s.config.clone()))
            .await?;
        // The URL is checked when the subscription is made, after the
        // identical-configuration check (a re-confirmation is answered as is).
        if existing.as_ref() != Some(&config) {
            if let Delivery::Webhook { url } = &config.delivery {
                check_url(url, self.allow_development).map_err(HubError::Rejected)?;
            }
        }
        // Named streams that exist, and those the pattern matches, are linked
        // at their tail (nothing before the subscription is delivered); named
        // streams that do not exist yet at 0.
        let mut paths = config.streams.clone();
        if existing.is_none() {
            paths.extend(self.backfill(&config).await?);
        }
        let existing: Vec<(String, u64, u64)> = self
            .found(paths)
            .await?
            .into_iter()
            .map(|(path, (tail, stream))| (path, tail, stream))
            .collect();
        let now = now_ms();
        let (created, _) = log
            .change(|subs| subs.create(id, config.clone(), now, &existing, base_url.clone()))
            .await?;
        let sub = self.get(id).await?;
        Ok((created, sub))
    }

    /// The existing streams a new subscription's pattern matches (relative
    /// to the root), at most `max_backfill_streams` of them.
    async fn backfill(&self, config: &super::state::Config) -> Result<Vec<String>, HubError> {
        let Some(pattern) = config.pattern.as_deref() else {
            return Ok(Vec::new());
        };
        let pattern = super::glob::Pattern::parse(pattern)
            .map_err(|e| HubError::Refused(Refusal::Invalid(e.to_string())))?;
        let prefix = format!("/{}", pattern.name_prefix());
        // Matches are a subset of the names under the prefix: list a few
        // more than the limit before giving up on the prefix alone.
        let mut matches = Vec::new();
        let (keys, more) = self
            .engine
            .list(&prefix, self.max_backfill.saturating_mul(4).min(1 << 24))
            .await?;
        for key in keys {
            let path = key.as_str().trim_start_matches('/');
            if !path.starts_with("__ds/") && pattern.matches(path) {
                matches.push(path.to_owned());
            }
        }
        if more {
            return Err(HubError::Refused(Refusal::Invalid(format!(
                "more than {} existing streams are under the pattern's literal prefix \
                 {prefix:?} (the listing stops there, at four times the server's \
                 max_backfill_streams); start the pattern with more literal segments, \
                 or name the streams",
                self.max_backfill.saturating_mul(4).min(1 << 24)
            ))));
        }
        if matches.len() > self.max_backfill {
            return Err(HubError::Refused(Refusal::Invalid(format!(
                "the pattern matches more than {} existing streams (the server's \
                 max_backfill_streams); narrow it, or name the streams",
                self.max_backfill
            ))));
        }
        Ok(matches)
    }

    /// `GET`.
    pub(crate) async fn get(&self, id: &str) -> Result<Subscription, HubError> {
        let log = self.log().await?;
        log.read(|subs| subs.get(id).cloned())
            .await?
            .ok_or(HubError::Refused(Refusal::NotFound))
    }

    /// `DELETE`.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), HubError> {
        let log = self.log().await?;
        log.change(|subs| Ok((subs.delete(id), ()))).await?;
        Ok(())
    }

    /// `POST .../streams`.
    pub(crate) async fn add_streams(&self, id: &str, paths: &[String]) -> Result<(), HubError> {
        let log = self.log().await?;
        let found = self.found(paths.iter().cloned()).await?;
        log.change(|subs| Ok((subs.add_streams(id, paths, |p| found.get(p).copied())?, ())))
            .await?;
        Ok(())
    }

    /// `DELETE .../streams/:path`.
    pub(crate) async fn remove_stream(&self, id: &str, path: &str) -> Result<(), HubError> {
        let log = self.log().await?;
        log.change(|subs| Ok((subs.remove_stream(id, path)?, ())))
            .await?;
        Ok(())
    }

    /// `POST .../claim`: the wake, its token and its streams.
    pub(crate) async fn claim(
        &self,
        id: &str,
        worker: &str,
    ) -> Result<(Subscription, String, HashMap<String, u64>), HubError> {
        let log = self.log().await?;
        // Appends this instance took just before may still be linking their
        // streams: a claim should find their work.
        self.hooks_settled().await;
        let tails = self.tails_for(&[id.to_owned()]).await?;
        let now = now_ms();
        let (_, ops) = log
            .change(|subs| {
                Ok((
                    subs.claim(id, worker, now, |p| tails.get(p).copied(), wake_id)?,
                    (),
                ))
            })
            .await?;
        self.effects(&ops).await;
        let sub = self.get(id).await?;
        let token = self.token(id, sub.generation);
        Ok((sub, token, tails))
    }

    /// Once the log has moved on, looks at the recent unwanted appends again
    /// and decides those that a subscription now wants.
    fn look_at_recent(&self, log: &Log) {
        let version = log.version();
        if self.replayed.swap(version, Ordering::AcqRel) == version {
            return;
        }
        let wanted: Vec<Recent> = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let cutoff = std::time::Instant::now().checked_sub(RECENT_FOR);
            recent.retain(|r| cutoff.is_none_or(|c| r.at >= c));
            let (wanted, rest): (Vec<Recent>, Vec<Recent>) = recent
                .drain(..)
                .partition(|r| log.peek(|subs| !subs.interested(&r.path).is_empty()));
            recent.extend(rest);
            wanted
        };
        // One decision per stream (from its earliest append's start to its
        // latest's end), and none where every subscription that wants it
        // has nothing to do with it (a back-fill has just linked it past
        // these appends, say): each decision reads all the tails it links.
        let mut streams: HashMap<(String, u64), (u64, u64)> = HashMap::new();
        for r in wanted {
            streams
                .entry((r.path, r.stream))
                .and_modify(|(before, after)| {
                    *before = (*before).min(r.before);
                    *after = (*after).max(r.after);
                })
                .or_insert((r.before, r.after));
        }
        for ((path, stream), (before, after)) in streams {
            if log.peek(|subs| needs_decision(subs, &path, stream, Some(after))) {
                self.spawn_on_append(path, stream, before, after);
            }
        }
    }

    /// Decides an append off the writer's path.
    fn spawn_on_append(&self, path: String, stream: u64, before: u64, after: u64) {
        let Some(hub) = self.me.upgrade() else { return };
        hub.hooks.fetch_add(1, Ordering::AcqRel);
        // Counted down however the task ends, even if its runtime drops it
        // before it first runs.
        let counted = HookRunning(hub.clone());
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = hub.on_append(path, stream, before, after).await {
                tracing::warn!(error = ?e, "a subscription wake could not be decided");
            }
        });
    }

    /// Waits (briefly) until the append hook's tasks running now are done.
    async fn hooks_settled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.hooks.load(Ordering::Acquire) > 0 {
            let settled = self.hooks_done.notified();
            if self.hooks.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return;
            }
        }
    }

    /// A token for the holder of `id`'s wake `generation`.
    pub(crate) fn token(&self, id: &str, generation: u64) -> String {
        let Ok(keys) = self.opened_keys() else {
            return String::new();
        };
        keys.tokens.issue(&Claims {
            subscription: id.to_owned(),
            generation,
            exp: now_ms() / 1000 + TOKEN_SECONDS,
        })
    }

    /// Checks a bearer token for `id`: the generation it was issued for.
    pub(crate) async fn check_token(
        &self,
        id: &str,
        authorization: Option<&str>,
    ) -> Result<u64, HubError> {
        let token = super::token::bearer(authorization).map_err(HubError::Token)?;
        let keys = self.keys().await?;
        let claims = keys
            .tokens
            .check(token, id, now_ms() / 1000)
            .map_err(HubError::Token)?;
        Ok(claims.generation)
    }

    /// A callback or an ack: whether a new wake follows.
    pub(crate) async fn report(
        &self,
        id: &str,
        report: &super::state::Report,
    ) -> Result<bool, HubError> {
        self.holder_reports(id, report, false).await
    }

    /// What a wake's holder reports: a callback or an ack, or (`release`)
    /// giving the wake back. Whether a new wake follows.
    async fn holder_reports(
        &self,
        id: &str,
        report: &super::state::Report,
        release: bool,
    ) -> Result<bool, HubError> {
        let log = self.log().await?;
        let tails = self.tails_for(&[id.to_owned()]).await?;
        let now = now_ms();
        let (again, ops) = log
            .change(|subs| {
                let tails = |p: &str| tails.get(p).copied();
                if release {
                    subs.release(id, report, now, tails, wake_id)
                } else {
                    subs.report(id, report, now, tails, wake_id)
                }
            })
            .await?;
        self.effects(&ops).await;
        if (release || report.done) && !again {
            self.look_again(id).await;
        }
        Ok(again)
    }

    /// Wakes `id` if it is idle with work pending by the tails read now: after
    /// a wake ended with nothing pending by the tails read before it ended
    /// (an append in between saw the wake still out and left it to this), and
    /// for the sweeper's idle subscriptions.
    async fn look_again(&self, id: &str) {
        let Ok(log) = self.opened() else { return };
        let Ok(tails) = self.tails_for(&[id.to_owned()]).await else {
            return;
        };
        let now = now_ms();
        let decided = log
            .change(|subs| {
                Ok((
                    subs.rewake_idle(id, now, |p| tails.get(p).copied(), wake_id),
                    (),
                ))
            })
            .await;
        match decided {
            Ok((_, ops)) => self.effects(&ops).await,
            Err(e) => {
                tracing::warn!(subscription = %id, error = ?e, "a second look for work failed")
            }
        }
    }

    /// `POST .../release`.
    pub(crate) async fn release(
        &self,
        id: &str,
        report: &super::state::Report,
    ) -> Result<(), HubError> {
        self.holder_reports(id, report, true).await.map(drop)
    }

    /// An append to `path` (relative to the root) moved its tail.
    async fn on_append(
        &self,
        path: String,
        stream: u64,
        before: u64,
        after: u64,
    ) -> Result<(), HubError> {
        let log = self.opened()?;
        let ids: Vec<String> = log
            .read(|subs| {
                subs.interested(&path)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        // The appended stream is read with the linked ones, in one batch.
        let mut paths = self.linked_paths(&ids).await?;
        paths.push(path.clone());
        let found = self.found(paths).await?;
        // An append to an incarnation that has since been deleted (and maybe
        // created again) is nobody's work any more: deciding it now would
        // move the new incarnation's cursor.
        if found.get(&path).is_none_or(|(_, id)| *id != stream) {
            return Ok(());
        }
        let mut tails = tails_only(found);
        let tail = tails.entry(path.clone()).or_insert(after);
        *tail = (*tail).max(after);
        let now = now_ms();
        let (_, ops) = log
            .change(|subs| {
                Ok((
                    subs.appended(
                        &Appended {
                            path: &path,
                            stream,
                            before,
                            after,
                        },
                        now,
                        |p| tails.get(p).copied(),
                        wake_id,
                    ),
                    (),
                ))
            })
            .await?;
        self.effects(&ops).await;
        Ok(())
    }

    /// What recorded operations set off: a wake event for a pull-wake
    /// subscription, a delivery for a webhook.
    async fn effects(&self, ops: &[Op]) {
        for op in ops {
            let Op::Wake {
                id,
                generation,
                snapshot,
                ..
            } = op
            else {
                continue;
            };
            let Ok(log) = self.opened() else { return };
            let Ok(Some(sub)) = log.read(|subs| subs.get(id).cloned()).await else {
                continue;
            };
            match &sub.config.delivery {
                Delivery::PullWake { wake_stream } => {
                    let event = serde_json::json!({
                        "type": "wake",
                        "subscription_id": id,
                        "stream": snapshot.keys().next(),
                        "generation": generation,
                        "ts": now_ms(),
                    });
                    let request = AppendRequest {
                        content_type: BodyType::Stream,
                        body: Bytes::from(event.to_string()),
                        ..AppendRequest::default()
                    };
                    if let Err(e) = self.engine.append(&key_of(wake_stream), request).await {
                        tracing::warn!(subscription = %id, wake_stream = %wake_stream, error = %e,
                            "the wake event could not be written; a claim still finds the work");
                    }
                }
                Delivery::Webhook { .. } => self.spawn_delivery(id.clone(), *generation),
            }
        }
    }

    fn spawn_delivery(&self, id: String, generation: u64) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut running = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
            if !running.insert((id.clone(), generation)) {
                return;
            }
        }
        // Taken off the running set however the task ends, even if its
        // runtime drops it before it first runs.
        let running = DeliveryRunning(me.clone(), (id.clone(), generation));
        tokio::spawn(async move {
            let _running = running;
            let result = me.deliver(&id, generation).await;
            if let Err(e) = result {
                tracing::warn!(subscription = %id, generation, error = ?e, "webhook delivery failed");
            }
        });
    }

    /// Sends wake `generation` of `id` to its webhook: `{"done": true}`
    /// acknowledges the wake's snapshot; a failure schedules a retry.
    async fn deliver(&self, id: &str, generation: u64) -> Result<(), HubError> {
        let _permit = self.deliveries.clone().acquire_owned().await.ok();
        let log = self.opened()?;
        let sub = match log.read(|subs| subs.get(id).cloned()).await? {
            Some(sub) if sub.generation == generation && sub.wake.is_some() => sub,
            _ => return Ok(()),
        };
        let Delivery::Webhook { url } = &sub.config.delivery else {
            return Ok(());
        };
        let body = self.wake_body(&sub);
        let signature = self
            .opened_keys()?
            .signing
            .signature_header(now_ms() / 1000, &body);
        let attempt = sub.retry.as_ref().map_or(0, |r| r.attempt);
        // A URL refused now (the settings changed since it was accepted) is
        // a failed attempt like any other: retried with back-off, not at
        // every sweep.
        let answer = match check_url(url, self.allow_development) {
            Ok(target) => {
                let post = self.client.post(&target, body, signature);
                tokio::time::timeout(DELIVERY_TIMEOUT, post).await
            }
            Err(rejected) => Ok(Err(rejected.to_string())),
        };
        let done = match answer {
            Ok(Ok((status, answer))) if status.is_success() => {
                let done = serde_json::from_slice::<serde_json::Value>(&answer)
                    .is_ok_and(|v| v.get("done") == Some(&serde_json::Value::Bool(true)));
                if !done && sub.retry.is_some() {
                    // Taken at last: the wake now waits for its callback,
                    // under a lease that starts now.
                    let lease_until_ms = Some(now_ms() + sub.config.lease_ttl_ms);
                    log.change(|_| {
                        Ok((
                            vec![Op::Delivered {
                                id: id.to_owned(),
                                generation,
                                lease_until_ms,
                            }],
                            (),
                        ))
                    })
                    .await?;
                }
                done
            }
            failed => {
                let why = match failed {
                    Ok(Ok((status, _))) => format!("answered {status}"),
                    Ok(Err(e)) => e,
                    Err(_) => "timed out".to_owned(),
                };
                let next = attempt + 1;
                let delay = backoff(next);
                tracing::info!(subscription = %id, generation, attempt = next, why = %why,
                    retry_in_ms = delay, "webhook delivery failed; will retry");
                let at = now_ms() + delay;
                log.change(|subs| {
                    let open = subs
                        .get(id)
                        .is_some_and(|s| s.generation == generation && s.wake.is_some());
                    let ops = if open {
                        vec![Op::Retry {
                            id: id.to_owned(),
                            generation,
                            attempt: next,
                            at_ms: at,
                            by: Some(self.instance.clone()),
                        }]
                    } else {
                        Vec::new()
                    };
                    Ok((ops, ()))
                })
                .await?;
                return Ok(());
            }
        };
        if done {
            let tails = self.tails_for(&[id.to_owned()]).await?;
            let now = now_ms();
            let result = log
                .change(|subs| {
                    subs.delivered(id, generation, now, |p| tails.get(p).copied(), wake_id)
                })
                .await;
            match result {
                Ok((again, ops)) => {
                    self.effects(&ops).await;
                    if !again {
                        self.look_again(id).await;
                    }
                }
                // Acknowledged meanwhile by a callback, or the lease ran out.
                Err(ChangeError::Refused(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The JSON body of a webhook delivery.
    fn wake_body(&self, sub: &Subscription) -> Bytes {
        let Some(wake) = &sub.wake else {
            return Bytes::new();
        };
        // The wake's snapshot gives the tails: what `done` acknowledges.
        let streams = Hub::streams_json(sub, &HashMap::new());
        let callback_url = sub
            .base_url
            .as_deref()
            .map(|base| format!("{base}/__ds/subscriptions/{}/callback", sub.id));
        let body = serde_json::json!({
            "subscription_id": sub.id,
            "wake_id": wake.id,
            "generation": sub.generation,
            "streams": streams,
            "callback_url": callback_url,
            "callback_token": self.token(&sub.id, sub.generation),
        });
        Bytes::from(body.to_string())
    }

    /// The tails of the streams a wake's body shows, for a claim's answer.
    pub(crate) fn streams_json(
        sub: &Subscription,
        tails: &HashMap<String, u64>,
    ) -> Vec<serde_json::Value> {
        let snapshot: BTreeMap<String, u64> = sub
            .wake
            .as_ref()
            .map(|w| w.snapshot.clone())
            .unwrap_or_default();
        sub.links
            .iter()
            .map(|(path, link)| {
                let tail = snapshot
                    .get(path)
                    .or_else(|| tails.get(path))
                    .copied()
                    .unwrap_or(link.acked)
                    .max(link.acked);
                serde_json::json!({
                    "path": path,
                    "link_type": if link.explicit { "explicit" } else { "glob" },
                    "acked_offset": offset(link.acked),
                    "tail_offset": offset(tail),
                    "has_pending": tail > link.acked,
                })
            })
            .collect()
    }
}

/// The tails of [`Hub::found`]'s answer, without the incarnations.
fn tails_only(found: HashMap<String, (u64, u64)>) -> HashMap<String, u64> {
    found
        .into_iter()
        .map(|(path, (tail, _))| (path, tail))
        .collect()
}

/// Whether an append to `path` (incarnation `stream`, ending at `after` if
/// known) may change what a subscription does: one that wants the stream
/// has not linked it, or linked another incarnation, or is idle with the
/// append past its cursor. The rest (a linked stream whose wake is already
/// out) is left to whatever ends the wake, which reads the tails again.
fn needs_decision(
    subs: &super::state::Subscriptions,
    path: &str,
    stream: u64,
    after: Option<u64>,
) -> bool {
    subs.interested(path).into_iter().any(|id| {
        subs.get(id).is_some_and(|sub| match sub.links.get(path) {
            None => true,
            Some(link) if link.stream.is_some_and(|s| s != stream) => true,
            Some(link) => {
                sub.wake.is_none() && sub.retry.is_none() && after.is_none_or(|a| a > link.acked)
            }
        })
    })
}

/// Counts an append hook task down when dropped.
struct HookRunning(Arc<Hub>);

impl Drop for HookRunning {
    fn drop(&mut self) {
        self.0.hooks.fetch_sub(1, Ordering::AcqRel);
        self.0.hooks_done.notify_waiters();
    }
}

/// Takes a delivery off the running set when dropped.
struct DeliveryRunning(Arc<Hub>, (String, u64));

impl Drop for DeliveryRunning {
    fn drop(&mut self) {
        self.0
            .delivering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Clears its flag when dropped: with the task that holds it.
struct Running(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// An append no known subscription wanted (see [`Hub::recent`]).
#[derive(Debug)]
struct Recent {
    at: std::time::Instant,
    path: String,
    stream: u64,
    before: u64,
    after: u64,
}

/// How long, and how many, unwanted appends are kept for a second look.
const RECENT_FOR: Duration = Duration::from_secs(5);
const RECENT_MAX: usize = 4096;

/// Retry delay for attempt `n` (1, 2, ...): 1 s doubling to 60 s, ±20 %.
fn backoff(n: u32) -> u64 {
    let base = 1_000u64
        .saturating_mul(1 << n.saturating_sub(1).min(6))
        .min(60_000);
    let jitter = base / 5;
    base - jitter + fastrand::u64(0..=2 * jitter)
}

/// The engine's hook: appends to streams a subscription may care about are
/// looked at off the writer's path.
struct Observer(Weak<Hub>);

impl AppendObserver for Observer {
    fn appended(&self, key: &Key, stream: u64, before: u64, after: u64) {
        let path = key.as_str().trim_start_matches('/');
        if path.starts_with("__ds/") {
            return;
        }
        let Some(hub) = self.0.upgrade() else { return };
        if hub.log.get().is_some() {
            hub.ensure_running();
        } else {
            // Subscriptions made before a restart: open the log, then decide
            // this append against it.
            let path = path.to_owned();
            tokio::spawn(async move {
                match hub.log().await {
                    Ok(_) => hub.spawn_on_append(path, stream, before, after),
                    Err(e) => {
                        tracing::warn!(error = %e, "the subscription log could not be opened");
                    }
                }
            });
            return;
        }
        // The common cases end here, with a read lock and the pattern index,
        // no task and no log read: an append no subscription looks at, and
        // one to a linked stream of subscriptions whose wake is already out
        // (whatever ends the wake reads the tails again afterwards, and the
        // sweeper looks at idle subscriptions every 2 s for the rest).
        let attention = hub
            .log
            .get()
            .is_some_and(|log| log.peek(|subs| needs_decision(subs, path, stream, None)));
        if attention {
            hub.spawn_on_append(path.to_owned(), stream, before, after);
        } else if hub.engine.is_shared() {
            let mut recent = hub.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back(Recent {
                at: std::time::Instant::now(),
                path: path.to_owned(),
                stream,
                before,
                after,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;
    use crate::storage::MemoryStorage;
    use crate::subscriptions::state::Retry;

    #[tokio::test]
    async fn a_due_retry_is_made_by_its_scheduler_unless_long_overdue() {
        let storage = Arc::new(MemoryStorage::new());
        let shutdown = CancellationToken::new();
        let engine = Engine::new(storage, Limits::default(), &shutdown);
        let hub = Hub::new(engine, &SubscriptionOptions::new(), shutdown).unwrap();
        let retry = |by: Option<&str>| Retry {
            attempt: 1,
            at_ms: 1_000,
            by: by.map(str::to_owned),
        };
        let mine = retry(Some(&hub.instance));
        let theirs = retry(Some("i_other"));
        assert!(!hub.retry_is_mine(&mine, 999), "not due yet");
        assert!(hub.retry_is_mine(&mine, 1_000));
        assert!(hub.retry_is_mine(&retry(None), 1_000));
        assert!(!hub.retry_is_mine(&theirs, 1_000));
        assert!(!hub.retry_is_mine(&theirs, 30_999));
        assert!(hub.retry_is_mine(&theirs, 31_000), "taken over");
    }

    #[test]
    fn the_back_off_doubles_to_a_minute_with_a_fifth_of_jitter() {
        for (attempt, base) in [
            (1, 1_000),
            (2, 2_000),
            (6, 32_000),
            (7, 60_000),
            (40, 60_000),
        ] {
            for _ in 0..50 {
                let delay = backoff(attempt);
                assert!(
                    (base - base / 5..=base + base / 5).contains(&delay),
                    "{attempt}: {delay}"
                );
            }
        }
    }
}
