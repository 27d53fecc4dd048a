//! Signed tokens: a JWT given as the login password. HS256 with a shared secret, RS256 and
//! ES256 (P-256) with public keys from PEM files or a JWKS file. `sub` is the user, `exp` is
//! required and enforced, `nbf` is enforced when present, `roles` (an array of strings) gives
//! the session's roles. `aud` and `iss` are checked when an audience or issuer is configured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

/// Clock skew a deployment tolerates on a token's `exp` and `nbf` unless configured
/// otherwise ([`JwtConfig::default`] tolerates none, for tests that expire tokens exactly).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Where the token keys come from.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JwtConfig {
    /// Shared secret of HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public keys (RSA → RS256, EC P-256 → ES256).
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS file of RSA and EC P-256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// When set, tokens must have this `aud`; otherwise `aud` is not checked.
    pub audience: Option<String>,
    /// When set, tokens must have this `iss`; otherwise `iss` is not checked.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_files", &self.public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("leeway", &self.leeway)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl JwtConfig {
    /// Tells whether any key is configured.
    pub fn is_enabled(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_key_files.is_empty() || self.jwks_file.is_some()
    }
}

/// Why the token configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JwtConfigError(String);

/// Why a token was refused (logged, never shown to the client, which sees
/// `invalid_credentials`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or its header is unreadable.
    #[error("malformed token")]
    Malformed,
    /// Signed with an algorithm no configured key uses.
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    /// Failed verification: signature, expiry, not-before or claims.
    #[error("token rejected: {0}")]
    Rejected(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The user (`sub`).
    pub user: String,
    /// Roles (`roles`, empty when absent).
    pub roles: Vec<String>,
    /// Expiry, seconds since the Unix epoch (`exp`).
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
}

struct Key {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Checks tokens against the configured keys.
pub struct JwtVerifier {
    keys: Vec<Key>,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn pem_key(path: &Path) -> Result<Key, JwtConfigError> {
    let pem = std::fs::read(path).map_err(|error| {
        JwtConfigError(format!(
            "cannot read public key {}: {error}",
            path.display()
        ))
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            kid: None,
            key,
        });
    }
    DecodingKey::from_ec_pem(&pem)
        .map(|key| Key {
            algorithm: Algorithm::ES256,
            kid: None,
            key,
        })
        .map_err(|_| {
            JwtConfigError(format!(
                "{} is not an RSA or EC public key in PEM form",
                path.display()
            ))
        })
}

fn jwks_keys(path: &Path) -> Result<Vec<Key>, JwtConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| JwtConfigError(format!("cannot read JWKS {}: {error}", path.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|error| JwtConfigError(format!("invalid JWKS {}: {error}", path.display())))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                return Err(JwtConfigError(format!(
                    "JWKS {}: only RSA and EC P-256 keys are supported",
                    path.display()
                )));
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|error| JwtConfigError(format!("JWKS {}: {error}", path.display())))?;
        keys.push(Key {
            algorithm,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    Ok(keys)
}

impl JwtVerifier {
    /// Loads the configured keys; `None` when tokens are not enabled.
    ///
    /// # Errors
    /// When a key file is unreadable or not a supported key.
    pub fn new(config: &JwtConfig) -> Result<Option<Self>, JwtConfigError> {
        if !config.is_enabled() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < 32 {
                return Err(JwtConfigError(
                    "the HS256 secret must be at least 32 bytes".to_owned(),
                ));
            }
            keys.push(Key {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &config.public_key_files {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(jwks_keys(path)?);
        }
        Ok(Some(Self {
            keys,
            leeway: config.leeway.as_secs(),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        }))
    }

    /// Verifies `token`.
    ///
    /// # Errors
    /// [`TokenError`] saying why it is refused.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|key| key.algorithm == header.alg)
            .filter(|key| match (&header.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(header.alg);
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let mut last = TokenError::Malformed;
        for key in candidates {
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    if data.claims.sub.is_empty() {
                        return Err(TokenError::Rejected("empty sub".to_owned()));
                    }
                    return Ok(TokenClaims {
                        user: data.claims.sub,
                        roles: data.claims.roles,
                        expires_at: data.claims.exp,
                    });
                }
                Err(error) => last = TokenError::Rejected(error.to_string()),
            }
        }
        Err(last)
    }
}

/// Tells whether `password` has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(password: &str) -> bool {
    let mut parts = password.split('.');
    let shaped = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(header), Some(payload), Some(_), None) if header.starts_with("eyJ") && !payload.is_empty()
    );
    shaped
        && password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
