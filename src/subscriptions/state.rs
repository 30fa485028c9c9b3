//! Subscription state and the rules that change it, with no I/O.
//!
//! Every change is an [`Op`]: the decision functions of [`Subscriptions`]
//! look at the state (and at stream tails, which the caller passes in) and
//! return the operations to record; [`Subscriptions::apply`] folds recorded
//! operations into the state. Deciding and applying are apart so that the
//! operations can be written to a shared log first and applied by every
//! instance in the same order (see `docs/design/subscriptions.md`).
//!
//! Offsets here are byte positions in a stream; the HTTP layer formats them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::glob::{Pattern, PatternIndex};

/// How a subscription is told about new data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum Delivery {
    /// A signed `POST` to `url`.
    Webhook { url: String },
    /// A wake event appended to `wake_stream`; workers claim the wake.
    PullWake { wake_stream: String },
}

/// What the client asked for; two requests for one id must agree on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Config {
    pub(crate) delivery: Delivery,
    pub(crate) pattern: Option<String>,
    /// Explicit streams, sorted and without duplicates.
    pub(crate) streams: Vec<String>,
    pub(crate) lease_ttl_ms: u64,
    pub(crate) description: Option<String>,
}

/// The lease bounds the protocol sets, and its default.
pub(crate) const LEASE_TTL_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;
pub(crate) const DEFAULT_LEASE_TTL_MS: u64 = 30_000;

impl Config {
    /// Checks and normalises a configuration: explicit streams sorted and
    /// de-duplicated, the lease inside its bounds, a pattern that parses.
    pub(crate) fn new(
        delivery: Delivery,
        pattern: Option<String>,
        mut streams: Vec<String>,
        lease_ttl_ms: Option<u64>,
        description: Option<String>,
    ) -> Result<Config, Refusal> {
        if pattern.is_none() && streams.is_empty() {
            return Err(Refusal::Invalid(
                "a subscription needs a pattern, streams, or both".into(),
            ));
        }
        if let Some(p) = &pattern {
            Pattern::parse(p).map_err(|e| Refusal::Invalid(format!("pattern {p:?}: {e}")))?;
        }
        for name in &streams {
            check_name(name)?;
        }
        if let Delivery::PullWake { wake_stream } = &delivery {
            check_name(wake_stream)?;
            if streams.contains(wake_stream) {
                return Err(Refusal::Invalid(
                    "a pull-wake subscription cannot include its own wake stream".into(),
                ));
            }
        }
        let lease_ttl_ms = lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
        if !LEASE_TTL_MS.contains(&lease_ttl_ms) {
            return Err(Refusal::Invalid(format!(
                "lease_ttl_ms must be between {} and {}",
                LEASE_TTL_MS.start(),
                LEASE_TTL_MS.end()
            )));
        }
        streams.sort();
        streams.dedup();
        Ok(Config {
            delivery,
            pattern,
            streams,
            lease_ttl_ms,
            description,
        })
    }
}

/// Checks a stream name as given in a subscription: relative to the stream
/// root (no leading `/`), spelled as the stream's own path is, and not under
/// the reserved `__ds` (where the subscriptions' own log lives).
pub(crate) fn check_name(name: &str) -> Result<(), Refusal> {
    if name.starts_with('/') {
        return Err(Refusal::Invalid(format!(
            "stream {name:?}: streams are named relative to the stream root, without a leading /"
        )));
    }
    crate::engine::Key::parse(&format!("/{name}"))
        .map(drop)
        .map_err(|e| Refusal::Invalid(format!("stream {name:?}: {e}")))
}

/// Whether `path` is under the reserved prefix, which no subscription sees.
fn reserved(path: &str) -> bool {
    path == "__ds" || path.starts_with("__ds/")
}

/// One linked stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Link {
    /// Linked because it was named.
    pub(crate) explicit: bool,
    /// Linked because the pattern matches it.
    pub(crate) glob: bool,
    /// Everything before this offset is processed.
    pub(crate) acked: u64,
    /// The incarnation (storage id) of the stream the cursor is for, once
    /// known: a stream deleted and created again starts over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<u64>,
}

/// The wake in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wake {
    pub(crate) id: String,
    /// The tails of the linked streams when the wake was made: what a
    /// webhook's `{"done": true}` acknowledges.
    pub(crate) snapshot: BTreeMap<String, u64>,
    /// The worker holding a pull-wake's lease.
    pub(crate) holder: Option<String>,
    /// When the lease ends (a webhook's from the wake, a pull-wake's from
    /// the claim).
    pub(crate) lease_until_ms: Option<u64>,
}

/// A failed webhook delivery's retry schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Retry {
    /// Failed attempts so far.
    pub(crate) attempt: u32,
    /// When the next attempt is due.
    pub(crate) at_ms: u64,
    /// The instance that scheduled it, which makes the next attempt (the
    /// others only if it is long overdue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<String>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Subscription {
    pub(crate) id: String,
    pub(crate) config: Config,
    pub(crate) created_at_ms: u64,
    /// The public URL of the stream root, as the creating request saw it
    /// (for the callback URLs in webhook deliveries).
    pub(crate) base_url: Option<String>,
    pub(crate) links: BTreeMap<String, Link>,
    /// Counts wakes; a request for an older one is fenced.
    pub(crate) generation: u64,
    pub(crate) wake: Option<Wake>,
    /// A webhook delivery that failed, and when to try again (the
    /// subscription's status is `failed` meanwhile).
    pub(crate) retry: Option<Retry>,
}

impl Subscription {
    /// Streams with data past their cursor, given the streams' tails.
    fn pending(&self, tails: &impl Fn(&str) -> Option<u64>) -> BTreeMap<String, u64> {
        self.links
            .iter()
            .filter_map(|(path, link)| {
                let tail = tails(path)?;
                (tail > link.acked).then(|| (path.clone(), tail))
            })
            .collect()
    }

    fn is_pull_wake(&self) -> bool {
        matches!(self.config.delivery, Delivery::PullWake { .. })
    }

    /// Whether the wake's lease ran out by `now_ms`. A webhook wake whose
    /// delivery is being retried holds no lease: nobody has it yet, and the
    /// retry schedule (backing off to a minute) decides when it is tried
    /// again, not the lease.
    pub(crate) fn lease_over(&self, now_ms: u64) -> bool {
        self.retry.is_none()
            && self
                .wake
                .as_ref()
                .and_then(|w| w.lease_until_ms)
                .is_some_and(|until| until <= now_ms)
    }
}

/// A recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    Create {
        id: String,
        config: Config,
        created_at_ms: u64,
        /// The generation to start from (past a deleted namesake's).
        generation: u64,
        #[serde(default)]
        base_url: Option<String>,
    },
    Delete {
        id: String,
    },
    /// Adds a link, or a reason for one; an existing cursor stays.
    Link {
        id: String,
        path: String,
        explicit: bool,
        at: u64,
        /// The stream's incarnation: a link made for another one starts
        /// over at `at`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<u64>,
    },
    /// Drops the explicit reason for a link (the link stays while the
    /// pattern matches).
    Unlink {
        id: String,
        path: String,
    },
    Wake {
        id: String,
        generation: u64,
        wake_id: String,
        snapshot: BTreeMap<String, u64>,
        lease_until_ms: Option<u64>,
    },
    Claim {
        id: String,
        generation: u64,
        worker: String,
        lease_until_ms: u64,
    },
    /// Moves cursors forward and, without `finish`, extends the lease.
    Ack {
        id: String,
        generation: u64,
        acks: BTreeMap<String, u64>,
        lease_until_ms: Option<u64>,
        /// Ends the wake (done, release, or a lease that ran out).
        finish: bool,
    },
    /// A failed webhook delivery and when to try again.
    Retry {
        id: String,
        generation: u64,
        attempt: u32,
        at_ms: u64,
        /// The instance that will try again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A webhook delivery that the receiver took (2xx) after failed ones:
    /// no more retries for it, and the lease runs from now.
    Delivered {
        id: String,
        generation: u64,
        #[serde(default)]
        lease_until_ms: Option<u64>,
    },
    /// The webhook signing key's seed (base64url), for instances that were
    /// given none: the first recorded stays.
    SigningKey {
        seed: String,
    },
    /// A subscription as a whole, from a snapshot of the state.
    Restore {
        sub: Box<Subscription>,
    },
    /// A deleted subscription's last generation, from a snapshot.
    Tombstone {
        id: String,
        generation: u64,
    },
}

/// Why a request was refused; the HTTP layer maps each to a status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400 `INVALID_REQUEST`.
    Invalid(String),
    /// 404 `SUBSCRIPTION_NOT_FOUND`.
    NotFound,
    /// 409 `SUBSCRIPTION_ALREADY_EXISTS`: the id exists with another
    /// configuration.
    Conflict,
    /// 409 `ALREADY_CLAIMED`.
    AlreadyClaimed { holder: String, generation: u64 },
    /// 409 `NO_PENDING_WORK`.
    NoPendingWork,
    /// 409 `FENCED`: for a wake that is over.
    Fenced,
    /// 409 `INVALID_OFFSET`.
    InvalidOffset(String),
}

/// An append, as the hook on appends saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended<'a> {
    /// The stream, relative to the root.
    pub(crate) path: &'a str,
    /// Its incarnation (storage id).
    pub(crate) stream: u64,
    /// Its tail before the append.
    pub(crate) before: u64,
    /// Its tail after it.
    pub(crate) after: u64,
}

/// What a wake's holder reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// The generation the token was issued for.
    pub(crate) token_generation: u64,
    pub(crate) wake_id: String,
    pub(crate) generation: u64,
    pub(crate) acks: Vec<(String, u64)>,
    pub(crate) done: bool,
}

/// Every subscription, with the indexes that find them from a stream.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    all: HashMap<String, Subscription>,
    patterns: PatternIndex<String>,
    /// Explicitly named streams to the subscriptions naming them.
    named: HashMap<String, BTreeSet<String>>,
    /// The last generation of deleted subscriptions, so that a namesake
    /// created later fences the old one's tokens.
    tombstones: HashMap<String, u64>,
    /// The stored signing key's seed (base64url), if one was recorded.
    signing_seed: Option<String>,
}

impl Subscriptions {
    /// The signing key's seed recorded in the log (base64url), if any.
    pub(crate) fn signing_seed(&self) -> Option<&str> {
        self.signing_seed.as_deref()
    }

    /// Operations that rebuild this state from nothing, in a fixed order
    /// (the same state always gives the same snapshot): what a compacted
    /// log starts with.
    pub(crate) fn snapshot(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(seed) = &self.signing_seed {
            ops.push(Op::SigningKey { seed: seed.clone() });
        }
        let mut ids: Vec<&String> = self.all.keys().collect();
        ids.sort();
        for id in ids {
            ops.push(Op::Restore {
                sub: Box::new(self.all[id].clone()),
            });
        }
        let mut tombstones: Vec<(&String, &u64)> = self.tombstones.iter().collect();
        tombstones.sort();
        for (id, generation) in tombstones {
            ops.push(Op::Tombstone {
                id: id.clone(),
                generation: *generation,
            });
        }
        ops
    }

    /// Records `fresh` as the signing key's seed unless one is recorded.
    pub(crate) fn keep_signing_seed(&self, fresh: &str) -> Vec<Op> {
        if self.signing_seed.is_some() {
            return Vec::new();
        }
        vec![Op::SigningKey {
            seed: fresh.to_owned(),
        }]
    }

    /// The subscription `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Subscription> {
        self.all.get(id)
    }

    /// Every subscription.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.all.values()
    }

    /// The subscriptions that `path` (a stream's name relative to the root,
    /// no leading `/`) belongs to or would be linked to by its pattern.
    pub(crate) fn interested(&self, path: &str) -> BTreeSet<&str> {
        if reserved(path) {
            return BTreeSet::new();
        }
        let mut ids: BTreeSet<&str> = self
            .patterns
            .matching(path)
            .into_iter()
            .map(String::as_str)
            .collect();
        if let Some(named) = self.named.get(path) {
            ids.extend(named.iter().map(String::as_str));
        }
        // A subscription's own wake stream never wakes it.
        ids.retain(|id| match self.all.get(*id) {
            Some(sub) => !matches!(&sub.config.delivery,
                Delivery::PullWake { wake_stream } if wake_stream == path),
            None => false,
        });
        ids
    }

    /// `PUT`: the operations creating `id`, or none if it exists with the
    /// same configuration (`Ok(false)`). `existing` lists the streams that
    /// exist now with their tails: those the pattern matches, and the named
    /// ones, are linked at their tail (nothing before now is delivered);
    /// named streams that do not exist yet are linked at 0.
    pub(crate) fn create(
        &self,
        id: &str,
        config: Config,
        now_ms: u64,
        existing: &[(String, u64, u64)],
        base_url: Option<String>,
    ) -> Result<(Vec<Op>, bool), Refusal> {
        if let Some(current) = self.all.get(id) {
            return if current.config == config {
                Ok((Vec::new(), false))
            } else {
                Err(Refusal::Conflict)
            };
        }
        let pattern = config.pattern.as_deref().map(Pattern::parse).transpose();
        let pattern = pattern.map_err(|e| Refusal::Invalid(e.to_string()))?;
        let own_wake_stream = match &config.delivery {
            Delivery::PullWake { wake_stream } => Some(wake_stream.clone()),
            Delivery::Webhook { .. } => None,
        };
        let mut ops = vec![Op::Create {
            id: id.to_owned(),
            config: config.clone(),
            created_at_ms: now_ms,
            generation: self.tombstones.get(id).copied().unwrap_or(0),
            base_url,
        }];
        let found: HashMap<&str, (u64, u64)> = existing
            .iter()
            .map(|(p, tail, stream)| (p.as_str(), (*tail, *stream)))
            .collect();
        for (path, tail, stream) in existing {
            let glob = pattern.as_ref().is_some_and(|p| p.matches(path));
            if glob && !reserved(path) && own_wake_stream.as_deref() != Some(path) {
                ops.push(link(id, path, false, *tail, Some(*stream)));
            }
        }
        for path in &config.streams {
            let (at, stream) = match found.get(path.as_str()) {
                Some((tail, stream)) => (*tail, Some(*stream)),
                None => (0, None),
            };
            ops.push(link(id, path, true, at, stream));
        }
        Ok((ops, true))
    }

    /// `DELETE`: the operation deleting `id`, if it exists.
    pub(crate) fn delete(&self, id: &str) -> Vec<Op> {
        if self.all.contains_key(id) {
            vec![Op::Delete { id: id.to_owned() }]
        } else {
            Vec::new()
        }
    }

    /// `POST .../streams`: explicit links, at each stream's tail (0 for a
    /// stream that does not exist yet); a stream already linked keeps its
    /// cursor.
    pub(crate) fn add_streams(
        &self,
        id: &str,
        paths: &[String],
        found: impl Fn(&str) -> Option<(u64, u64)>,
    ) -> Result<Vec<Op>, Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        for path in paths {
            check_name(path)?;
            if matches!(&sub.config.delivery,
                Delivery::PullWake { wake_stream } if wake_stream == path)
            {
                return Err(Refusal::Invalid(
                    "a pull-wake subscription cannot include its own wake stream".into(),
                ));
            }
        }
        Ok(paths
            .iter()
            .filter(|p| !sub.links.get(*p).is_some_and(|l| l.explicit))
            .map(|p| {
                let (at, stream) = found(p).map_or((0, None), |(tail, s)| (tail, Some(s)));
                link(id, p, true, at, stream)
            })
            .collect())
    }

    /// `DELETE .../streams/:path`.
    pub(crate) fn remove_stream(&self, id: &str, path: &str) -> Result<Vec<Op>, Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        Ok(match sub.links.get(path) {
            Some(l) if l.explicit => vec![Op::Unlink {
                id: id.to_owned(),
                path: path.to_owned(),
            }],
            _ => Vec::new(),
        })
    }

    /// An append moved a stream's tail (see [`Appended`]): streams that
    /// start to match a pattern are linked at `before` (so this append is
    /// delivered), and idle subscriptions with pending work wake.
    /// `wake_id` makes a fresh wake id.
    pub(crate) fn appended(
        &self,
        append: &Appended<'_>,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        mut wake_id: impl FnMut() -> String,
    ) -> Vec<Op> {
        let &Appended {
            path,
            stream,
            before,
            after,
        } = append;
        let mut ops = Vec::new();
        for id in self.interested(path) {
            let Some(sub) = self.all.get(id) else {
                continue;
            };
            let acked = match sub.links.get(path) {
                // New to this subscription, or a new incarnation of a linked
                // stream: linked from before this append.
                Some(l) if l.stream.is_none_or(|s| s == stream) => {
                    if l.stream.is_none() {
                        // First seen since it was linked: remember which
                        // incarnation the cursor is for.
                        ops.push(link(id, path, l.explicit, l.acked, Some(stream)));
                    }
                    l.acked
                }
                // A link for another incarnation keeps why it was made.
                Some(l) => {
                    ops.push(link(id, path, l.explicit, before, Some(stream)));
                    before
                }
                None => {
                    ops.push(link(id, path, false, before, Some(stream)));
                    before
                }
            };
            if sub.wake.is_some() || sub.retry.is_some() {
                continue;
            }
            let mut snapshot = sub.pending(&tails);
            snapshot.remove(path);
            if after > acked {
                snapshot.insert(path.to_owned(), after);
            }
            if !snapshot.is_empty() {
                ops.push(wake_op(sub, snapshot, now_ms, &mut wake_id));
            }
        }
        ops
    }

    /// A wake for `id` if it is idle and has pending work: the sweeper's
    /// safety net for a wake that no append hook recorded (an instance that
    /// saw the wake still open when it took the append, say).
    pub(crate) fn rewake_idle(
        &self,
        id: &str,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        mut wake_id: impl FnMut() -> String,
    ) -> Vec<Op> {
        let Some(sub) = self.all.get(id) else {
            return Vec::new();
        };
        if sub.wake.is_some() {
            return Vec::new();
        }
        let pending = sub.pending(&tails);
        if pending.is_empty() {
            return Vec::new();
        }
        vec![wake_op(sub, pending, now_ms, &mut wake_id)]
    }

    /// `POST .../claim` by `worker`.
    pub(crate) fn claim(
        &self,
        id: &str,
        worker: &str,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        mut wake_id: impl FnMut() -> String,
    ) -> Result<Vec<Op>, Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        if !sub.is_pull_wake() {
            return Err(Refusal::Invalid(
                "only a pull-wake subscription can be claimed".into(),
            ));
        }
        if worker.is_empty() {
            return Err(Refusal::Invalid("a claim must name its worker".into()));
        }
        let mut ops = Vec::new();
        let generation = match &sub.wake {
            Some(Wake {
                holder: Some(_), ..
            }) if sub.lease_over(now_ms) => {
                // The holder's lease ran out and the sweeper has not ended
                // it yet: end it here, and claim the wake that follows.
                let (ended, rewoken) =
                    self.finish_and_rewake(sub, end_wake(sub), now_ms, &tails, &mut wake_id);
                if !rewoken {
                    return Err(Refusal::NoPendingWork);
                }
                ops.extend(ended);
                sub.generation + 1
            }
            Some(Wake {
                holder: Some(holder),
                ..
            }) => {
                return Err(Refusal::AlreadyClaimed {
                    holder: holder.clone(),
                    generation: sub.generation,
                })
            }
            Some(_) => sub.generation,
            None => {
                // Work that arrived with no wake open (or a claim that came
                // before the wake): open one now.
                let snapshot = sub.pending(&tails);
                if snapshot.is_empty() {
                    return Err(Refusal::NoPendingWork);
                }
                ops.push(wake_op(sub, snapshot, now_ms, &mut wake_id));
                sub.generation + 1
            }
        };
        ops.push(Op::Claim {
            id: id.to_owned(),
            generation,
            worker: worker.to_owned(),
            lease_until_ms: now_ms + sub.config.lease_ttl_ms,
        });
        Ok(ops)
    }

    /// A webhook callback or a pull-wake ack: acknowledges offsets, extends
    /// the lease, and with `done` ends the wake (and wakes again if work is
    /// pending). Returns the operations and whether a new wake follows.
    pub(crate) fn report(
        &self,
        id: &str,
        report: &Report,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        wake_id: impl FnMut() -> String,
    ) -> Result<(Vec<Op>, bool), Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        let wake = current_wake(
            sub,
            report.token_generation,
            report.generation,
            &report.wake_id,
            now_ms,
        )?;
        let mut acks = BTreeMap::new();
        for (path, offset) in &report.acks {
            let link = sub
                .links
                .get(path)
                .ok_or_else(|| Refusal::InvalidOffset(format!("{path:?} is not linked")))?;
            if *offset < link.acked {
                return Err(Refusal::InvalidOffset(format!(
                    "{path:?}: an ack cannot move the cursor back"
                )));
            }
            if tails(path).is_none_or(|tail| *offset > tail) {
                return Err(Refusal::InvalidOffset(format!(
                    "{path:?}: the offset is past the stream's tail"
                )));
            }
            acks.insert(path.clone(), *offset);
        }
        let lease_until_ms = (!report.done && wake.lease_until_ms.is_some())
            .then_some(now_ms + sub.config.lease_ttl_ms);
        let finish = Op::Ack {
            id: id.to_owned(),
            generation: sub.generation,
            acks,
            lease_until_ms,
            finish: report.done,
        };
        if !report.done {
            return Ok((vec![finish], false));
        }
        Ok(self.finish_and_rewake(sub, finish, now_ms, tails, wake_id))
    }

    /// A webhook answered `{"done": true}`: the wake's snapshot is
    /// acknowledged and the wake ends.
    pub(crate) fn delivered(
        &self,
        id: &str,
        generation: u64,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        wake_id: impl FnMut() -> String,
    ) -> Result<(Vec<Op>, bool), Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        let wake = match &sub.wake {
            Some(wake) if sub.generation == generation => wake,
            _ => return Err(Refusal::Fenced),
        };
        let finish = Op::Ack {
            id: id.to_owned(),
            generation,
            acks: wake.snapshot.clone(),
            lease_until_ms: None,
            finish: true,
        };
        Ok(self.finish_and_rewake(sub, finish, now_ms, tails, wake_id))
    }

    /// `POST .../release`: gives the wake back unfinished (the report's
    /// acks and `done` are not looked at).
    pub(crate) fn release(
        &self,
        id: &str,
        report: &Report,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        wake_id: impl FnMut() -> String,
    ) -> Result<(Vec<Op>, bool), Refusal> {
        let sub = self.all.get(id).ok_or(Refusal::NotFound)?;
        if !sub.is_pull_wake() {
            return Err(Refusal::Invalid(
                "only a pull-wake subscription's wake can be released".into(),
            ));
        }
        current_wake(
            sub,
            report.token_generation,
            report.generation,
            &report.wake_id,
            now_ms,
        )?;
        Ok(self.finish_and_rewake(sub, end_wake(sub), now_ms, tails, wake_id))
    }

    /// Leases that ran out by `now_ms`: their wakes end, and pending work
    /// wakes again under a new generation.
    pub(crate) fn expired(
        &self,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        mut wake_id: impl FnMut() -> String,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut ids: Vec<&String> = self.all.keys().collect();
        ids.sort();
        for id in ids {
            let Some(sub) = self.all.get(id) else {
                continue;
            };
            if sub.lease_over(now_ms) {
                ops.extend(
                    self.finish_and_rewake(sub, end_wake(sub), now_ms, &tails, &mut wake_id)
                        .0,
                );
            }
        }
        ops
    }

    /// `finish` (an ending [`Op::Ack`]), then a new wake if work is still
    /// pending after its acks.
    fn finish_and_rewake(
        &self,
        sub: &Subscription,
        finish: Op,
        now_ms: u64,
        tails: impl Fn(&str) -> Option<u64>,
        mut wake_id: impl FnMut() -> String,
    ) -> (Vec<Op>, bool) {
        let Op::Ack { acks, .. } = &finish else {
            unreachable!("finish_and_rewake takes an ack")
        };
        let mut after = sub.clone();
        for (path, offset) in acks {
            if let Some(link) = after.links.get_mut(path) {
                link.acked = link.acked.max(*offset);
            }
        }
        after.wake = None;
        let pending = after.pending(&tails);
        let mut ops = vec![finish];
        if pending.is_empty() {
            return (ops, false);
        }
        ops.push(wake_op(&after, pending, now_ms, &mut wake_id));
        (ops, true)
    }

    /// Folds a recorded operation into the state. Operations for a deleted
    /// subscription, or for a wake that has since ended, change nothing.
    pub(crate) fn apply(&mut self, op: &Op) {
        match op {
            Op::SigningKey { seed } => {
                self.signing_seed.get_or_insert_with(|| seed.clone());
            }
            Op::Restore { sub } => {
                if self.all.contains_key(&sub.id) {
                    return;
                }
                if let Some(p) = sub
                    .config
                    .pattern
                    .as_deref()
                    .and_then(|p| Pattern::parse(p).ok())
                {
                    self.patterns.insert(p, sub.id.clone());
                }
                for (path, link) in &sub.links {
                    if link.explicit {
                        self.named
                            .entry(path.clone())
                            .or_default()
                            .insert(sub.id.clone());
                    }
                }
                self.tombstones.remove(&sub.id);
                self.all.insert(sub.id.clone(), (**sub).clone());
            }
            Op::Tombstone { id, generation } => {
                if !self.all.contains_key(id) {
                    self.tombstones.insert(id.clone(), *generation);
                }
            }
            Op::Create {
                id,
                config,
                created_at_ms,
                generation,
                base_url,
            } => {
                if self.all.contains_key(id) {
                    return;
                }
                if let Some(p) = config
                    .pattern
                    .as_deref()
                    .and_then(|p| Pattern::parse(p).ok())
                {
                    self.patterns.insert(p, id.clone());
                }
                self.tombstones.remove(id);
                self.all.insert(
                    id.clone(),
                    Subscription {
                        id: id.clone(),
                        config: config.clone(),
                        created_at_ms: *created_at_ms,
                        base_url: base_url.clone(),
                        links: BTreeMap::new(),
                        generation: *generation,
                        wake: None,
                        retry: None,
                    },
                );
            }
            Op::Delete { id } => {
                let Some(sub) = self.all.remove(id) else {
                    return;
                };
                if let Some(p) = sub
                    .config
                    .pattern
                    .as_deref()
                    .and_then(|p| Pattern::parse(p).ok())
                {
                    self.patterns.remove(&p, id);
                }
                for (path, link) in &sub.links {
                    if link.explicit {
                        self.unname(path, id);
                    }
                }
                self.tombstones.insert(id.clone(), sub.generation);
            }
            Op::Link {
                id,
                path,
                explicit,
                at,
                stream,
            } => {
                let Some(sub) = self.all.get_mut(id) else {
                    return;
                };
                let link = sub.links.entry(path.clone()).or_insert(Link {
                    explicit: false,
                    glob: false,
                    acked: *at,
                    stream: *stream,
                });
                if let Some(stream) = stream {
                    if link.stream.is_some_and(|s| s != *stream) {
                        // Another incarnation: its cursor starts over, and
                        // the wake out now no longer covers it (its `done`
                        // must not acknowledge the new stream's bytes).
                        link.acked = *at;
                        if let Some(wake) = &mut sub.wake {
                            wake.snapshot.remove(path);
                        }
                    }
                    link.stream = Some(*stream);
                }
                if *explicit {
                    link.explicit = true;
                    self.named
                        .entry(path.clone())
                        .or_default()
                        .insert(id.clone());
                } else {
                    link.glob = true;
                }
            }
            Op::Unlink { id, path } => {
                let Some(sub) = self.all.get_mut(id) else {
                    return;
                };
                let glob = match sub.links.get_mut(path) {
                    Some(link) => {
                        link.explicit = false;
                        link.glob
                    }
                    None => return,
                };
                if !glob {
                    sub.links.remove(path);
                }
                self.unname(path, id);
            }
            Op::Wake {
                id,
                generation,
                wake_id,
                snapshot,
                lease_until_ms,
            } => {
                let Some(sub) = self.all.get_mut(id) else {
                    return;
                };
                if *generation != sub.generation + 1 || sub.wake.is_some() {
                    return;
                }
                sub.generation = *generation;
                sub.retry = None;
                sub.wake = Some(Wake {
                    id: wake_id.clone(),
                    snapshot: snapshot.clone(),
                    holder: None,
                    lease_until_ms: *lease_until_ms,
                });
            }
            Op::Claim {
                id,
                generation,
                worker,
                lease_until_ms,
            } => {
                if let Some(wake) = self.wake_of(id, *generation) {
                    if wake.holder.is_none() {
                        wake.holder = Some(worker.clone());
                        wake.lease_until_ms = Some(*lease_until_ms);
                    }
                }
            }
            Op::Ack {
                id,
                generation,
                acks,
                lease_until_ms,
                finish,
            } => {
                let Some(sub) = self.all.get_mut(id) else {
                    return;
                };
                if sub.generation != *generation || sub.wake.is_none() {
                    return;
                }
                for (path, offset) in acks {
                    if let Some(link) = sub.links.get_mut(path) {
                        link.acked = link.acked.max(*offset);
                    }
                }
                if *finish {
                    sub.wake = None;
                    sub.retry = None;
                } else if let (Some(wake), Some(until)) = (&mut sub.wake, lease_until_ms) {
                    wake.lease_until_ms = Some(*until);
                }
            }
            Op::Retry {
                id,
                generation,
                attempt,
                at_ms,
                by,
            } => {
                // Only for the wake it was about: a delivery that failed after
                // its wake ended (the receiver called back `done`, then the
                // POST timed out) changes nothing.
                if let Some(sub) = self.all.get_mut(id) {
                    if sub.generation == *generation && sub.wake.is_some() {
                        sub.retry = Some(Retry {
                            attempt: *attempt,
                            at_ms: *at_ms,
                            by: by.clone(),
                        });
                    }
                }
            }
            Op::Delivered {
                id,
                generation,
                lease_until_ms,
            } => {
                if let Some(sub) = self.all.get_mut(id) {
                    if sub.generation == *generation {
                        sub.retry = None;
                        if let (Some(wake), Some(until)) = (&mut sub.wake, lease_until_ms) {
                            wake.lease_until_ms = Some(*until);
                        }
                    }
                }
            }
        }
    }

    fn wake_of(&mut self, id: &str, generation: u64) -> Option<&mut Wake> {
        let sub = self.all.get_mut(id)?;
        if sub.generation != generation {
            return None;
        }
        sub.wake.as_mut()
    }

    fn unname(&mut self, path: &str, id: &str) {
        if let Some(ids) = self.named.get_mut(path) {
            ids.remove(id);
            if ids.is_empty() {
                self.named.remove(path);
            }
        }
    }
}

/// Ends `sub`'s wake without acknowledging anything (a release, or a lease
/// that ran out).
fn end_wake(sub: &Subscription) -> Op {
    Op::Ack {
        id: sub.id.clone(),
        generation: sub.generation,
        acks: BTreeMap::new(),
        lease_until_ms: None,
        finish: true,
    }
}

fn link(id: &str, path: &str, explicit: bool, at: u64, stream: Option<u64>) -> Op {
    Op::Link {
        id: id.to_owned(),
        path: path.to_owned(),
        explicit,
        at,
        stream,
    }
}

fn wake_op(
    sub: &Subscription,
    snapshot: BTreeMap<String, u64>,
    now_ms: u64,
    wake_id: &mut impl FnMut() -> String,
) -> Op {
    // A webhook's lease runs from the wake; a pull-wake's from its claim.
    let lease_until_ms = (!sub.is_pull_wake()).then_some(now_ms + sub.config.lease_ttl_ms);
    Op::Wake {
        id: sub.id.clone(),
        generation: sub.generation + 1,
        wake_id: wake_id(),
        snapshot,
        lease_until_ms,
    }
}

/// The wake a report is for, if it is still the current one (and its lease
/// has not run out, whether or not the sweeper has ended it yet).
fn current_wake<'a>(
    sub: &'a Subscription,
    token_generation: u64,
    generation: u64,
    wake_id: &str,
    now_ms: u64,
) -> Result<&'a Wake, Refusal> {
    match &sub.wake {
        Some(wake)
            if token_generation == sub.generation
                && generation == sub.generation
                && wake.id == wake_id
                && !sub.lease_over(now_ms) =>
        {
            Ok(wake)
        }
        _ => Err(Refusal::Fenced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(pattern: &str) -> Config {
        Config::new(
            Delivery::Webhook {
                url: "https://hooks.example.com/x".into(),
            },
            Some(pattern.into()),
            Vec::new(),
            Some(1_000),
            None,
        )
        .unwrap()
    }

    fn pull(pattern: &str) -> Config {
        Config::new(
            Delivery::PullWake {
                wake_stream: "wake/pool".into(),
            },
            Some(pattern.into()),
            Vec::new(),
            Some(1_000),
            None,
        )
        .unwrap()
    }

    /// State and stream tails, with ids counted up. Streams are all of
    /// incarnation 1 unless `incarnations` says otherwise.
    #[derive(Default)]
    struct World {
        subs: Subscriptions,
        tails: HashMap<String, u64>,
        incarnations: HashMap<String, u64>,
        next: u32,
    }

    impl World {
        fn record(&mut self, ops: Vec<Op>) {
            for op in &ops {
                // Every operation survives the log's encoding.
                let json = serde_json::to_string(op).unwrap();
                let back: Op = serde_json::from_str(&json).unwrap();
                assert_eq!(&back, op);
                self.subs.apply(&back);
            }
        }

        fn create(&mut self, id: &str, config: Config) -> bool {
            let existing: Vec<(String, u64, u64)> = self
                .tails
                .iter()
                .map(|(p, t)| (p.clone(), *t, self.incarnation(p)))
                .collect();
            let (ops, created) = self.subs.create(id, config, 0, &existing, None).unwrap();
            self.record(ops);
            created
        }

        fn append(&mut self, path: &str, bytes: u64, now: u64) {
            let before = self.tails.get(path).copied().unwrap_or(0);
            self.tails.insert(path.into(), before + bytes);
            let tails = self.tails.clone();
            let stream = self.incarnation(path);
            let next = &mut self.next;
            let append = Appended {
                path,
                stream,
                before,
                after: before + bytes,
            };
            let ops = self.subs.appended(
                &append,
                now,
                |p| tails.get(p).copied(),
                || {
                    *next += 1;
                    format!("w{next}")
                },
            );
            self.record(ops);
        }

        fn incarnation(&self, path: &str) -> u64 {
            self.incarnations.get(path).copied().unwrap_or(1)
        }

        /// Deletes `path` and creates it again, empty.
        fn recreate(&mut self, path: &str) {
            let next = self.incarnation(path) + 1;
            self.incarnations.insert(path.into(), next);
            self.tails.insert(path.into(), 0);
        }

        fn found(&self) -> impl Fn(&str) -> Option<(u64, u64)> + '_ {
            |p| Some((*self.tails.get(p)?, self.incarnation(p)))
        }

        fn tails(&self) -> impl Fn(&str) -> Option<u64> + '_ {
            |p| self.tails.get(p).copied()
        }

        fn sub(&self, id: &str) -> &Subscription {
            self.subs.get(id).unwrap()
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 100;
        move || {
            n += 1;
            format!("w{n}")
        }
    }

    #[test]
    fn a_create_links_matching_streams_at_their_tail_and_is_idempotent() {
        let mut w = World::default();
        w.tails.insert("events/a".into(), 10);
        w.tails.insert("other/b".into(), 5);
        assert!(w.create("s", webhook("events/*")));
        assert_eq!(w.sub("s").links["events/a"].acked, 10);
        assert!(!w.sub("s").links.contains_key("other/b"));
        // The same again: nothing to do. Another configuration: conflict.
        assert!(!w.create("s", webhook("events/*")));
        assert_eq!(
            w.subs.create("s", webhook("events/**"), 0, &[], None),
            Err(Refusal::Conflict)
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let d = || Delivery::Webhook { url: "x".into() };
        assert!(Config::new(d(), None, vec![], None, None).is_err());
        assert!(Config::new(d(), Some("a//b".into()), vec![], None, None).is_err());
        assert!(Config::new(d(), None, vec!["/a".into()], None, None).is_err());
        assert!(Config::new(d(), Some("a".into()), vec![], Some(999), None).is_err());
        assert!(Config::new(d(), Some("a".into()), vec![], Some(600_001), None).is_err());
        let c = Config::new(
            d(),
            None,
            vec!["b".into(), "a".into(), "b".into()],
            None,
            None,
        );
        let c = c.unwrap();
        assert_eq!(c.streams, ["a", "b"]);
        assert_eq!(c.lease_ttl_ms, DEFAULT_LEASE_TTL_MS);
    }

    #[test]
    fn one_append_wakes_an_idle_subscription_once() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        // A stream that starts to match is linked before its first append.
        w.append("events/new", 7, 0);
        let sub = w.sub("s");
        assert_eq!(sub.links["events/new"].acked, 0);
        assert_eq!(sub.generation, 1);
        let wake = sub.wake.clone().unwrap();
        assert_eq!(wake.snapshot["events/new"], 7);
        assert_eq!(wake.lease_until_ms, Some(1_000));
        // More appends while the wake is out do not wake again.
        w.append("events/new", 3, 10);
        w.append("events/other", 3, 10);
        assert_eq!(w.sub("s").generation, 1);
        // Streams outside the pattern are not linked.
        w.append("elsewhere", 3, 10);
        assert!(!w.sub("s").links.contains_key("elsewhere"));
    }

    #[test]
    fn two_instances_deciding_the_same_wake_record_one() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.tails.insert("events/a".into(), 5);
        let tails = w.tails.clone();
        let decide = |n: &str| {
            let append = Appended {
                path: "events/a",
                stream: 1,
                before: 0,
                after: 5,
            };
            w.subs
                .appended(&append, 0, |p| tails.get(p).copied(), || n.to_owned())
        };
        let (first, second) = (decide("w-a"), decide("w-b"));
        w.record(first);
        // The second decision was made on the same state; applied after the
        // first it changes nothing.
        w.record(second);
        let sub = w.sub("s");
        assert_eq!(
            (sub.generation, sub.wake.as_ref().unwrap().id.as_str()),
            (1, "w-a")
        );
    }

    #[test]
    fn done_acknowledges_the_snapshot_and_wakes_again_for_later_data() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        w.append("events/a", 5, 1);
        let (ops, again) = w.subs.delivered("s", 1, 2, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(again, "the second append came after the snapshot");
        let sub = w.sub("s");
        assert_eq!(sub.links["events/a"].acked, 5);
        assert_eq!(sub.generation, 2);
        assert_eq!(sub.wake.as_ref().unwrap().snapshot["events/a"], 10);
        let (ops, again) = w.subs.delivered("s", 2, 3, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(!again);
        assert!(w.sub("s").wake.is_none());
        // A late answer for an old wake is fenced.
        assert_eq!(
            w.subs.delivered("s", 1, 4, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
    }

    fn report(generation: u64, wake_id: &str, acks: &[(&str, u64)], done: bool) -> Report {
        Report {
            token_generation: generation,
            wake_id: wake_id.into(),
            generation,
            acks: acks.iter().map(|(p, o)| ((*p).to_owned(), *o)).collect(),
            done,
        }
    }

    #[test]
    fn callbacks_are_fenced_once_their_wake_is_over() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        let wake_id = w.sub("s").wake.as_ref().unwrap().id.clone();
        let done = report(1, &wake_id, &[("events/a", 5)], true);
        let (ops, again) = w.subs.report("s", &done, 10, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(!again);
        assert_eq!(w.sub("s").links["events/a"].acked, 5);
        // The same callback again: the wake is over.
        assert_eq!(
            w.subs.report("s", &done, 11, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
        // A wrong wake id, generation, or token generation is fenced too.
        w.append("events/a", 1, 20);
        let current = w.sub("s").wake.as_ref().unwrap().id.clone();
        let mut stale = report(2, "not-it", &[], false);
        assert_eq!(
            w.subs.report("s", &stale, 21, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
        stale.wake_id = current.clone();
        stale.token_generation = 1;
        assert_eq!(
            w.subs.report("s", &stale, 21, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
        stale.token_generation = 2;
        assert!(w.subs.report("s", &stale, 21, w.tails(), ids()).is_ok());
    }

    #[test]
    fn acks_that_move_back_or_past_the_tail_are_refused() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        let id = w.sub("s").wake.as_ref().unwrap().id.clone();
        let heartbeat = report(1, &id, &[("events/a", 3)], false);
        let (ops, _) = w
            .subs
            .report("s", &heartbeat, 100, w.tails(), ids())
            .unwrap();
        w.record(ops);
        // The heartbeat moved the cursor and extended the lease.
        let sub = w.sub("s");
        assert_eq!(sub.links["events/a"].acked, 3);
        assert_eq!(sub.wake.as_ref().unwrap().lease_until_ms, Some(1_100));
        for acks in [[("events/a", 2)], [("events/a", 6)], [("events/zzz", 1)]] {
            let bad = report(1, &id, &acks, false);
            assert!(matches!(
                w.subs.report("s", &bad, 100, w.tails(), ids()),
                Err(Refusal::InvalidOffset(_))
            ));
        }
    }

    #[test]
    fn pull_wake_claims_are_exclusive_and_released_work_wakes_again() {
        let mut w = World::default();
        w.create("p", pull("events/*"));
        assert_eq!(
            w.subs.claim("p", "w1", 0, w.tails(), ids()),
            Err(Refusal::NoPendingWork)
        );
        w.append("events/a", 5, 0);
        // The wake is open but nobody holds it; a pull-wake lease starts at
        // the claim.
        assert_eq!(w.sub("p").wake.as_ref().unwrap().lease_until_ms, None);
        let ops = w.subs.claim("p", "w1", 10, w.tails(), ids()).unwrap();
        w.record(ops);
        assert_eq!(
            w.subs.claim("p", "w2", 11, w.tails(), ids()),
            Err(Refusal::AlreadyClaimed {
                holder: "w1".into(),
                generation: 1
            })
        );
        let wake = w.sub("p").wake.clone().unwrap();
        assert_eq!(wake.lease_until_ms, Some(1_010));
        let done = report(1, &wake.id, &[("events/a", 5)], true);
        let (ops, again) = w.subs.report("p", &done, 12, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(!again);
        // Another append, a claim, then a release without acks: the work is
        // still pending, so it wakes again under the next generation.
        w.append("events/a", 1, 20);
        let ops = w.subs.claim("p", "w2", 21, w.tails(), ids()).unwrap();
        w.record(ops);
        let wake = w.sub("p").wake.clone().unwrap();
        let release = report(2, &wake.id, &[], false);
        let (ops, again) = w.subs.release("p", &release, 22, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(again);
        let sub = w.sub("p");
        assert_eq!(sub.generation, 3);
        assert_eq!(sub.wake.as_ref().unwrap().holder, None);
    }

    #[test]
    fn a_claim_opens_a_wake_for_work_that_has_none() {
        let mut w = World::default();
        w.tails.insert("events/a".into(), 0);
        w.create("p", pull("events/*"));
        // The data arrives without the append hook (another instance, say).
        w.tails.insert("events/a".into(), 4);
        let ops = w.subs.claim("p", "w1", 0, w.tails(), ids()).unwrap();
        w.record(ops);
        let sub = w.sub("p");
        assert_eq!(sub.generation, 1);
        assert_eq!(sub.wake.as_ref().unwrap().holder.as_deref(), Some("w1"));
    }

    #[test]
    fn an_expired_lease_clears_the_holder_and_wakes_pending_work() {
        let mut w = World::default();
        w.create("p", pull("events/*"));
        w.append("events/a", 5, 0);
        let ops = w.subs.claim("p", "w1", 0, w.tails(), ids()).unwrap();
        w.record(ops);
        assert!(w.subs.expired(999, w.tails(), ids()).is_empty());
        let ops = w.subs.expired(1_000, w.tails(), ids());
        w.record(ops);
        let sub = w.sub("p");
        assert_eq!(sub.generation, 2);
        assert_eq!(sub.wake.as_ref().unwrap().holder, None);
        // The old holder's ack is fenced.
        let old = report(1, "w101", &[("events/a", 5)], true);
        assert_eq!(
            w.subs.report("p", &old, 1_001, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
    }

    #[test]
    fn a_stream_created_again_starts_its_cursor_over() {
        let mut w = World::default();
        w.create("p", pull("events/*"));
        w.append("events/a", 100, 0);
        let wake = w.sub("p").wake.as_ref().unwrap().id.clone();
        let ops = w.subs.claim("p", "w1", 0, w.tails(), ids()).unwrap();
        w.record(ops);
        let done = report(1, &wake, &[("events/a", 100)], true);
        let (ops, _) = w.subs.report("p", &done, 1, w.tails(), ids()).unwrap();
        w.record(ops);
        assert_eq!(w.sub("p").links["events/a"].acked, 100);
        // Deleted and created again: its first 40 bytes are new work, not
        // covered by the old incarnation's cursor.
        w.recreate("events/a");
        w.append("events/a", 40, 2);
        let sub = w.sub("p");
        assert_eq!(sub.links["events/a"].acked, 0);
        assert_eq!(sub.links["events/a"].stream, Some(2));
        assert_eq!(sub.wake.as_ref().unwrap().snapshot["events/a"], 40);
    }

    #[test]
    fn a_wake_out_when_its_stream_is_created_again_does_not_acknowledge_the_new_one() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        let ops = w
            .subs
            .add_streams("s", &["named/x".into()], w.found())
            .unwrap();
        w.record(ops);
        w.append("named/x", 100, 0);
        assert_eq!(w.sub("s").wake.as_ref().unwrap().snapshot["named/x"], 100);
        // Deleted and created again while the wake is out.
        w.recreate("named/x");
        w.append("named/x", 40, 1);
        let sub = w.sub("s");
        assert!(sub.links["named/x"].explicit, "still a named link");
        assert!(!sub.links["named/x"].glob);
        assert!(!sub.wake.as_ref().unwrap().snapshot.contains_key("named/x"));
        // The receiver's `done` for that wake leaves the new stream pending.
        let (ops, again) = w.subs.delivered("s", 1, 2, w.tails(), ids()).unwrap();
        w.record(ops);
        assert_eq!(w.sub("s").links["named/x"].acked, 0);
        assert!(again, "a new wake for the new stream's 40 bytes");
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let mut w = World::default();
        w.subs.apply(&Op::SigningKey { seed: "k".into() });
        w.tails.insert("events/old".into(), 3);
        w.create("p", pull("events/*"));
        w.create("s", webhook("jobs/**"));
        w.create("gone", webhook("x/*"));
        w.append("x/a", 1, 0);
        w.record(w.subs.delete("gone"));
        let ops = w
            .subs
            .add_streams("p", &["named/x".into()], w.found())
            .unwrap();
        w.record(ops);
        w.append("events/a", 5, 0);
        w.append("jobs/a/b", 2, 0);
        let ops = w.subs.claim("p", "w1", 0, w.tails(), ids()).unwrap();
        w.record(ops);
        w.record(vec![Op::Retry {
            id: "s".into(),
            generation: 1,
            attempt: 2,
            at_ms: 9,
            by: None,
        }]);
        let snapshot = w.subs.snapshot();
        assert_eq!(snapshot, w.subs.snapshot(), "the same every time");
        let mut rebuilt = World {
            tails: w.tails.clone(),
            ..World::default()
        };
        rebuilt.record(snapshot.clone());
        assert_eq!(rebuilt.subs.snapshot(), snapshot);
        assert_eq!(rebuilt.sub("p"), w.sub("p"));
        assert_eq!(rebuilt.subs.signing_seed(), Some("k"));
        // The indexes came back too: matching, naming and the tombstone.
        let ids = |path| {
            rebuilt
                .subs
                .interested(path)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("events/new"), ["p"]);
        assert_eq!(ids("named/x"), ["p"]);
        let (ops, _) = rebuilt
            .subs
            .create("gone", webhook("x/*"), 0, &[], None)
            .unwrap();
        assert!(
            matches!(&ops[0], Op::Create { generation: 1, .. }),
            "{ops:?}"
        );
    }

    #[test]
    fn a_lease_past_its_end_is_over_before_the_sweeper_says_so() {
        let mut w = World::default();
        w.create("p", pull("events/*"));
        w.append("events/a", 5, 0);
        let ops = w.subs.claim("p", "w1", 0, w.tails(), ids()).unwrap();
        w.record(ops);
        let wake_id = w.sub("p").wake.as_ref().unwrap().id.clone();
        // The lease (1 s) ran out at 1,000; no sweep has run.
        let late = report(1, &wake_id, &[("events/a", 5)], false);
        assert_eq!(
            w.subs.report("p", &late, 1_000, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
        assert_eq!(
            w.subs.release("p", &late, 1_000, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
        // Another worker's claim ends the old wake and takes the next one.
        let ops = w.subs.claim("p", "w2", 1_000, w.tails(), ids()).unwrap();
        w.record(ops);
        let sub = w.sub("p");
        assert_eq!(sub.generation, 2);
        assert_eq!(sub.wake.as_ref().unwrap().holder.as_deref(), Some("w2"));
        // Within its lease, a holder's ack is taken.
        let ok = report(2, &sub.wake.as_ref().unwrap().id, &[("events/a", 5)], true);
        assert!(w.subs.report("p", &ok, 1_500, w.tails(), ids()).is_ok());
    }

    #[test]
    fn explicit_links_come_and_go_and_glob_links_stay() {
        let mut w = World::default();
        w.tails.insert("events/a".into(), 3);
        w.create("s", webhook("events/*"));
        let ops = w
            .subs
            .add_streams("s", &["events/a".into(), "manual/b".into()], w.found())
            .unwrap();
        w.record(ops);
        let sub = w.sub("s");
        assert!(sub.links["events/a"].explicit && sub.links["events/a"].glob);
        assert_eq!(sub.links["manual/b"].acked, 0);
        // Adding again changes nothing.
        assert!(w
            .subs
            .add_streams("s", &["manual/b".into()], w.found())
            .unwrap()
            .is_empty());
        // An append to a named stream wakes the subscription.
        w.append("manual/b", 2, 0);
        assert_eq!(w.sub("s").generation, 1);
        let ops = w.subs.remove_stream("s", "manual/b").unwrap();
        w.record(ops);
        let ops = w.subs.remove_stream("s", "events/a").unwrap();
        w.record(ops);
        let sub = w.sub("s");
        assert!(!sub.links.contains_key("manual/b"));
        assert!(!sub.links["events/a"].explicit && sub.links["events/a"].glob);
        assert!(w.subs.interested("manual/b").is_empty());
        assert_eq!(w.subs.remove_stream("x", "a"), Err(Refusal::NotFound));
    }

    #[test]
    fn reserved_and_misspelled_names_are_refused_and_never_matched() {
        let d = || Delivery::Webhook { url: "x".into() };
        for bad in ["__ds/subscriptions", "a//b", "a/%7E", "a/../b"] {
            assert!(
                Config::new(d(), None, vec![bad.into()], None, None).is_err(),
                "{bad}"
            );
        }
        let own = Delivery::PullWake {
            wake_stream: "wake/pool".into(),
        };
        assert!(Config::new(own, None, vec!["wake/pool".into()], None, None).is_err());
        let reserved = Delivery::PullWake {
            wake_stream: "__ds/subscriptions".into(),
        };
        assert!(Config::new(reserved, Some("**".into()), vec![], None, None).is_err());
        let mut w = World::default();
        w.tails.insert("__ds/subscriptions".into(), 100);
        w.create("s", webhook("**"));
        assert!(!w.sub("s").links.contains_key("__ds/subscriptions"));
        w.append("__ds/subscriptions", 10, 0);
        assert!(w.sub("s").wake.is_none());
        w.create("p", pull("**"));
        assert!(w
            .subs
            .add_streams("p", &["wake/pool".into()], w.found())
            .is_err());
    }

    #[test]
    fn a_failed_delivery_after_its_wake_ended_changes_nothing() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        let wake_id = w.sub("s").wake.as_ref().unwrap().id.clone();
        let done = report(1, &wake_id, &[("events/a", 5)], true);
        let (ops, _) = w.subs.report("s", &done, 1, w.tails(), ids()).unwrap();
        w.record(ops);
        // The POST that carried the wake then timed out.
        w.record(vec![Op::Retry {
            id: "s".into(),
            generation: 1,
            attempt: 1,
            at_ms: 1_000,
            by: None,
        }]);
        assert_eq!(w.sub("s").retry, None);
        w.append("events/a", 1, 2);
        assert_eq!(w.sub("s").generation, 2, "later appends still wake it");
    }

    #[test]
    fn a_delivery_taken_after_failures_stops_the_retries() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        w.record(vec![Op::Retry {
            id: "s".into(),
            generation: 1,
            attempt: 1,
            at_ms: 1_000,
            by: None,
        }]);
        assert!(w.sub("s").retry.is_some());
        // Retried past its lease, the wake is not ended: the retries go on.
        assert!(w.subs.expired(60_000, w.tails(), ids()).is_empty());
        w.record(vec![Op::Delivered {
            id: "s".into(),
            generation: 1,
            lease_until_ms: Some(61_000),
        }]);
        let sub = w.sub("s");
        assert_eq!(sub.retry, None);
        assert!(sub.wake.is_some(), "the wake waits for its callback");
        // Its lease runs from the delivery.
        assert!(w.subs.expired(60_999, w.tails(), ids()).is_empty());
        assert!(!w.subs.expired(61_000, w.tails(), ids()).is_empty());
    }

    #[test]
    fn a_pull_wake_subscription_ignores_its_own_wake_stream() {
        let mut w = World::default();
        w.create("p", pull("**"));
        w.append("wake/pool", 10, 0);
        assert!(w.sub("p").wake.is_none());
        assert!(!w.sub("p").links.contains_key("wake/pool"));
    }

    #[test]
    fn a_deleted_subscription_is_gone_and_its_namesake_fences_old_tokens() {
        let mut w = World::default();
        w.create("s", webhook("events/*"));
        w.append("events/a", 5, 0);
        let old_wake = w.sub("s").wake.clone().unwrap();
        let ops = w.subs.delete("s");
        w.record(ops);
        assert!(w.subs.get("s").is_none());
        assert!(w.subs.delete("s").is_empty());
        assert!(w.subs.interested("events/a").is_empty());
        let old = report(1, &old_wake.id, &[], true);
        assert_eq!(
            w.subs.report("s", &old, 1, w.tails(), ids()),
            Err(Refusal::NotFound)
        );
        // Created again, it starts past the old generation.
        w.create("s", webhook("events/*"));
        w.append("events/a", 1, 2);
        let sub = w.sub("s");
        assert_eq!(sub.generation, 2);
        assert_eq!(
            w.subs.report("s", &old, 3, w.tails(), ids()),
            Err(Refusal::Fenced)
        );
    }
}
