//! Server-side state of the HTTP API: logins between their two SCRAM steps,
//! and the sessions that bearer tokens name.
//!
//! Both tables are bounded and expire idle entries. Each is one
//! `std::sync::Mutex` held only for a map operation, never across an
//! `.await`: a request takes what it needs out of the table (an
//! `Arc<HttpSession>`, or the pending login itself) and awaits afterwards.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use parley_core::sync::lock;
use parley_core::{AuthPending, Session, UserId};
use rand::RngCore;
use sha2::Digest;

/// Bytes of randomness in a bearer token and in a login id.
pub const TOKEN_BYTES: usize = 32;

/// A random token, as URL-safe base64 without padding.
pub fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a bearer token is known by, in the table and in the store: the
/// SHA-256 of the token after a label of its own, so that it can never
/// name a resume token (whose hash is of the bare token) nor the reverse.
pub fn bearer_key(token: &str) -> [u8; 32] {
    let mut digest = sha2::Sha256::new();
    digest.update(b"parley http bearer\0");
    digest.update(token.as_bytes());
    digest.finalize().into()
}

/// Whether `token` has the shape [`random_token`] gives: only such a token
/// is looked up in the store.
pub fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Called with the key of each session the table ends before its time (to
/// make room, or because the server ended it), so the store forgets it too.
pub type Forget = Box<dyn Fn(UserId, [u8; 32]) + Send + Sync>;

/// A login taken out of [`PendingLogins`] for its second step.
pub struct TakenLogin {
    /// When its first step happened, for its expiry if it is restored.
    created: Instant,
    /// The login.
    pub pending: Box<AuthPending>,
}

/// Logins between `login/start` and `login/finish`.
pub struct PendingLogins {
    /// Longest time between the two steps.
    ttl: Duration,
    /// Most logins waiting at once.
    max: usize,
    /// By login id.
    table: Mutex<HashMap<String, (Instant, Box<AuthPending>)>>,
}

impl PendingLogins {
    pub fn new(ttl: Duration, max: usize) -> PendingLogins {
        PendingLogins {
            ttl,
            max,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a login until its second step; None when the table is full
    /// of logins that have not expired.
    pub fn insert(&self, pending: AuthPending) -> Option<String> {
        let now = Instant::now();
        let mut table = lock(&self.table);
        if table.len() >= self.max {
            let ttl = self.ttl;
            table.retain(|_, (created, _)| now.duration_since(*created) < ttl);
            if table.len() >= self.max {
                return None;
            }
        }
        let id = random_token();
        table.insert(id.clone(), (now, Box::new(pending)));
        Some(id)
    }

    /// Takes a login out for its second step (a login id works once,
    /// unless [`PendingLogins::restore`] puts it back).
    pub fn take(&self, id: &str) -> Option<TakenLogin> {
        let (created, pending) = lock(&self.table).remove(id)?;
        (created.elapsed() < self.ttl).then_some(TakenLogin { created, pending })
    }

    /// Puts a login back under its id after its second step was answered
    /// `BUSY`, which changed nothing, so the client may retry it. It keeps
    /// its original expiry.
    pub fn restore(&self, id: String, taken: TakenLogin) {
        lock(&self.table).insert(id, (taken.created, taken.pending));
    }

    /// Drops expired logins.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        lock(&self.table).retain(|_, (created, _)| created.elapsed() < ttl);
    }

    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One login over HTTP, named by a bearer token.
pub struct HttpSession {
    /// The core session. Taken out (None) while the account is being
    /// deleted, since that call awaits with the session borrowed.
    pub session: Mutex<Option<Session>>,
    /// When a request last used it, for idle expiry.
    last_used: Mutex<Instant>,
    /// The address group it logged in from, for its address's share.
    ip: IpAddr,
    /// Its token's key ([`bearer_key`]).
    key: [u8; 32],
    /// Whose session it is.
    user: UserId,
    /// Until when the store remembers the key (ms since the Unix epoch; 0:
    /// not remembered).
    remembered_until: Mutex<u64>,
}

impl HttpSession {
    /// Its token's key, as the store knows it.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Whose session it is.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Notes that the store remembers the key until `until_ms`.
    pub fn remembered(&self, until_ms: u64) {
        *lock(&self.remembered_until) = until_ms;
    }

    /// The new expiry to give the remembered key when a quarter of its idle
    /// time has passed since it was last given one (so a busy session
    /// writes to the store a few times per idle period, not per request);
    /// None otherwise, or when it is not remembered.
    pub fn refresh_due(&self, idle: Duration) -> Option<u64> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut until = lock(&self.remembered_until);
        if *until == 0 || until.saturating_sub(now) > idle_ms - idle_ms / 4 {
            return None;
        }
        *until = now.saturating_add(idle_ms);
        Some(*until)
    }

    /// The session, locked: hold the guard only to *start* a request (the
    /// core's methods return `'static` futures), never across an await.
    pub fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        lock(&self.session)
    }

    /// Takes the session out of the table entry (for account deletion).
    pub fn take(&self) -> Option<Session> {
        lock(&self.session).take()
    }

    /// Puts a session back after a failed deletion.
    pub fn restore(&self, session: Session) {
        *lock(&self.session) = Some(session);
    }

    /// Whether it is over: idle too long, or ended by the server (account
    /// deleted, kicked, logged out everywhere, replaced).
    fn over(&self, idle: Duration) -> bool {
        lock(&self.last_used).elapsed() >= idle || lock(&self.session).as_ref().is_some_and(|s| s.closing().is_some())
    }
}

/// Sessions by bearer token (the table keys are SHA-256 of the tokens, so a
/// memory dump does not hand out working tokens).
///
/// One address gets a bounded share of the table (`max_per_ip`): past it,
/// its own least recently used session makes room, so logins from one
/// address can never fill the table for everyone else. (Sessions per
/// account are bounded by the core, over every front door.)
pub struct HttpSessions {
    /// A session unused this long expires (and goes offline).
    idle: Duration,
    /// Most sessions at once.
    max: usize,
    /// Most sessions from one address group at once.
    max_per_ip: usize,
    table: Mutex<SessionTable>,
    /// Tells the store about sessions ended before their time.
    forget: Option<Forget>,
}

/// The table and its per-address counts, under one lock.
#[derive(Default)]
struct SessionTable {
    /// By token hash.
    by_token: HashMap<[u8; 32], Arc<HttpSession>>,
    /// Sessions per address group; entries at zero are removed.
    per_ip: HashMap<IpAddr, usize>,
}

impl SessionTable {
    fn remove(&mut self, key: &[u8; 32]) -> Option<Arc<HttpSession>> {
        let removed = self.by_token.remove(key)?;
        if let Some(n) = self.per_ip.get_mut(&removed.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&removed.ip);
            }
        }
        Some(removed)
    }

    /// The key of `ip`'s least recently used session.
    fn least_recent_of(&self, ip: IpAddr) -> Option<[u8; 32]> {
        self.by_token
            .iter()
            .filter(|(_, s)| s.ip == ip)
            .min_by_key(|(_, s)| *lock(&s.last_used))
            .map(|(k, _)| *k)
    }
}

impl HttpSessions {
    pub fn new(idle: Duration, max: usize, max_per_ip: usize) -> HttpSessions {
        HttpSessions {
            idle,
            max,
            max_per_ip: max_per_ip.max(1),
            table: Mutex::new(SessionTable::default()),
            forget: None,
        }
    }

    /// Calls `forget` with the key of every session ended before its time:
    /// one that made room for another, or that the server ended (kicked,
    /// replaced by a newer one, the account deleted). Sessions that expire
    /// idle need nothing: the store's copy of their key expires no later.
    pub fn forgetting(mut self, forget: Forget) -> HttpSessions {
        self.forget = Some(forget);
        self
    }

    fn forget_all(&self, ended: &[Arc<HttpSession>]) {
        if let Some(forget) = &self.forget {
            ended.iter().for_each(|s| forget(s.user, s.key));
        }
    }

    /// How long an unused session lives.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Stores a new session from `ip` and returns its bearer token; None
    /// when the table is full of sessions in use (the session is dropped,
    /// offline). When `ip`'s share is used up, its least recently used
    /// session ends to make room.
    pub fn insert(&self, session: Session, ip: IpAddr) -> Option<String> {
        let token = random_token();
        self.insert_as(&token, session, ip).then_some(token)
    }

    /// Stores a session under a token it already has (one reopened from
    /// the store); false when the table is full. If the token names a
    /// session already (two requests reopened it at once), that one stays
    /// and `session` is dropped.
    pub fn insert_as(&self, token: &str, session: Session, ip: IpAddr) -> bool {
        let ip = parley_core::addr::address_group(ip);
        let key = bearer_key(token);
        let entry = Arc::new(HttpSession {
            user: session.user(),
            session: Mutex::new(Some(session)),
            last_used: Mutex::new(Instant::now()),
            ip,
            key,
            remembered_until: Mutex::new(0),
        });
        let (ended, made_room) = {
            let mut table = lock(&self.table);
            if table.by_token.contains_key(&key) {
                return true;
            }
            let expired = if table.by_token.len() >= self.max {
                self.take_expired(&mut table)
            } else {
                Vec::new()
            };
            let mut made_room = Vec::new();
            if table.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip
                && let Some(oldest) = table.least_recent_of(ip)
            {
                made_room.extend(table.remove(&oldest));
            }
            if table.by_token.len() >= self.max {
                return false;
            }
            table.by_token.insert(key, entry);
            *table.per_ip.entry(ip).or_insert(0) += 1;
            (expired, made_room)
        };
        // Sessions are dropped (and go offline) outside the table's lock.
        self.forget_all(&made_room);
        self.forget_all(&self.ended_early(&ended));
        true
    }

    /// Those of `sessions` that ended before their time (not idle).
    fn ended_early(&self, sessions: &[Arc<HttpSession>]) -> Vec<Arc<HttpSession>> {
        let idle = self.idle;
        sessions
            .iter()
            .filter(|s| lock(&s.last_used).elapsed() < idle)
            .cloned()
            .collect()
    }

    /// The live session a token names, marked as used now; Err with the
    /// reason when the server ended it (the entry is dropped).
    pub fn get(&self, token: &str) -> Option<Result<Arc<HttpSession>, parley_core::hub::CloseReason>> {
        let key = bearer_key(token);
        let entry = lock(&self.table).by_token.get(&key).cloned()?;
        let ended = lock(&entry.session).as_ref().and_then(Session::closing);
        if let Some(reason) = ended {
            if let Some(gone) = self.remove(token) {
                self.forget_all(&[gone]);
            }
            return Some(Err(reason));
        }
        let mut last = lock(&entry.last_used);
        if last.elapsed() >= self.idle {
            drop(last);
            drop(self.remove(token));
            return None;
        }
        *last = Instant::now();
        drop(last);
        Some(Ok(entry))
    }

    /// Ends a session (logout, account deletion).
    pub fn remove(&self, token: &str) -> Option<Arc<HttpSession>> {
        lock(&self.table).remove(&bearer_key(token))
    }

    fn take_expired(&self, table: &mut SessionTable) -> Vec<Arc<HttpSession>> {
        let idle = self.idle;
        let keys: Vec<[u8; 32]> = table
            .by_token
            .iter()
            .filter(|(_, s)| s.over(idle))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| table.remove(k)).collect()
    }

    /// Drops idle sessions and those the server ended; they go offline.
    pub fn sweep(&self) {
        let expired = self.take_expired(&mut lock(&self.table));
        self.forget_all(&self.ended_early(&expired));
    }

    /// Ends every session (shutdown).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *lock(&self.table));
        drop(all);
    }

    pub fn len(&self) -> usize {
        lock(&self.table).by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_url_safe() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn unknown_tokens_name_no_session() {
        let sessions = HttpSessions::new(Duration::from_secs(60), 2, 2);
        assert!(sessions.get("nope").is_none());
        assert!(sessions.remove("nope").is_none());
        assert!(sessions.is_empty());
    }

    /// A service on a memory store with one account, "ann".
    async fn service() -> Arc<parley_core::Service> {
        use parley_core::scram::{Mechanism, StoredCredentials};
        use parley_core::service::{AuthSettings, ResumeSettings, ServiceConfig};
        let service = parley_core::Service::new(
            Arc::new(parley_store::memory::MemoryStore::new()),
            ServiceConfig {
                limits: parley_core::Limits::default(),
                auth: AuthSettings {
                    mechanisms: vec![Mechanism::Sha256],
                    iterations: 4096,
                    secret: [7; 32],
                },
                resume: ResumeSettings::default(),
                throttle: parley_core::throttle::ThrottleSettings::default(),
                registration: Default::default(),
                filters: Default::default(),
            },
        );
        let credentials = StoredCredentials::derive(Mechanism::Sha256, "pw", &[1; 16], 4096);
        service.register("ann", credentials, None, None).unwrap().await.unwrap();
        service
    }

    async fn login(service: &Arc<parley_core::Service>) -> (AuthPending, String) {
        let mut client = parley_core::scram::ClientExchange::new("ann", "pw");
        let pending = service
            .auth_start(client.client_first().as_bytes(), None)
            .await
            .unwrap();
        let last = client
            .client_final(pending.mechanism(), pending.server_first().as_bytes())
            .unwrap();
        (pending, last)
    }

    #[tokio::test]
    async fn sessions_are_bounded_expire_when_idle_and_go_offline() {
        let service = service().await;
        // Both logins first: SCRAM on a loaded machine can take longer than
        // the idle limit, which would expire the first session too early.
        let (pending, last) = login(&service).await;
        let (session, outcome) = service.auth_finish(&pending, last.as_bytes()).await.unwrap();
        let (pending, last) = login(&service).await;
        let (second, _) = service.auth_finish(&pending, last.as_bytes()).await.unwrap();
        let idle = Duration::from_millis(300);
        let sessions = HttpSessions::new(idle, 1, 1);
        let here: IpAddr = [127, 0, 0, 1].into();
        let token = sessions.insert(session, here).unwrap();
        assert!(service.hub().is_online(outcome.user));
        assert!(sessions.get(&token).is_some());
        // Full of a session in use: the next login is refused (and its
        // session dropped).
        assert!(sessions.insert(second, [127, 0, 0, 2].into()).is_none());
        // Idle past the limit: gone, offline, and its place is free.
        std::thread::sleep(idle + idle / 2);
        assert!(sessions.get(&token).is_none());
        assert!(sessions.is_empty());
        assert!(!service.hub().is_online(outcome.user));
    }

    #[tokio::test]
    async fn sessions_ended_to_make_room_are_forgotten_by_the_store() {
        let service = service().await;
        let (pending, last) = login(&service).await;
        let (first, _) = service.auth_finish(&pending, last.as_bytes()).await.unwrap();
        let (pending, last) = login(&service).await;
        let (second, _) = service.auth_finish(&pending, last.as_bytes()).await.unwrap();
        let forgotten = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&forgotten);
        let sessions = HttpSessions::new(Duration::from_secs(60), 10, 1)
            .forgetting(Box::new(move |_, key| lock(&record).push(key)));
        let here: IpAddr = [127, 0, 0, 1].into();
        let old = sessions.insert(first, here).unwrap();
        // The address's one place goes to the newer login.
        let new = sessions.insert(second, here).unwrap();
        assert!(sessions.get(&old).is_none());
        assert!(sessions.get(&new).is_some());
        assert_eq!(*lock(&forgotten), vec![bearer_key(&old)]);
        // A shutdown forgets nothing: the sessions live on in the store.
        sessions.clear();
        assert_eq!(lock(&forgotten).len(), 1);
    }

    #[test]
    fn bearer_keys_are_not_resume_token_hashes() {
        let token = random_token();
        assert!(well_formed(&token));
        assert_ne!(
            bearer_key(&token),
            <[u8; 32]>::from(sha2::Sha256::digest(token.as_bytes()))
        );
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}+", &token[1..])));
    }

    #[tokio::test]
    async fn a_login_id_works_once_and_expires() {
        let service = service().await;
        let logins = PendingLogins::new(Duration::from_secs(60), 1);
        let (pending, _) = login(&service).await;
        let id = logins.insert(pending).unwrap();
        let (another, _) = login(&service).await;
        assert!(logins.insert(another).is_none(), "the table is full");
        assert!(logins.take(&id).is_some());
        assert!(logins.take(&id).is_none(), "used once");

        let expiring = PendingLogins::new(Duration::ZERO, 1);
        let (pending, _) = login(&service).await;
        let id = expiring.insert(pending).unwrap();
        assert!(expiring.take(&id).is_none(), "expired");
    }
}
