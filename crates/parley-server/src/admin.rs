//! The worker's side of the control commands: who is online, kick, broadcast.
//!
//! These reach a worker from the master over its control channel (see
//! `worker.rs`); the master alone talks to the control socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parley_core::hub::CloseReason;
use parley_core::{ErrorKind, Service, UserId, UserName};

use crate::ctl::{Broadcast, Invite, Kicked, OnlineUser, Reply, Request, WorkerStatus};
use crate::server::StatsHandle;

/// Sender id of system messages (shared with the web pager, which is told
/// apart by its sender name).
pub const SYSTEM_SENDER: UserId = parley_core::service::EXTERNAL_SENDER;
/// Sender name of broadcasts. Account names cannot contain `:`, so no
/// account can pass for it.
pub const SYSTEM_SENDER_NAME: &str = "system:admin";
/// Broadcast messages being stored at once.
const BROADCAST_CONCURRENCY: usize = 64;
/// How long one broadcast message keeps retrying while the store is BUSY.
const BROADCAST_BUSY_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between those retries.
const BROADCAST_BUSY_PAUSE: Duration = Duration::from_millis(20);

/// What the control commands act on.
#[derive(Clone)]
pub struct Admin {
    pub service: Arc<Service>,
    pub stats: StatsHandle,
    pub started: Instant,
}

impl Admin {
    /// Answers one request that a worker can answer.
    pub async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::ok(WorkerStatus {
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs(),
                stats: self.stats.snapshot(),
            }),
            Request::Sessions => Reply::ok(self.sessions()),
            Request::Kick { user } => match self.kick(&user).await {
                Ok(kicked) => Reply::ok(kicked),
                Err(e) => Reply::error(e),
            },
            Request::Broadcast { text } => match self.broadcast(text).await {
                Ok(done) => Reply::ok(done),
                Err(e) => Reply::error(e),
            },
            Request::Invite { expires_hours } => match self.invite(expires_hours).await {
                Ok(invite) => Reply::ok(invite),
                Err(e) => Reply::error(e),
            },
            Request::Labels { after } => match self.labels(after).await {
                Ok(labels) => Reply::ok(labels),
                Err(e) => Reply::error(e),
            },
            Request::Reload | Request::Stop => Reply::error("only the master reloads or stops"),
        }
    }

    /// One page of labelled data, within the reply's byte budget.
    async fn labels(&self, after: u64) -> Result<Vec<crate::ctl::Label>, String> {
        let found = self
            .service
            .store()
            .labels(after, crate::ctl::MAX_LABEL_PAGE)
            .await
            .map_err(|e| format!("reading labels: {e}"))?;
        let mut bytes = 0;
        let mut page = Vec::with_capacity(found.len());
        for label in found {
            let label = crate::ctl::Label {
                id: label.id,
                spam: label.spam,
                score: label.score,
                marked_ms: label.marked_ms,
                text: label.body,
            };
            // Counted as sent: JSON escapes a control character in six.
            bytes += serde_json::to_string(&label).map_or(usize::MAX, |json| json.len());
            if !page.is_empty() && bytes > crate::ctl::MAX_LABEL_PAGE_BYTES {
                break;
            }
            page.push(label);
        }
        Ok(page)
    }

    /// Makes a one-time invite code that works for `hours`.
    async fn invite(&self, hours: u64) -> Result<Invite, String> {
        let ttl = Duration::from_secs(hours.saturating_mul(3600));
        let (code, expires_ms) = self
            .service
            .create_invite(ttl)
            .map_err(|e| e.message)?
            .await
            .map_err(|e| format!("storing the invite: {}", e.message))?;
        Ok(Invite { code, expires_ms })
    }

    /// Online users by name: those with sessions here, and those online
    /// in other processes of the service.
    fn sessions(&self) -> Vec<OnlineUser> {
        let hub = self.service.hub();
        let elsewhere: std::collections::HashMap<UserId, (Arc<str>, usize)> = hub
            .online_elsewhere()
            .into_iter()
            .map(|(id, name, sessions)| (id, (name, sessions)))
            .collect();
        let mut users: Vec<OnlineUser> = hub
            .online_users()
            .into_iter()
            .map(|(id, name, sessions)| {
                let there = elsewhere.get(&id).map_or(0, |(_, sessions)| *sessions);
                OnlineUser {
                    user: name.to_string(),
                    sessions,
                    elsewhere: elsewhere.contains_key(&id),
                    sessions_elsewhere: there,
                }
            })
            .collect();
        let here: std::collections::HashSet<String> = users.iter().map(|u| u.user.clone()).collect();
        users.extend(
            elsewhere
                .values()
                .filter(|(name, _)| !here.contains(&**name))
                .map(|(name, sessions)| OnlineUser {
                    user: name.to_string(),
                    sessions: 0,
                    elsewhere: true,
                    sessions_elsewhere: *sessions,
                }),
        );
        users.sort_by_key(|u| u.user.to_lowercase());
        users
    }

    /// Every user online now, in any process of the service.
    fn everyone_online(&self) -> Vec<(UserId, Arc<str>)> {
        let hub = self.service.hub();
        let mut users: std::collections::HashMap<UserId, Arc<str>> = hub
            .online_elsewhere()
            .into_iter()
            .map(|(id, name, _)| (id, name))
            .collect();
        users.extend(hub.online_users().into_iter().map(|(id, name, _)| (id, name)));
        users.into_iter().collect()
    }

    /// Ends every session of `user` with KICKED. Clients do not reconnect
    /// by themselves after it; the account is untouched, so logging in again
    /// works (deleting the account is how to keep someone out).
    async fn kick(&self, user: &str) -> Result<Kicked, String> {
        let name = UserName::parse(user).map_err(|e| format!("{user:?}: {e}"))?;
        let account = self
            .service
            .store()
            .find_account(name.key())
            .await
            .map_err(|e| format!("looking up {user:?}: {e}"))?
            .ok_or_else(|| format!("no such user {user:?}"))?;
        let sessions = self.service.hub().session_count(account.id);
        // Every session on every front door, and every resume token: a
        // kicked user logs in again with the password or not at all.
        let tokens = self
            .service
            .end_sessions(
                account.id,
                None,
                CloseReason {
                    kind: ErrorKind::Kicked,
                    message: "an administrator ended this session".into(),
                },
            )
            .await
            .map_err(|e| format!("revoking {user:?}'s resume tokens: {e}"))?;
        tracing::info!(user = %account.name, sessions, tokens, "kicked");
        Ok(Kicked {
            user: account.name,
            sessions,
        })
    }

    /// Stores `text` from [`SYSTEM_SENDER_NAME`] in the mailbox of every
    /// user online now; each is then pushed, acked and kept like any other
    /// message.
    async fn broadcast(&self, text: String) -> Result<Broadcast, String> {
        let max = self.service.config().limits.max_body_bytes as usize;
        if text.is_empty() {
            return Err("the broadcast text is empty".into());
        }
        if text.len() > max {
            return Err(format!(
                "the broadcast text is {} bytes; the limit is {max}",
                text.len()
            ));
        }
        let users = self.everyone_online();
        let recipients = users.len();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let results: Vec<Result<(), String>> = futures::stream::iter(users.into_iter().enumerate())
            .map(|(i, (_, name))| {
                let service = Arc::clone(&self.service);
                let text = text.clone();
                let id = format!("broadcast-{stamp}-{i}");
                async move {
                    store_one(&service, &name, &id, text)
                        .await
                        .map_err(|e| format!("{name}: {e}"))
                }
            })
            .buffer_unordered(BROADCAST_CONCURRENCY)
            .collect()
            .await;
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let stored = recipients - failed.len();
        tracing::info!(recipients, stored, failed = failed.len(), "broadcast");
        Ok(Broadcast {
            recipients,
            stored,
            failed,
        })
    }
}

/// Stores one broadcast message, retrying while the store is BUSY (the
/// client message id makes a retry of a stored message a no-op).
async fn store_one(service: &Arc<Service>, to: &str, id: &str, text: String) -> Result<(), String> {
    let deadline = Instant::now() + BROADCAST_BUSY_PATIENCE;
    loop {
        let attempt = match service.send_unfiltered(SYSTEM_SENDER, SYSTEM_SENDER_NAME, to, id, text.clone()) {
            Ok(pending) => pending.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == ErrorKind::Busy && Instant::now() < deadline => {
                tokio::time::sleep(BROADCAST_BUSY_PAUSE).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
