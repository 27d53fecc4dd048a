//! Each backend's accept and refuse paths, through the public `Authenticator`, and the login
//! throttle.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard_auth::password::{Params, hash_with};
use switchboard_auth::{
    Attempt, AuthError, Authenticator, Config, JwtConfig, ThrottleConfig, UserRecord,
};

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cheap_hash(password: &str) -> String {
    hash_with(password, Params::new(64, 1, 1, None).expect("params")).expect("hash")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn attempt<'a>(user: &'a str, password: &'a str) -> Attempt<'a> {
    Attempt {
        user,
        password,
        session_id: "",
        remote: "ws:10.0.0.1:4000",
    }
}

async fn refused(auth: &Authenticator, user: &str, password: &str) -> AuthError {
    auth.login(attempt(user, password))
        .await
        .expect_err("login refused")
}

fn token(algorithm: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("encode")
}

fn hs(claims: &Value) -> String {
    token(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        claims,
        None,
    )
}

fn rs(claims: &Value) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).expect("key");
    token(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
        claims,
        Some("rsa-1"),
    )
}

fn es(claims: &Value) -> String {
    let pem = std::fs::read(fixture("ec_private.pem")).expect("key");
    token(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem).expect("ec key"),
        claims,
        Some("ec-1"),
    )
}

fn no_throttle() -> ThrottleConfig {
    ThrottleConfig {
        max_failures: 0,
        ..ThrottleConfig::default()
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let config = Config {
        admin_password: Some("admin-secret-value".into()),
        jwt: JwtConfig {
            hs256_secret: Some(HS_SECRET.into()),
            ..JwtConfig::default()
        },
        users: vec![UserRecord {
            name: "a".into(),
            password_hash: cheap_hash("x"),
            roles: vec![],
        }],
        ..Config::default()
    };
    let auth = Authenticator::new(config.clone()).expect("config");
    for text in [format!("{config:?}"), format!("{auth:?}")] {
        assert!(!text.contains("admin-secret-value"), "{text}");
        assert!(!text.contains(HS_SECRET), "{text}");
        assert!(!text.contains("argon2id"), "{text}");
    }
}

#[tokio::test]
async fn admin_accepts_the_right_password_only() {
    let auth = Authenticator::new(Config {
        admin_password: Some("secret".into()),
        throttle: no_throttle(),
        ..Config::default()
    })
    .expect("config");
    let admin = auth.login(attempt("admin", "secret")).await.expect("admin");
    assert_eq!(admin.roles, vec!["admin".to_owned()]);
    assert_eq!(admin.session_id.len(), 36, "a fresh UUID");
    assert_eq!(admin.expires_at, None);
    assert_eq!(
        refused(&auth, "admin", "nope").await,
        AuthError::InvalidCredentials
    );
    let disabled = Authenticator::new(Config::default()).expect("config");
    assert_eq!(
        refused(&disabled, "admin", "").await,
        AuthError::InvalidCredentials,
        "no admin password, no admin login"
    );
}

#[tokio::test]
async fn users_file_accepts_refuses_and_reloads() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("users.toml");
    let write = |users: &[(&str, &str, &[&str])]| {
        let mut text = String::new();
        for (name, password, roles) in users {
            text.push_str(&format!(
                "[[user]]\nname = {name:?}\npassword_hash = {:?}\nroles = {roles:?}\n\n",
                cheap_hash(password)
            ));
        }
        std::fs::write(&path, text).expect("write users file");
    };
    write(&[("alice", "alice-pw", &["operator"])]);
    let auth = Authenticator::new(Config {
        users_file: Some(path.clone()),
        throttle: no_throttle(),
        ..Config::default()
    })
    .expect("config");
    let alice = auth
        .login(Attempt {
            session_id: "s-1",
            ..attempt("alice", "alice-pw")
        })
        .await
        .expect("alice");
    assert_eq!(alice.roles, vec!["operator".to_owned()]);
    assert_eq!(alice.session_id, "s-1");
    assert_eq!(
        refused(&auth, "alice", "wrong").await,
        AuthError::InvalidCredentials
    );
    assert_eq!(
        refused(&auth, "bob", "bob-pw").await,
        AuthError::InvalidCredentials,
        "unknown user"
    );

    // A change is picked up without a restart (bigger file, so the stamp changes even within
    // the file system's timestamp granularity).
    write(&[
        ("alice", "new-alice-pw", &["operator"]),
        ("bob", "bob-pw", &[]),
    ]);
    auth.login(attempt("bob", "bob-pw"))
        .await
        .expect("bob after reload");
    assert_eq!(
        refused(&auth, "alice", "alice-pw").await,
        AuthError::InvalidCredentials,
        "the old password no longer works"
    );
    auth.login(attempt("alice", "new-alice-pw"))
        .await
        .expect("alice's new password");

    // A broken version is refused and the previous users stay.
    std::fs::write(
        &path,
        "[[user]]\nname = \"x\"\npassword_hash = \"plain-text\"\n# padding to change the size\n",
    )
    .expect("write");
    auth.login(attempt("bob", "bob-pw"))
        .await
        .expect("bob still logs in");
}

#[test]
fn invalid_users_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("users.toml");
    std::fs::write(
        &path,
        "[[user]]\nname = \"a\"\npassword_hash = \"secret-in-clear\"\n",
    )
    .expect("write");
    let error = Authenticator::new(Config {
        users_file: Some(path),
        ..Config::default()
    })
    .expect_err("a clear-text password is refused");
    let text = error.to_string();
    assert!(text.contains("argon2id"), "{text}");
    assert!(!text.contains("secret-in-clear"), "{text}");
    let direct = Authenticator::new(Config {
        users: vec![
            UserRecord {
                name: "a".into(),
                password_hash: cheap_hash("x"),
                roles: vec![],
            };
            2
        ],
        ..Config::default()
    });
    assert!(direct.is_err(), "a duplicated user is refused");
}

fn hs_authenticator() -> Authenticator {
    Authenticator::new(Config {
        jwt: JwtConfig {
            hs256_secret: Some(HS_SECRET.into()),
            ..JwtConfig::default()
        },
        throttle: no_throttle(),
        ..Config::default()
    })
    .expect("config")
}

#[tokio::test]
async fn hs256_tokens() {
    let auth = hs_authenticator();
    let exp = now() + 600;
    let good = hs(&json!({"sub": "carol", "exp": exp, "roles": ["viewer"]}));
    let carol = auth.login(attempt("carol", &good)).await.expect("token");
    assert_eq!(carol.user, "carol");
    assert_eq!(carol.roles, vec!["viewer".to_owned()]);
    assert_eq!(carol.expires_at, Some(exp));

    let cases = [
        ("expired", hs(&json!({"sub": "carol", "exp": now() - 3600}))),
        (
            "not yet valid",
            hs(&json!({"sub": "carol", "exp": exp, "nbf": now() + 3600})),
        ),
        ("missing exp", hs(&json!({"sub": "carol"}))),
        ("missing sub", hs(&json!({"exp": exp}))),
        (
            "bad signature",
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret-another"),
                &json!({"sub": "carol", "exp": exp}),
                None,
            ),
        ),
        ("wrong algorithm", es(&json!({"sub": "carol", "exp": exp}))),
        ("tampered payload", {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            parts[1] = hs(&json!({"sub": "carol", "exp": exp, "roles": ["admin"]}))
                .split('.')
                .nth(1)
                .expect("payload")
                .to_owned();
            parts.join(".")
        }),
    ];
    for (what, token) in cases {
        assert_eq!(
            refused(&auth, "carol", &token).await,
            AuthError::InvalidCredentials,
            "{what}"
        );
    }
    assert_eq!(
        refused(&auth, "mallory", &good).await,
        AuthError::InvalidCredentials,
        "sub must be the user logging in"
    );
    // alg "none": an unsigned token.
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        good.split('.').nth(1).expect("payload")
    );
    assert_eq!(
        refused(&auth, "carol", &unsigned).await,
        AuthError::InvalidCredentials,
        "alg none"
    );
}

#[tokio::test]
async fn audience_and_issuer() {
    let exp = now() + 600;
    let open = hs_authenticator();
    open.login(attempt(
        "kim",
        &hs(&json!({"sub": "kim", "exp": exp, "aud": "any", "iss": "any"})),
    ))
    .await
    .expect("aud and iss are not checked unless configured");
    let strict = Authenticator::new(Config {
        jwt: JwtConfig {
            hs256_secret: Some(HS_SECRET.into()),
            audience: Some("switchboard".into()),
            issuer: Some("https://idp.example".into()),
            ..JwtConfig::default()
        },
        throttle: no_throttle(),
        ..Config::default()
    })
    .expect("config");
    let good =
        json!({"sub": "kim", "exp": exp, "aud": "switchboard", "iss": "https://idp.example"});
    strict
        .login(attempt("kim", &hs(&good)))
        .await
        .expect("right aud and iss");
    for (what, claims) in [
        (
            "wrong aud",
            json!({"sub": "kim", "exp": exp, "aud": "other", "iss": "https://idp.example"}),
        ),
        (
            "missing aud",
            json!({"sub": "kim", "exp": exp, "iss": "https://idp.example"}),
        ),
        (
            "wrong iss",
            json!({"sub": "kim", "exp": exp, "aud": "switchboard", "iss": "https://evil"}),
        ),
        (
            "missing iss",
            json!({"sub": "kim", "exp": exp, "aud": "switchboard"}),
        ),
    ] {
        assert_eq!(
            refused(&strict, "kim", &hs(&claims)).await,
            AuthError::InvalidCredentials,
            "{what}"
        );
    }
}

#[tokio::test]
async fn rs256_pem_and_es256_jwks_tokens() {
    let auth = Authenticator::new(Config {
        jwt: JwtConfig {
            public_key_files: vec![fixture("rsa_public.pem")],
            jwks_file: Some(fixture("jwks.json")),
            ..JwtConfig::default()
        },
        throttle: no_throttle(),
        ..Config::default()
    })
    .expect("config");
    let exp = now() + 600;
    auth.login(attempt("dave", &rs(&json!({"sub": "dave", "exp": exp}))))
        .await
        .expect("RS256 with the PEM key");
    let erin = auth
        .login(attempt(
            "erin",
            &es(&json!({"sub": "erin", "exp": exp, "roles": ["a", "b"]})),
        ))
        .await
        .expect("ES256 from the JWKS");
    assert_eq!(erin.roles, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(
        refused(&auth, "dave", &hs(&json!({"sub": "dave", "exp": exp}))).await,
        AuthError::InvalidCredentials,
        "HS256 is not accepted when no secret is configured"
    );
    assert_eq!(
        refused(
            &auth,
            "dave",
            &rs(&json!({"sub": "dave", "exp": now() - 3600}))
        )
        .await,
        AuthError::InvalidCredentials,
        "expired RS256"
    );
}

#[test]
fn bad_key_configuration_is_refused() {
    let short = Authenticator::new(Config {
        jwt: JwtConfig {
            hs256_secret: Some("short".into()),
            ..JwtConfig::default()
        },
        ..Config::default()
    });
    assert!(short.is_err());
    let not_a_key = Authenticator::new(Config {
        jwt: JwtConfig {
            public_key_files: vec![fixture("README.md")],
            ..JwtConfig::default()
        },
        ..Config::default()
    });
    assert!(not_a_key.is_err());
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let auth = Authenticator::new(Config {
        admin_password: Some("secret".into()),
        throttle: ThrottleConfig {
            max_failures: 3,
            ..ThrottleConfig::default()
        },
        ..Config::default()
    })
    .expect("config");
    let from = |remote| Attempt {
        user: "admin",
        password: "guess",
        session_id: "",
        remote,
    };
    for _ in 0..3 {
        assert_eq!(
            auth.login(from("ws:10.0.0.9:1000")).await,
            Err(AuthError::InvalidCredentials)
        );
    }
    assert_eq!(
        auth.login(from("ws:10.0.0.9:1001")).await,
        Err(AuthError::TooManyAttempts),
        "another port of the same address is throttled"
    );
    let right = Attempt {
        password: "secret",
        ..from("ws:10.0.0.9:1002")
    };
    assert_eq!(
        auth.login(right.clone()).await,
        Err(AuthError::TooManyAttempts),
        "even the right password waits for the window"
    );
    let elsewhere = Attempt {
        remote: "ws:10.0.0.10:1000",
        ..right
    };
    auth.login(elsewhere.clone())
        .await
        .expect("other addresses are not affected");
    // A success does not clear an address's failures (one valid account must not buy
    // unlimited guesses at others).
    for _ in 0..2 {
        let guess = Attempt {
            password: "guess",
            ..elsewhere.clone()
        };
        assert_eq!(auth.login(guess).await, Err(AuthError::InvalidCredentials));
    }
    auth.login(elsewhere.clone())
        .await
        .expect("still under the limit");
    let guess = Attempt {
        password: "guess",
        ..elsewhere.clone()
    };
    assert_eq!(auth.login(guess).await, Err(AuthError::InvalidCredentials));
    assert_eq!(
        auth.login(elsewhere).await,
        Err(AuthError::TooManyAttempts),
        "three failures in the window, successes in between or not"
    );
}

/// A user whose password hash has the production parameters (tens of milliseconds each), so
/// attempts really overlap.
fn slow_user_auth(throttle: ThrottleConfig) -> Authenticator {
    Authenticator::new(Config {
        users: vec![UserRecord {
            name: "carol".into(),
            password_hash: switchboard_auth::password::hash_password("carol-pw").expect("hash"),
            roles: vec![],
        }],
        throttle,
        ..Config::default()
    })
    .expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_logins_get_at_most_the_limit_checked() {
    let auth = slow_user_auth(ThrottleConfig {
        max_failures: 10,
        max_account_failures: 0,
        ..ThrottleConfig::default()
    });
    let mut attempts = tokio::task::JoinSet::new();
    for n in 0..50 {
        let auth = auth.clone();
        attempts.spawn(async move {
            let remote = format!("ws:198.51.100.4:{}", 1000 + n);
            auth.login(Attempt {
                user: "carol",
                password: "wrong",
                session_id: "",
                remote: &remote,
            })
            .await
        });
    }
    let mut checked = 0;
    let mut throttled = 0;
    while let Some(outcome) = attempts.join_next().await {
        match outcome.expect("task") {
            Err(AuthError::InvalidCredentials) => checked += 1,
            Err(AuthError::TooManyAttempts) => throttled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(checked <= 10, "{checked} checked");
    assert_eq!(checked + throttled, 50);
    // The right password waits for the window too.
    let right = auth
        .login(Attempt {
            user: "carol",
            password: "carol-pw",
            session_id: "",
            remote: "ws:198.51.100.4:9",
        })
        .await;
    assert_eq!(right, Err(AuthError::TooManyAttempts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_attempts_count_and_accounts_are_limited_across_addresses() {
    let auth = slow_user_auth(ThrottleConfig {
        max_failures: 3,
        max_account_failures: 5,
        ..ThrottleConfig::default()
    });
    // Callers that give up before the answer (a deadline) still spend an attempt.
    for port in 0..3 {
        let remote = format!("ws:198.51.100.5:{port}");
        let attempt = Attempt {
            user: "carol",
            password: "carol-pw",
            session_id: "",
            remote: &remote,
        };
        let gave_up = tokio::time::timeout(Duration::from_micros(1), auth.login(attempt)).await;
        assert!(gave_up.is_err(), "the hash takes longer than that");
    }
    let after = auth
        .login(Attempt {
            user: "carol",
            password: "carol-pw",
            session_id: "",
            remote: "ws:198.51.100.5:7",
        })
        .await;
    assert_eq!(
        after,
        Err(AuthError::TooManyAttempts),
        "three abandoned attempts"
    );
    // Two more failures from fresh addresses fill the account's five.
    for address in ["198.51.100.6", "198.51.100.7"] {
        let remote = format!("ws:{address}:1");
        let outcome = auth
            .login(Attempt {
                user: "carol",
                password: "guess",
                session_id: "",
                remote: &remote,
            })
            .await;
        assert_eq!(outcome, Err(AuthError::InvalidCredentials));
    }
    let elsewhere = auth
        .login(Attempt {
            user: "carol",
            password: "guess",
            session_id: "",
            remote: "ws:198.51.100.8:1",
        })
        .await;
    assert_eq!(
        elsewhere,
        Err(AuthError::TooManyAttempts),
        "the account is limited"
    );
}
