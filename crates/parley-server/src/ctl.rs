//! The control socket's protocol and the `parleyd ctl` client.
//!
//! The control socket is a unix stream socket the master listens on
//! (`ctl_socket`, mode 0600, and only connections from the socket owner's
//! uid or root are served). A client writes one request, a JSON object on
//! one line, and reads one reply line. The same request type travels from
//! the master to a worker over the worker's control channel for the
//! commands only a worker can answer (sessions, kick, broadcast, and its
//! half of status).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::server::Stats;

/// Longest request or reply line accepted on the control socket, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// How long `parleyd ctl` waits for the reply (a reload waits for the new
/// worker to be ready).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// What a control client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The master, its worker and the worker's counters.
    Status,
    /// Online users and their session counts.
    Sessions,
    /// End every session of a user with `KICKED`.
    Kick { user: String },
    /// Store a system message for every online user.
    Broadcast { text: String },
    /// Make a one-time invite code for `registration = invite`.
    Invite {
        #[serde(default = "default_invite_hours")]
        expires_hours: u64,
    },
    /// Recipients' spam / not-spam judgements with id > `after`, oldest
    /// first: the labelled data for the next training run.
    Labels {
        #[serde(default)]
        after: u64,
    },
    /// Re-read the configuration and replace the worker without downtime.
    Reload,
    /// Graceful shutdown of master and workers.
    Stop,
}

/// How long an invite works unless `--expires-hours` says otherwise.
pub const DEFAULT_INVITE_EXPIRES_HOURS: u64 = 24 * 7;

fn default_invite_hours() -> u64 {
    DEFAULT_INVITE_EXPIRES_HOURS
}

/// The answer to `invite`: the code, shown once (only its hash is kept).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invite {
    pub code: String,
    /// When it stops working, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// Labels one `labels` request answers at most; fewer when their texts
/// pass [`MAX_LABEL_PAGE_BYTES`].
pub const MAX_LABEL_PAGE: u32 = 100;
/// JSON one `labels` answer carries at most (a reply line is at most
/// [`MAX_LINE_BYTES`], and one label, a body of at most `max_body_bytes`
/// escaped, fits); the first label always goes, whatever its size.
pub const MAX_LABEL_PAGE_BYTES: usize = 512 * 1024;

/// One judgement, as `labels` answers it and `parley-train --labels`
/// reads it (one JSON object per line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Label {
    pub id: u64,
    /// true: spam; false: not spam.
    pub spam: bool,
    /// The filter's score when it was judged, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub marked_ms: u64,
    pub text: String,
}

/// The answer: `ok` with a result, or an error text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

impl Reply {
    pub fn ok(result: impl Serialize) -> Reply {
        Reply {
            ok: true,
            error: None,
            result: serde_json::to_value(result).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(text.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// A worker's part of `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: u32,
    pub uptime_secs: u64,
    pub stats: Stats,
}

/// The master's answer to `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub master_pid: u32,
    pub uptime_secs: u64,
    pub version: String,
    pub native: String,
    #[serde(default)]
    pub http: Option<String>,
    /// The QUIC listener's address (UDP), when it is on.
    #[serde(default)]
    pub quic: Option<String>,
    pub store: String,
    pub data_dir: String,
    /// Workers started since the master started, the first one included.
    pub generation: u64,
    /// Workers restarted after they died (reloads not counted).
    pub worker_restarts: u64,
    /// Old workers still draining after a reload.
    pub draining: Vec<u32>,
    /// The serving worker, if one is up.
    #[serde(default)]
    pub worker: Option<WorkerStatus>,
    /// Every worker serving now (`workers` of them when all are up).
    #[serde(default)]
    pub workers: Vec<u32>,
}

/// One online user, for `sessions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OnlineUser {
    pub user: String,
    /// Sessions in the process that answered.
    pub sessions: usize,
    /// Online in other processes of the service too (with a bus).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub elsewhere: bool,
    /// Sessions in the other processes, as they announced them (with
    /// `elsewhere`; `max_sessions_per_user` counts these too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sessions_elsewhere: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The answer to `kick`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kicked {
    pub user: String,
    pub sessions: usize,
}

/// The answer to `broadcast`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Broadcast {
    /// Users online when the broadcast started.
    pub recipients: usize,
    /// Messages stored (and so pushed to every session of those users).
    pub stored: usize,
    /// Users whose message could not be stored, with the reason.
    pub failed: Vec<String>,
}

/// The answer to `reload`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reloaded {
    pub worker_pid: u32,
    pub generation: u64,
    /// The old worker, now draining its connections.
    pub old_worker_pid: Option<u32>,
}

/// Why `parleyd ctl` failed; each has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (exit 3).
    #[error("cannot reach parleyd at {path}: {source} (is it running? is ctl_socket the same?)")]
    Unreachable { path: PathBuf, source: std::io::Error },
    /// The server answered with an error (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The exchange broke off or made no sense (exit 1).
    #[error("control socket {path}: {what}")]
    Protocol { path: PathBuf, what: String },
}

/// Sends one request and waits for its reply.
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let protocol = |what: String| ClientError::Protocol {
        path: path.to_owned(),
        what,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let mut line = serde_json::to_string(request).map_err(|e| protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(|e| protocol(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(stream.take_limit())
        .read_line(&mut reply)
        .map_err(|e| protocol(e.to_string()))?;
    if reply.is_empty() {
        return Err(protocol("closed without a reply".into()));
    }
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| protocol(format!("bad reply: {e}")))?;
    if reply.ok {
        Ok(reply.result)
    } else {
        Err(ClientError::Refused(reply.error.unwrap_or_else(|| "refused".into())))
    }
}

/// A reader that stops after [`MAX_LINE_BYTES`].
trait TakeLimit: std::io::Read + Sized {
    fn take_limit(self) -> std::io::Take<Self> {
        self.take(MAX_LINE_BYTES as u64)
    }
}

impl<R: std::io::Read> TakeLimit for R {}

/// Human text for a successful reply.
pub fn render(request: &Request, result: &serde_json::Value) -> String {
    match request {
        Request::Status => match serde_json::from_value::<Status>(result.clone()) {
            Ok(status) => render_status(&status),
            Err(_) => result.to_string(),
        },
        Request::Sessions => match serde_json::from_value::<Vec<OnlineUser>>(result.clone()) {
            Ok(users) if users.is_empty() => "nobody is online\n".into(),
            Ok(users) => {
                let width = users.iter().map(|u| u.user.len()).max().unwrap_or(4).max(4);
                let mut out = format!("{:width$}  SESSIONS\n", "USER");
                for u in &users {
                    let elsewhere = match (u.elsewhere, u.sessions_elsewhere) {
                        (false, _) => String::new(),
                        (true, 0) => " (and on other processes)".into(),
                        (true, n) => format!(" (and {n} on other processes)"),
                    };
                    out.push_str(&format!("{:width$}  {}{elsewhere}\n", u.user, u.sessions));
                }
                out.push_str(&format!(
                    "{}, {}\n",
                    count(users.len(), "user", "users"),
                    count(users.iter().map(|u| u.sessions).sum::<usize>(), "session", "sessions")
                ));
                out
            }
            Err(_) => result.to_string(),
        },
        Request::Kick { .. } => match serde_json::from_value::<Kicked>(result.clone()) {
            Ok(k) => format!(
                "kicked {}: {}\n",
                k.user,
                count(k.sessions, "session ended", "sessions ended")
            ),
            Err(_) => result.to_string(),
        },
        Request::Broadcast { .. } => match serde_json::from_value::<Broadcast>(result.clone()) {
            Ok(b) => {
                let mut out = format!(
                    "broadcast stored for {} of {}\n",
                    b.stored,
                    count(b.recipients, "online user", "online users")
                );
                for f in &b.failed {
                    out.push_str(&format!("  not stored: {f}\n"));
                }
                out
            }
            Err(_) => result.to_string(),
        },
        Request::Invite { .. } => match serde_json::from_value::<Invite>(result.clone()) {
            Ok(i) => format!(
                "invite code: {}\nit works once, until {} (shown only now; give it to the person who registers)\n",
                i.code,
                crate::utc::Utc::from_system(std::time::UNIX_EPOCH + Duration::from_millis(i.expires_ms))
                    .rfc3339_micros()
            ),
            Err(_) => result.to_string(),
        },
        Request::Reload => match serde_json::from_value::<Reloaded>(result.clone()) {
            Ok(r) => match r.old_worker_pid {
                Some(old) => format!(
                    "reloaded: worker {} (generation {}) serves; worker {old} is draining\n",
                    r.worker_pid, r.generation
                ),
                None => format!(
                    "reloaded: worker {} (generation {}) serves\n",
                    r.worker_pid, r.generation
                ),
            },
            Err(_) => result.to_string(),
        },
        Request::Labels { .. } => match serde_json::from_value::<Vec<Label>>(result.clone()) {
            Ok(labels) => labels
                .iter()
                .filter_map(|l| serde_json::to_string(l).ok())
                .map(|line| line + "\n")
                .collect(),
            Err(_) => result.to_string(),
        },
        Request::Stop => "stopping\n".into(),
    }
}

/// "1 session", "2 sessions": a count with the noun that agrees with it.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_status(s: &Status) -> String {
    let quic = s.quic.as_deref().map(|q| format!("  quic {q}")).unwrap_or_default();
    let mut out = format!(
        "parleyd {} master {} up {}s\n  native {}  http {}{quic}\n  store {} in {}\n",
        s.version,
        s.master_pid,
        s.uptime_secs,
        s.native,
        s.http.as_deref().unwrap_or("off"),
        s.store,
        s.data_dir
    );
    match &s.worker {
        Some(w) => {
            out.push_str(&format!(
                "  worker {} up {}s (generation {}, {})\n",
                w.pid,
                w.uptime_secs,
                s.generation,
                count(s.worker_restarts as usize, "restart", "restarts")
            ));
            let st = &w.stats;
            out.push_str(&format!(
                "  sessions {}  connections accepted {}  websockets {}  http sessions {}\n",
                st.sessions_online, st.connections_accepted, st.websockets_open, st.http_sessions
            ));
            out.push_str(&format!(
                "  logins ok {} failed {}  messages stored {} pushed {} acked {} re-sent {}  busy {}\n",
                st.logins_ok,
                st.logins_failed,
                st.messages_stored,
                st.messages_pushed,
                st.messages_acked,
                st.messages_resent,
                st.busy_replies
            ));
            let filter = match st.filter_model.as_str() {
                "" => "  spam filter off".to_owned(),
                model => format!(
                    "  spam filter model {model}: scored {} held {} rejected {} unscored {} busy {}",
                    st.filter_scored, st.filter_held, st.filter_rejected, st.filter_fail_open, st.filter_fail_closed
                ),
            };
            out.push_str(&format!(
                "{filter}  blocked phrases rejected {}
",
                st.filter_words_rejected
            ));
        }
        None => out.push_str(&format!(
            "  no worker serving (generation {}, {})\n",
            s.generation,
            count(s.worker_restarts as usize, "restart", "restarts")
        )),
    }
    if !s.draining.is_empty() {
        let pids: Vec<String> = s.draining.iter().map(u32::to_string).collect();
        out.push_str(&format!("  draining {}\n", pids.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_tagged_by_cmd() {
        let kick = Request::Kick { user: "bob".into() };
        assert_eq!(serde_json::to_string(&kick).unwrap(), r#"{"cmd":"kick","user":"bob"}"#);
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        let back: Request = serde_json::from_str(r#"{"cmd":"broadcast","text":"hi"}"#).unwrap();
        assert_eq!(back, Request::Broadcast { text: "hi".into() });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    #[test]
    fn sessions_render_as_a_table() {
        let users = vec![
            OnlineUser {
                user: "alice".into(),
                sessions: 2,
                elsewhere: false,
                sessions_elsewhere: 0,
            },
            OnlineUser {
                user: "bob".into(),
                sessions: 1,
                elsewhere: true,
                sessions_elsewhere: 3,
            },
        ];
        let text = render(&Request::Sessions, &serde_json::to_value(&users).unwrap());
        assert!(text.contains("alice  2\n"), "{text}");
        assert!(text.contains("bob    1 (and 3 on other processes)\n"), "{text}");
        assert!(text.ends_with("2 users, 3 sessions\n"), "{text}");
        let json = serde_json::to_value(&users).unwrap();
        assert!(json[0].get("elsewhere").is_none(), "{json}");
        let one = vec![OnlineUser {
            user: "alice".into(),
            sessions: 1,
            elsewhere: false,
            sessions_elsewhere: 0,
        }];
        let text = render(&Request::Sessions, &serde_json::to_value(one).unwrap());
        assert!(text.ends_with("1 user, 1 session\n"), "{text}");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        let kick = |sessions| {
            let kicked = Kicked {
                user: "alice".into(),
                sessions,
            };
            render(
                &Request::Kick { user: "alice".into() },
                &serde_json::to_value(kicked).unwrap(),
            )
        };
        assert_eq!(kick(1), "kicked alice: 1 session ended\n");
        assert_eq!(kick(0), "kicked alice: 0 sessions ended\n");
        assert_eq!(kick(3), "kicked alice: 3 sessions ended\n");
    }
}
