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
pub(crate) mod log;
pub(crate) mod signing;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod token;
