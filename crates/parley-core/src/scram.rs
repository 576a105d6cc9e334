//! SCRAM (RFC 5802, RFC 7677) with SHA-256 and SHA-512: the password never
//! crosses the wire, and the server stores only salt, iteration count,
//! StoredKey and ServerKey.
//!
//! Both sides live here because they share every formula; the server side is
//! [`ServerExchange`], the client side [`ClientExchange`]. Messages are the
//! exact RFC text forms, so the same code can later serve XMPP's SASL.
//! Channel binding is not used (gs2 header `n,,`). Passwords are used as
//! their UTF-8 bytes; SASLprep normalisation is not applied.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::error::{CoreError, ErrorKind};

/// Bytes of randomness in each side's nonce.
const NONCE_BYTES: usize = 18;
/// Salt length the client library generates.
pub const SALT_BYTES: usize = 16;
/// Shortest and longest salt the server accepts at registration.
pub const SALT_RANGE: std::ops::RangeInclusive<usize> = 16..=64;
/// Highest iteration count the server accepts at registration, so that a
/// hostile client cannot make every later login of that account expensive.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Longest SCRAM message the server parses.
const MAX_MESSAGE_BYTES: usize = 1024;

/// The hash a SCRAM mechanism is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            "SCRAM-SHA-512" => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    /// Length of the hash output, and so of StoredKey and ServerKey.
    pub fn output_len(self) -> usize {
        match self {
            Mechanism::Sha256 => 32,
            Mechanism::Sha512 => 64,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Mechanism::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        match self {
            Mechanism::Sha256 => {
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha512 => {
                let mut mac = <Hmac<sha2::Sha512> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            Mechanism::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out),
            Mechanism::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

/// What the server stores for an account instead of its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredentials {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl StoredCredentials {
    /// Credentials as a client sent them (registration, password change),
    /// with the mechanism by name: an unknown one is UNSUPPORTED_MECHANISM.
    /// Nothing else is checked here (see [`StoredCredentials::validate`]).
    pub fn from_parts(
        mechanism: &str,
        salt: Vec<u8>,
        iterations: u32,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    ) -> Result<StoredCredentials, CoreError> {
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return Err(CoreError::new(
                crate::error::ErrorKind::UnsupportedMechanism,
                format!("unknown mechanism {mechanism:?}"),
            ));
        };
        Ok(StoredCredentials {
            mechanism,
            salt,
            iterations,
            stored_key,
            server_key,
        })
    }

    /// Derives the stored form from a password; the client does this at
    /// registration, so the server never sees the password.
    pub fn derive(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> StoredCredentials {
        let salted = mechanism.salted_password(password.as_bytes(), salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        StoredCredentials {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(&salted, b"Server Key"),
        }
    }

    /// Checks the shape of credentials a client registers with.
    pub fn validate(&self, min_iterations: u32) -> Result<(), CoreError> {
        if !SALT_RANGE.contains(&self.salt.len()) {
            return Err(CoreError::invalid("salt must be 16 to 64 bytes"));
        }
        if self.iterations < min_iterations || self.iterations > MAX_ITERATIONS {
            return Err(CoreError::invalid(format!(
                "iteration count must be between {min_iterations} and {MAX_ITERATIONS}"
            )));
        }
        let len = self.mechanism.output_len();
        if self.stored_key.len() != len || self.server_key.len() != len {
            return Err(CoreError::invalid(format!(
                "{} keys must be {len} bytes",
                self.mechanism.name()
            )));
        }
        Ok(())
    }
}

fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

fn bad(message: &str) -> CoreError {
    CoreError::new(ErrorKind::AuthFailed, format!("malformed SCRAM message: {message}"))
}

/// Splits "k=v,k=v" attributes, checking the expected keys in order.
fn attributes<'a>(message: &'a str, keys: &[char]) -> Result<Vec<&'a str>, CoreError> {
    let mut parts = message.split(',');
    let mut values = Vec::with_capacity(keys.len());
    for &key in keys {
        let part = parts.next().ok_or_else(|| bad("missing attribute"))?;
        let value = part
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| bad("unexpected attribute"))?;
        values.push(value);
    }
    Ok(values)
}

/// The parsed client-first-message.
#[derive(Debug)]
pub struct ClientFirst {
    /// The username, as sent (not yet validated as an account name).
    pub username: String,
    client_nonce: String,
    bare: String,
}

impl ClientFirst {
    /// Parses `n,,n=NAME,r=NONCE`. Channel binding and authzid are refused.
    pub fn parse(message: &[u8]) -> Result<ClientFirst, CoreError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(bad("too long"));
        }
        let text = std::str::from_utf8(message).map_err(|_| bad("not UTF-8"))?;
        let bare = text
            .strip_prefix("n,,")
            .ok_or_else(|| bad("expected gs2 header \"n,,\" (no channel binding, no authzid)"))?;
        let values = attributes(bare, &['n', 'r'])?;
        let (username, client_nonce) = (values[0], values[1]);
        if username.contains('=')
            || client_nonce.is_empty()
            || !client_nonce.chars().all(|c| c.is_ascii_graphic() && c != ',')
        {
            return Err(bad("invalid username or nonce"));
        }
        Ok(ClientFirst {
            username: username.to_owned(),
            client_nonce: client_nonce.to_owned(),
            bare: bare.to_owned(),
        })
    }
}

/// The server's side of one exchange, between its two messages.
#[derive(Debug)]
pub struct ServerExchange {
    credentials: StoredCredentials,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Answers a client-first-message with the account's (or a decoy's)
    /// salt and iteration count.
    pub fn start(client_first: ClientFirst, credentials: StoredCredentials) -> ServerExchange {
        let nonce = format!("{}{}", client_first.client_nonce, random_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credentials.salt),
            credentials.iterations
        );
        ServerExchange {
            credentials,
            client_first_bare: client_first.bare,
            server_first,
            nonce,
        }
    }

    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    pub fn mechanism(&self) -> Mechanism {
        self.credentials.mechanism
    }

    /// Verifies the client-final-message; on success returns the
    /// server-final-message. Every failure is the same `AUTH_FAILED`.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, CoreError> {
        if client_final.len() > MAX_MESSAGE_BYTES {
            return Err(CoreError::auth_failed());
        }
        let text = std::str::from_utf8(client_final).map_err(|_| CoreError::auth_failed())?;
        let (without_proof, proof_b64) = text.rsplit_once(",p=").ok_or_else(CoreError::auth_failed)?;
        let values = attributes(without_proof, &['c', 'r']).map_err(|_| CoreError::auth_failed())?;
        // "biws" is base64 of the gs2 header "n,,".
        if values[0] != "biws" || values[1] != self.nonce {
            return Err(CoreError::auth_failed());
        }
        let proof = B64.decode(proof_b64).map_err(|_| CoreError::auth_failed())?;
        let m = self.credentials.mechanism;
        if proof.len() != m.output_len() {
            return Err(CoreError::auth_failed());
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = m.hmac(&self.credentials.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        let ok: bool = m.hash(&client_key).ct_eq(&self.credentials.stored_key).into();
        if !ok {
            return Err(CoreError::auth_failed());
        }
        let server_signature = m.hmac(&self.credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Credentials for a name that has no account, indistinguishable on the wire
/// from a real account's: the salt is derived from a server secret so that
/// repeated attempts see the same salt.
pub fn decoy_credentials(secret: &[u8], name_key: &str, mechanism: Mechanism, iterations: u32) -> StoredCredentials {
    let salt = Mechanism::Sha256.hmac(secret, format!("decoy-salt:{name_key}").as_bytes());
    let mut stored_key = vec![0u8; mechanism.output_len()];
    rand::rng().fill_bytes(&mut stored_key);
    StoredCredentials {
        mechanism,
        salt: salt[..SALT_BYTES].to_vec(),
        iterations,
        server_key: stored_key.clone(),
        stored_key,
    }
}

/// The client's side of one exchange.
#[derive(Debug)]
pub struct ClientExchange {
    username: String,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ClientExchange {
    pub fn new(username: &str, password: &str) -> ClientExchange {
        let client_nonce = random_nonce();
        let client_first_bare = format!("n={username},r={client_nonce}");
        ClientExchange {
            username: username.to_owned(),
            password: password.to_owned(),
            client_nonce,
            client_first_bare,
            server_signature: None,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The client-first-message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Computes the client-final-message from the server-first-message.
    pub fn client_final(&mut self, mechanism: Mechanism, server_first: &[u8]) -> Result<String, CoreError> {
        let text = std::str::from_utf8(server_first).map_err(|_| bad("server-first not UTF-8"))?;
        let values = attributes(text, &['r', 's', 'i'])?;
        let (nonce, salt_b64, iterations) = (values[0], values[1], values[2]);
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(bad("server nonce does not extend ours"));
        }
        let salt = B64.decode(salt_b64).map_err(|_| bad("salt is not base64"))?;
        let iterations: u32 = iterations.parse().map_err(|_| bad("iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(bad("iteration count out of range"));
        }
        let salted = mechanism.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let server_key = mechanism.hmac(&salted, b"Server Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_signature = mechanism.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&client_signature).map(|(k, s)| k ^ s).collect();
        self.server_signature = Some(mechanism.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: proof that the server knew our keys.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), CoreError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or_else(|| bad("exchange not started"))?;
        let text = std::str::from_utf8(server_final).map_err(|_| bad("server-final not UTF-8"))?;
        let got = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| bad("server-final"))?;
        if bool::from(got.ct_eq(expected)) {
            Ok(())
        } else {
            Err(CoreError::new(
                ErrorKind::AuthFailed,
                "the server's signature is wrong: it does not know this account's keys",
            ))
        }
    }
}

/// A fresh random salt.
pub fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = StoredCredentials::derive(Mechanism::Sha256, "pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let exchange = ServerExchange {
            credentials: creds,
            client_first_bare: client_first_bare.into(),
            server_first: server_first.into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server_final = exchange.finish(client_final.as_bytes()).unwrap();
        assert_eq!(server_final, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    fn round_trip(mechanism: Mechanism, password: &str, typed: &str) -> Result<(), CoreError> {
        let creds = StoredCredentials::derive(mechanism, password, &random_salt(), 4096);
        let mut client = ClientExchange::new("alice", typed);
        let first = ClientFirst::parse(client.client_first().as_bytes())?;
        assert_eq!(first.username, "alice");
        let server = ServerExchange::start(first, creds);
        let client_final = client.client_final(server.mechanism(), server.server_first().as_bytes())?;
        let server_final = server.finish(client_final.as_bytes())?;
        client.verify_server_final(server_final.as_bytes())
    }

    #[test]
    fn both_mechanisms_accept_the_right_password_only() {
        for m in [Mechanism::Sha256, Mechanism::Sha512] {
            round_trip(m, "correct horse", "correct horse").unwrap();
            let err = round_trip(m, "correct horse", "wrong").unwrap_err();
            assert_eq!(err.kind, ErrorKind::AuthFailed);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            "",
            "n=alice,r=x",
            "y,,n=alice,r=x",
            "n,,r=x,n=alice",
            "n,,n=al=ice,r=x",
            "n,,n=alice,r=",
        ] {
            assert!(ClientFirst::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
