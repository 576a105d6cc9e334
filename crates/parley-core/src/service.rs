//! placeholder
pub struct AuthPending; pub struct LoginOutcome; pub enum PushEvent {} pub struct Service; pub struct Session;
