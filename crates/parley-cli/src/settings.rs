//! Where the server address, the user name and the password come from.
//!
//! Precedence, highest first: command-line flag, environment variable
//! (`PARLEY_SERVER`, `PARLEY_USER`, `PARLEY_PASSWORD`; clap merges these two),
//! the config file, then the built-in default (server only). What is still
//! missing when a command needs it is asked for on the terminal; without a
//! terminal the password may be piped as the first line of stdin, and
//! anything else missing is a usage error (exit code 2).
//!
//! The server may be a list of the nodes of one service, tried in order
//! ([`crate::trust::Servers`]): `--server a:7878,b:7878`, the same in
//! `PARLEY_SERVER`, and in the file `server = "a:7878,b:7878"` or
//! `server = ["a:7878", "b:7878"]`.
//!
//! The config file is TOML with the optional keys `server`, `user`,
//! `password`, and for TLS servers (`tls://host:port`) `ca` (a CA file),
//! `tofu` (true: pin certificates on first use) or `fingerprint`, at
//! `--config FILE`, or else `$XDG_CONFIG_HOME/parley/config.toml`, or else
//! `~/.config/parley/config.toml`. A missing default file is fine; a missing
//! file named with `--config` is an error. Certificates pinned on first use
//! are kept in `known_servers` in the same directory (see [`crate::trust`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::exit::Failure;
use crate::terminal;
use crate::trust::{Servers, TrustChoice};

/// Where the server listens unless told otherwise (parleyd's default).
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";
/// Directory under the config home that holds this program's files.
const APP_DIR: &str = "parley";
/// File name of the config file in the config directory.
const CONFIG_FILE: &str = "config.toml";

/// The config file's contents. Unknown keys are refused so a typo such as
/// `sever = ...` is reported instead of silently ignored.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<ServerList>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA file for a TLS server.
    pub ca: Option<PathBuf>,
    /// Pin a TLS server's certificate on first use.
    pub tofu: Option<bool>,
    /// The TLS server's certificate fingerprint.
    pub fingerprint: Option<String>,
}

/// The file's `server`: one address (which may hold commas) or a list.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(untagged)]
pub enum ServerList {
    One(String),
    Many(Vec<String>),
}

impl ServerList {
    /// As `--server` takes it.
    fn joined(self) -> String {
        match self {
            ServerList::One(text) => text,
            ServerList::Many(list) => list.join(","),
        }
    }
}

/// This program's directory in the user's config home:
/// `$XDG_CONFIG_HOME/parley`, or `$HOME/.config/parley`.
pub fn config_dir() -> Option<PathBuf> {
    let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and to be ignored.
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .map(|base| base.join(APP_DIR))
}

/// The flag-or-environment values clap collected.
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub server: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub config: Option<PathBuf>,
    /// TLS trust from flags and environment.
    pub trust: TrustChoice,
}

/// Connection and identity settings after merging every source.
#[derive(Debug)]
pub struct Settings {
    /// The servers and how to trust them.
    pub server: Servers,
    /// Known user name, if any source gave one.
    user: Option<String>,
    /// Known password, if any source gave one.
    password: Option<String>,
}

/// Treats an empty value (`PARLEY_USER=`) as not given.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl Settings {
    /// Reads the config file and merges it under the flags and environment.
    pub fn resolve(given: &Given) -> anyhow::Result<Settings> {
        let file = match &given.config {
            Some(path) => load_config(path, true)?,
            None => match config_dir() {
                Some(dir) => load_config(&dir.join(CONFIG_FILE), false)?,
                None => ConfigFile::default(),
            },
        };
        Ok(Settings::merge(given.clone(), file, config_dir().as_deref())?)
    }

    /// Flag/environment over file over default.
    fn merge(given: Given, file: ConfigFile, config_dir: Option<&Path>) -> Result<Settings, Failure> {
        let server = non_empty(given.server)
            .or(non_empty(file.server.map(ServerList::joined)))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let file_trust = TrustChoice {
            ca: file.ca,
            tofu: file.tofu.unwrap_or(false),
            fingerprint: non_empty(file.fingerprint),
        };
        let flag_trust = TrustChoice {
            ca: given.trust.ca.filter(|p| !p.as_os_str().is_empty()),
            tofu: given.trust.tofu,
            fingerprint: non_empty(given.trust.fingerprint),
        };
        Ok(Settings {
            server: Servers::resolve(&server, &flag_trust, &file_trust, config_dir)?,
            user: non_empty(given.user).or(non_empty(file.user)),
            password: non_empty(given.password).or(non_empty(file.password)),
        })
    }

    /// The user name, asked for on the terminal when no source gave one.
    pub fn user(&mut self) -> anyhow::Result<String> {
        if let Some(user) = &self.user {
            return Ok(user.clone());
        }
        if !terminal::interactive() {
            return Err(Failure::usage(
                "no user name: pass --user NAME, set PARLEY_USER, or set `user` in the config file",
            )
            .into());
        }
        let user = terminal::ask("user: ")
            .context("reading the user name")?
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Failure::usage("no user name given"))?;
        self.user = Some(user.clone());
        Ok(user)
    }

    /// Drops the password known (it was refused), so the next
    /// [`Settings::password`] asks for it.
    pub fn forget_password(&mut self) {
        self.password = None;
    }

    /// The password for logging in as `user`.
    pub fn password(&mut self, user: &str) -> anyhow::Result<String> {
        self.obtain_password(user, false)
    }

    /// The password for a new account: on a terminal it is asked twice.
    pub fn new_password(&mut self, user: &str) -> anyhow::Result<String> {
        self.obtain_password(user, true)
    }

    fn obtain_password(&mut self, user: &str, confirm: bool) -> anyhow::Result<String> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        let password = if terminal::interactive() {
            let label = if confirm {
                format!("password for new account {user}: ")
            } else {
                format!("password for {user}: ")
            };
            // rpassword reads from the terminal with echo turned off.
            let password = rpassword::prompt_password(label).context("reading the password")?;
            if confirm {
                let again = rpassword::prompt_password("repeat the password: ").context("reading the password")?;
                if again != password {
                    return Err(Failure::usage("the passwords do not match").into());
                }
            }
            password
        } else {
            // Scripts pipe the password as the first line of stdin.
            terminal::read_line()
                .context("reading the password from stdin")?
                .ok_or_else(|| {
                    Failure::usage(
                        "no password: pass --password, set PARLEY_PASSWORD, set `password` in the config file, \
                     or pipe it as the first line of stdin",
                    )
                })?
        };
        if password.is_empty() {
            return Err(Failure::usage("the password is empty").into());
        }
        self.password = Some(password.clone());
        Ok(password)
    }
}

/// Reads a config file; a missing file is an error only when `required`.
fn load_config(path: &Path, required: bool) -> anyhow::Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(ConfigFile::default());
        }
        Err(e) => {
            return Err(Failure::usage(format!("cannot read config file {}: {e}", path.display())).into());
        }
    };
    let file: ConfigFile = toml::from_str(&text)
        .map_err(|e| Failure::usage(format!("config file {}: {}", path.display(), e.message())))?;
    if file.password.is_some() {
        warn_if_readable_by_others(path);
    }
    Ok(file)
}

/// A password in a file others can read is worth a warning, not a refusal:
/// the user may have reasons, but should know.
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "parley: warning: {} holds a password and is readable by others (chmod 600 it)",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_beat_the_file_which_beats_the_default() {
        let file = ConfigFile {
            server: Some(ServerList::One("file:1".into())),
            user: Some("fileuser".into()),
            password: Some("filepw".into()),
            ..Default::default()
        };
        let given = Given {
            server: Some("flag:2".into()),
            user: None,
            password: Some(String::new()),
            config: None,
            trust: TrustChoice::default(),
        };
        let s = Settings::merge(given, file, None).unwrap();
        assert_eq!(s.server.current().given, "flag:2");
        assert_eq!(s.user.as_deref(), Some("fileuser"));
        // An empty value counts as not given.
        assert_eq!(s.password.as_deref(), Some("filepw"));

        let s = Settings::merge(Given::default(), ConfigFile::default(), None).unwrap();
        assert_eq!(
            (s.server.current().given.as_str(), s.user, s.password),
            (DEFAULT_SERVER, None, None)
        );

        let file = ConfigFile {
            server: Some(ServerList::One("tls://h:1".into())),
            tofu: Some(true),
            ..Default::default()
        };
        let s = Settings::merge(Given::default(), file, Some(Path::new("/c"))).unwrap();
        assert_eq!(
            s.server.current().trust,
            crate::trust::TrustMode::FirstUse(Path::new("/c").join(crate::trust::KNOWN_SERVERS_FILE))
        );
    }

    #[test]
    fn several_servers_are_tried_in_order_from_the_last_that_worked() {
        let given = Given {
            server: Some("a:1, tls://b:2,c:3".into()),
            ..Default::default()
        };
        let s = Settings::merge(given, ConfigFile::default(), None).unwrap();
        let order = |s: &Settings| -> Vec<String> { s.server.in_turn().map(|(_, t)| t.given.clone()).collect() };
        assert_eq!(order(&s), ["a:1", "tls://b:2", "c:3"]);
        assert_eq!(
            s.server.all()[1].trust,
            crate::trust::TrustMode::SystemRoots,
            "each address is parsed on its own"
        );
        s.server.settle(1);
        assert_eq!(order(&s), ["tls://b:2", "c:3", "a:1"]);
        s.server.pass_over_current();
        s.server.pass_over_current();
        assert_eq!(order(&s), ["a:1", "tls://b:2", "c:3"]);

        for bad in ["a:1,", ",a:1", "a:1,,b:2"] {
            let given = Given {
                server: Some(bad.into()),
                ..Default::default()
            };
            let err = Settings::merge(given, ConfigFile::default(), None).unwrap_err();
            assert!(err.to_string().contains("empty address"), "{bad}: {err}");
        }
    }

    #[test]
    fn config_file_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "server = \"h:1\"\nuser = \"ann\"\n").unwrap();
        let file = load_config(&path, true).unwrap();
        assert_eq!(
            file,
            ConfigFile {
                server: Some(ServerList::One("h:1".into())),
                user: Some("ann".into()),
                ..Default::default()
            }
        );

        std::fs::write(&path, "server = [\"a:1\", \"b:2\"]\n").unwrap();
        let file = load_config(&path, true).unwrap();
        let s = Settings::merge(Given::default(), file, None).unwrap();
        let given: Vec<&str> = s.server.all().iter().map(|t| t.given.as_str()).collect();
        assert_eq!(given, ["a:1", "b:2"]);

        std::fs::write(&path, "sever = \"h:1\"\n").unwrap();
        let err = load_config(&path, true).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let missing = dir.path().join("missing.toml");
        assert_eq!(load_config(&missing, false).unwrap(), ConfigFile::default());
        assert!(load_config(&missing, true).is_err());
    }
}
