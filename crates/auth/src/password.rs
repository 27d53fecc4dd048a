//! argon2id password hashes in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};

pub use argon2::Params;

/// Why a hash is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an argon2id PHC hash: {0}")]
pub struct HashError(String);

/// Hashes `password` with argon2id and the OWASP parameters (19 MiB, 2 passes, 1 lane).
///
/// # Errors
/// Only on an internal argon2 failure.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    hash_with(password, Params::default())
}

/// Hashes `password` with argon2id and explicit parameters (cheap ones for tests).
///
/// # Errors
/// On invalid parameters.
pub fn hash_with(password: &str, params: Params) -> Result<String, HashError> {
    // 16 random bytes from the OS (a v4 UUID's), as the PHC format recommends.
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|error| HashError(error.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| HashError(error.to_string()))
}

/// Checks that `hash` is an argon2id PHC string.
///
/// # Errors
/// [`HashError`] naming what is wrong.
pub fn check_hash(hash: &str) -> Result<(), HashError> {
    let parsed = PasswordHash::new(hash).map_err(|error| HashError(error.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(HashError(format!("algorithm {}", parsed.algorithm)));
    }
    Ok(())
}

/// Tells whether `password` matches `hash` (false for an unusable hash). Costs what the hash's
/// parameters say: call it off the async runtime.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip() {
        let params = Params::new(64, 1, 1, None).expect("params");
        let hash = hash_with("correct horse", params).expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        check_hash(&hash).expect("valid");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("correct horse", "plain"));
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
    }
}
