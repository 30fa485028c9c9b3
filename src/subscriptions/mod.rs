//! The subscription APIs (PROTOCOL.md sections 6 and 7: webhooks and
//! pull-wake workers), behind the `subscriptions` feature: pattern matching
//! with an index, the checks on webhook URLs, the webhook client, signing
//! with its key set, callback tokens, the subscription state and its rules,
//! the log that keeps that state in an internal stream, and the hub that
//! runs them. `docs/design/subscriptions.md` says how they fit.

pub(crate) mod client;
pub(crate) mod glob;
pub(crate) mod hub;
pub(crate) mod log;
pub(crate) mod signing;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod token;

/// Settings of the subscription APIs (feature `subscriptions`; see
/// [`Builder::subscriptions`](crate::Builder::subscriptions)).
///
/// ```
/// use tower_durable_streams::SubscriptionOptions;
///
/// let options = SubscriptionOptions::new()
///     .signing_seed([7; 32])
///     .allow_development_webhooks(true);
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct SubscriptionOptions {
    pub(crate) signing_seed: Option<[u8; 32]>,
    pub(crate) allow_development_webhooks: bool,
    pub(crate) webhook_roots: Vec<Vec<u8>>,
    pub(crate) max_backfill_streams: usize,
    pub(crate) compact_log_after_bytes: u64,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            signing_seed: None,
            allow_development_webhooks: false,
            webhook_roots: Vec::new(),
            max_backfill_streams: 10_000,
            compact_log_after_bytes: log::COMPACT_AFTER_BYTES,
        }
    }
}

impl std::fmt::Debug for SubscriptionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionOptions")
            .field("signing_seed", &self.signing_seed.map(|_| ".."))
            .field(
                "allow_development_webhooks",
                &self.allow_development_webhooks,
            )
            .field("webhook_roots", &self.webhook_roots.len())
            .field("max_backfill_streams", &self.max_backfill_streams)
            .field("compact_log_after_bytes", &self.compact_log_after_bytes)
            .finish()
    }
}

impl SubscriptionOptions {
    /// Defaults: a signing key made once and kept in the store, webhooks
    /// only to public `https` URLs.
    pub fn new() -> Self {
        SubscriptionOptions::default()
    }

    /// The Ed25519 seed webhooks are signed with (callback tokens are
    /// signed with a key derived from it). Without it, a key is made on
    /// first use and kept in the subscription log, where every instance
    /// over the store finds it; whoever can read the store can then read
    /// the key, so a host that keeps secrets elsewhere passes the seed.
    pub fn signing_seed(mut self, seed: [u8; 32]) -> Self {
        self.signing_seed = Some(seed);
        self
    }

    /// Also accept webhooks to `localhost` and `127.0.0.x` (over `http` or
    /// `https`), which the protocol allows for development only. Off by
    /// default.
    pub fn allow_development_webhooks(mut self, allow: bool) -> Self {
        self.allow_development_webhooks = allow;
        self
    }

    /// The most existing streams a new subscription's pattern may match:
    /// they are all linked when it is made (at their tails), and every wake
    /// decision looks at each link, so a pattern over more is refused (400
    /// `INVALID_REQUEST`) and should be narrowed. So is one whose literal
    /// leading segments (the part before the first wildcard, which the
    /// listing goes by) cover more than four times as many streams.
    /// 10,000 by default.
    pub fn max_backfill_streams(mut self, max: usize) -> Self {
        self.max_backfill_streams = max;
        self
    }

    /// How long the subscription log (an internal stream holding every
    /// subscription change) may grow before it is compacted: its state is
    /// written to a new log and the old one deleted, once it is this long
    /// and four times the size of that state. 8 MiB by default.
    pub fn compact_log_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_log_after_bytes = bytes;
        self
    }

    /// Also trust this root certificate (DER) for `https` webhooks, beside
    /// the Mozilla roots built in: for receivers behind a private CA, or a
    /// test receiver's own certificate. A certificate that does not parse
    /// makes [`Builder::build`](crate::Builder::build) fail.
    ///
    /// ```
    /// use tower_durable_streams::SubscriptionOptions;
    ///
    /// # let der: Vec<u8> = Vec::new();
    /// let options = SubscriptionOptions::new().add_webhook_root_certificate(der);
    /// # let _ = options;
    /// ```
    pub fn add_webhook_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.webhook_roots.push(der.into());
        self
    }
}
