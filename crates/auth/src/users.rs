//! The users file: one `[[user]]` table per user, with an argon2id hash and roles, reloaded
//! when the file changes.
//!
//! ```toml
//! [[user]]
//! name = "alice@example.com"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # switchboard hash-password
//! roles = ["operator"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;
use switchboard_sync::Lock;

use crate::password::check_hash;

/// One user who logs in with a password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The user name.
    pub name: String,
    /// argon2id hash of the password (PHC string).
    pub password_hash: String,
    /// Roles granted at login.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFileContents {
    #[serde(default)]
    user: Vec<UserRecord>,
}

/// Why a users file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// Not readable.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid.
    #[error("invalid users file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a password or a hash).
        reason: String,
    },
}

/// Users by name.
pub type UserTable = HashMap<String, UserRecord>;

/// Builds the table, refusing duplicates and hashes that are not argon2id.
///
/// # Errors
/// The reason, naming the user.
pub fn table(records: Vec<UserRecord>) -> Result<UserTable, String> {
    let mut table = HashMap::with_capacity(records.len());
    for record in records {
        if record.name.is_empty() {
            return Err("a user has an empty name".to_owned());
        }
        check_hash(&record.password_hash)
            .map_err(|error| format!("user {:?}: {error}", record.name))?;
        if let Some(previous) = table.insert(record.name.clone(), record) {
            return Err(format!("user {:?} appears twice", previous.name));
        }
    }
    Ok(table)
}

/// Reads and checks a users file.
///
/// # Errors
/// [`UsersFileError`] when it cannot be read or is invalid.
pub fn load(path: &Path) -> Result<UserTable, UsersFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| UsersFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let contents: UsersFileContents =
        toml::from_str(&text).map_err(|error| invalid(error.message().to_owned()))?;
    table(contents.user).map_err(invalid)
}

/// What identifies one version of the file.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// A users file that is re-read when its modification time or size changes. A version that
/// fails to load is logged and the previous users stay in force.
#[derive(Debug)]
pub struct UsersFile {
    path: PathBuf,
    current: Mutex<(Stamp, Arc<UserTable>)>,
}

impl UsersFile {
    /// Loads `path`.
    ///
    /// # Errors
    /// [`UsersFileError`] when the first version cannot be loaded.
    pub fn open(path: PathBuf) -> Result<Self, UsersFileError> {
        let stamp = stamp(&path);
        let table = load(&path)?;
        tracing::info!(path = %path.display(), users = table.len(), "users file loaded");
        Ok(Self {
            path,
            current: Mutex::new((stamp, Arc::new(table))),
        })
    }

    /// Returns the users, re-reading the file first when it changed (one `stat` otherwise).
    pub fn users(&self) -> Arc<UserTable> {
        let now = stamp(&self.path);
        let mut current = self.current.locked();
        if now != current.0 {
            current.0 = now;
            match load(&self.path) {
                Ok(table) => {
                    tracing::info!(path = %self.path.display(), users = table.len(), "users file reloaded");
                    current.1 = Arc::new(table);
                }
                Err(error) => {
                    tracing::error!(%error, "users file not reloaded; the previous users stay");
                }
            }
        }
        Arc::clone(&current.1)
    }
}
