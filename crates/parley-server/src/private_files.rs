//! Keeping what parleyd writes readable by its own user only.
//!
//! The data directory holds every message body, every account's SCRAM
//! keys and the server secret; the logs hold names and addresses. So the
//! server process runs with the umask [`SERVER_UMASK`] (set in `main`
//! before anything is created, inherited by the worker): whatever the
//! umask parleyd was started with, the files it creates — the database and
//! SQLite's `-wal` and `-shm` beside it, the server secret, the control
//! socket, log and perf files — are 0600 and its directories 0700. The
//! directories it makes are also given 0700 explicitly
//! ([`create_private_dir`]), and the files that it opens itself ask for
//! 0600, so neither depends on the umask alone.
//!
//! A directory that already exists is never changed: an operator may have
//! opened it to a group on purpose (a backup user, a shared log reader),
//! and a service that silently chmods its directories fights the
//! configuration management that set them. Instead
//! [`warn_if_open_to_others`] logs a warning naming the `chmod` to run.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The umask of the server process: no permission for group or others.
pub const SERVER_UMASK: u32 = 0o077;
/// Mode of the directories parleyd creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files parleyd creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Sets the process umask to [`SERVER_UMASK`].
pub fn restrict_umask() {
    use nix::sys::stat::{Mode, umask};
    // The umask it replaces is of no further use: nothing is restored.
    let _previous = umask(Mode::from_bits_truncate(SERVER_UMASK as nix::libc::mode_t));
}

/// Creates `path` and any missing parents with mode 0700 (the parents
/// too: they are ours). An existing directory is left as it is.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
}

/// The warning to log when `dir` (or a file directly in it) can be read or
/// entered by the group or others; None when it is private or missing.
/// `what` names the directory in the message ("data directory").
pub fn open_to_others(dir: &Path, what: &str) -> Option<String> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "the {what} {} has mode {mode:04o}: other local users can reach what is in it; \
             run `chmod 700 {}` (parleyd does not change an existing directory)",
            dir.display(),
            dir.display()
        ));
    }
    // A private directory shields its files whatever their modes; a file
    // open to others still matters if the directory is opened later, or
    // is reached through another link.
    let open_files: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if open_files.is_empty() {
        return None;
    }
    Some(format!(
        "files in the {what} {} can be read by other local users ({}): \
         run `chmod 600` on them (parleyd does not change existing files)",
        dir.display(),
        open_files.join(", ")
    ))
}

/// Logs [`open_to_others`]'s warning, if any.
pub fn warn_if_open_to_others(dir: &Path, what: &str) {
    if let Some(warning) = open_to_others(dir, what) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_directories_are_private_and_existing_ones_are_reported_not_changed() {
        let temp = tempfile::tempdir().unwrap();
        let nested = temp.path().join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&temp.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(open_to_others(&nested, "data directory"), None);

        std::fs::write(nested.join("parley.db"), "x").unwrap();
        std::fs::set_permissions(nested.join("parley.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = open_to_others(&nested, "data directory").unwrap();
        assert!(
            warning.contains("parley.db") && warning.contains("chmod 600"),
            "{warning}"
        );

        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o750, "an existing directory was changed");
        let warning = open_to_others(&nested, "data directory").unwrap();
        assert!(
            warning.contains(&format!("chmod 700 {}", nested.display())) && warning.contains("0750"),
            "{warning}"
        );
        assert_eq!(open_to_others(&temp.path().join("missing"), "data directory"), None);
    }
}
