//! Building blocks of the subscription APIs (PROTOCOL.md sections 6 and 7:
//! webhooks and pull-wake workers), behind the `unstable-subscriptions`
//! feature while they are built: pattern matching with an index, the checks
//! on webhook URLs, webhook signing with its key set, callback tokens, the
//! subscription state and its rules, and the log that keeps that state in an
//! internal stream. Nothing routes to them yet; `docs/design/subscriptions.md`
//! says how the rest fits.

// Used by their own tests until the routes and the engine hook arrive.
#![allow(dead_code)]

pub(crate) mod glob;
pub(crate) mod hub;
pub(crate) mod log;
pub(crate) mod signing;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod token;

/// Settings of the subscription APIs (`unstable-subscriptions`; see
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
#[derive(Clone, Default)]
pub struct SubscriptionOptions {
    pub(crate) signing_seed: Option<[u8; 32]>,
    pub(crate) allow_development_webhooks: bool,
}

impl std::fmt::Debug for SubscriptionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionOptions")
            .field("signing_seed", &self.signing_seed.map(|_| ".."))
            .field(
                "allow_development_webhooks",
                &self.allow_development_webhooks,
            )
            .finish()
    }
}

impl SubscriptionOptions {
    /// Defaults: a signing key made at start, webhooks only to public
    /// `https` URLs.
    pub fn new() -> Self {
        SubscriptionOptions::default()
    }

    /// The Ed25519 seed webhooks are signed with. Every instance over one
    /// store needs the same one (their key sets and tokens must agree);
    /// without it each process makes its own, which suits one instance.
    pub fn signing_seed(mut self, seed: [u8; 32]) -> Self {
        self.signing_seed = Some(seed);
        self
    }

    /// Also accept `http` webhooks to `localhost` and `127.0.0.x`, which the
    /// protocol allows for development only. Off by default.
    pub fn allow_development_webhooks(mut self, allow: bool) -> Self {
        self.allow_development_webhooks = allow;
        self
    }
}
